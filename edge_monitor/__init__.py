"""Edge monitor for machine tools: MQTT channels in, β-VAE tool-wear scores and alarms out.

One folder per layer; each imports only the layers listed before it (docs/architecture.md):

- ``core``     pure: channels, the wire protocol, frames, stable region, windowing, the per-machine
               pipeline, alarm, calibration, scores, batching. No TensorFlow, sockets, files or clock.
- ``model``    TensorFlow: the β-VAE, scaling, the scorer, the bundle, device selection.
- ``service``  the daemon's shell: MQTT, the loop, state, configuration, systemd, logging.
- ``archive``  the ``mill.mat`` reader, corrupt-cut checks, the synthetic archive, replay.

``__main__`` is the command line (``python -m edge_monitor run | replay``). The ``training``
package sits on top of all of them.
"""

__version__ = "0.1.0"
