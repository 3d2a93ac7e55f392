"""Edge monitor for machine tools: MQTT channels in, β-VAE tool-wear scores and alarms out.

Module map (one concept per module):

- ``channels``       the six signal channels and their one order
- ``archive``        reading and writing the UC Berkeley ``mill.mat`` layout
- ``cut_quality``    finding corrupt cuts from their signals
- ``wear``           flank-wear labels: classes and interpolation of unmeasured VB
- ``synthetic``      a synthetic archive in the same layout, with its ground truth
- ``stable_region``  incremental stable-cutting detector (bounded look-ahead)
- ``windowing``      window specification and the cut windower shared by training and the daemon
- ``scaling``        min-max scaler fitted on training windows, stored in the bundle
- ``vae``            the β-VAE (keras-tcn) builder and its custom layers
- ``scorer``         one compiled inference function: reconstruction MSE, KL, per-channel errors
- ``scores``         window scores (plain arrays); ``calibration`` scores relative to healthy cuts of
                     the same depth of cut, feed and material
- ``bundle``         the model bundle on disk: save, load, validate
- ``device``         CPU / GPU selection

The live daemon (pure core first, then the shell):

- ``protocol``       wire protocol v1: topics, parsing and validation of inputs, encoding of outputs
- ``frames``         aligning one machine's six channels into frames by offset (duplicates, gaps)
- ``machine``        one machine's pipeline: frames -> windows -> scores -> alarm state and outputs
- ``batching``       batches of windows across machines for the one compiled scorer
- ``alarm``          the alarm state machine (k of n windows, reset, restart without re-announcing)
- ``config``         the validated daemon configuration (``config.yaml``)
- ``mqtt``           the paho-mqtt shell: MQTT 5 persistent session, TCP_NODELAY, back-off
- ``daemon``         the main loop: MQTT in, batches scored, scores and alarms out
- ``replay``         archived cuts published as if machines were cutting
- ``logging``        structlog: JSON lines under a service manager, console in a terminal
- ``__main__``       ``python -m edge_monitor run | replay``
"""

__version__ = "0.1.0"
