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
- ``bundle``         the model bundle on disk: save, load, validate
"""

__version__ = "0.1.0"
