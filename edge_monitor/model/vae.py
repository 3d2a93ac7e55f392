"""The β-VAE of the method: keras-tcn encoder and decoder, Gaussian codings, β-weighted KL loss.

``build_beta_vae`` returns the compiled training model ``x -> reconstruction``. Its two named
sub-models are what scoring uses: ``model.get_layer("encoder")`` maps windows to ``[mu, log_var]``
and ``model.get_layer("decoder")`` maps codings back to windows.

The latent loss is added by the :class:`Sampling` layer (``add_loss``), so the training model
compiles with the reconstruction loss alone and still minimises
``BCE + β · KL / (window · channels)``. Every custom object is registered serializable under the
``edge_monitor`` package, so ``.keras`` files load in any process that imported this module;
:func:`load_vae` is the one loader to use.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops
from tcn import TCN  # importing keras-tcn registers its TCN layer for deserialisation

from .hyperparams import VAEHyperParams  # re-exported


def kl_divergence(mu, log_var):
    """Per-window KL divergence of N(mu, exp(log_var)) from N(0, I), summed over the codings."""
    return -0.5 * ops.sum(1.0 + log_var - ops.exp(log_var) - ops.square(mu), axis=-1)


@keras.saving.register_keras_serializable(package="edge_monitor")
class Sampling(layers.Layer):
    """z = mu + exp(log_var / 2) · ε, and adds the latent loss ``kl_weight · mean(KL)``.

    ``kl_weight`` is β / (window · channels): the reconstruction loss is a mean over the window's
    elements, so the per-window KL is scaled to the same unit.
    """

    def __init__(self, kl_weight: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mu, log_var = inputs
        self.add_loss(self.kl_weight * ops.mean(kl_divergence(mu, log_var)))
        eps = keras.random.normal(ops.shape(mu), seed=self.seed_generator)
        return mu + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "kl_weight": self.kl_weight, "seed": self.seed}


def _tcn(hp: VAEHyperParams, name: str) -> TCN:
    return TCN(
        nb_filters=hp.filters,
        kernel_size=hp.kernel_size,
        dilations=list(hp.dilations),
        padding="causal",
        use_skip_connections=True,
        activation="selu",
        kernel_initializer="he_normal",
        return_sequences=True,
        name=name,
    )


def build_beta_vae(
    hp: VAEHyperParams, window_length: int = 64, n_channels: int = 6, seed: int | None = None
) -> keras.Model:
    """The compiled training model; ``seed`` makes the initial weights and ε reproducible (it
    seeds Keras' global random state, as weight initialisers draw from it)."""
    n_layers = hp.tcn_layers
    if window_length < 1 or window_length % (2**n_layers):
        raise ValueError(
            f"window length {window_length} must be a positive multiple of 2**tcn_layers = {2**n_layers} "
            f"(each of the {n_layers} TCN layers halves it); change window.length or hyperparams.tcn_layers"
        )
    if n_channels < 1:
        raise ValueError(f"n_channels must be at least 1, got {n_channels}")
    if seed is not None:
        keras.utils.set_random_seed(seed)

    x_in = keras.Input((window_length, n_channels), name="window")
    h = x_in
    for i in range(n_layers):
        h = _tcn(hp, f"enc_tcn_{i}")(h)
        h = layers.BatchNormalization(name=f"enc_bn_{i}")(h)
        h = layers.MaxPool1D(2, name=f"enc_pool_{i}")(h)
    h = layers.Flatten(name="enc_flatten")(h)
    mu = layers.Dense(hp.codings, name="mu")(h)
    log_var = layers.Dense(hp.codings, name="log_var")(h)
    encoder = keras.Model(x_in, [mu, log_var], name="encoder")

    reduced = window_length // 2**n_layers
    z_in = keras.Input((hp.codings,), name="z")
    h = layers.Dense(hp.filters * reduced, activation="selu", name="dec_dense")(z_in)
    h = layers.Reshape((reduced, hp.filters), name="dec_reshape")(h)
    for i in range(n_layers):
        h = layers.UpSampling1D(2, name=f"dec_upsample_{i}")(h)
        h = layers.BatchNormalization(name=f"dec_bn_{i}")(h)
        h = _tcn(hp, f"dec_tcn_{i}")(h)
    # A pointwise projection: the TCN before it already carries the temporal context.
    x_out = layers.Conv1D(n_channels, 1, activation="sigmoid", name="reconstruction")(h)
    decoder = keras.Model(z_in, x_out, name="decoder")

    x = keras.Input((window_length, n_channels), name="window")
    mu, log_var = encoder(x)
    z = Sampling(kl_weight=hp.beta / (window_length * n_channels), seed=seed, name="sampling")([mu, log_var])
    model = keras.Model(x, decoder(z), name="beta_vae")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hp.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
    )
    return model


def scoring_model(model: keras.Model) -> keras.Model:
    """The scoring graph of a trained β-VAE: scaled windows in; ``recon`` (the reconstruction's
    mean squared error over time and channels), ``kl`` (of the codings from N(0, I)) and
    ``channels`` (the error per channel, mean over time) out. The decoder reconstructs from the
    coding mean μ, never a sample, so a window's scores are deterministic. Every runtime serves
    this graph: TensorFlow directly, ONNX Runtime its exported copy (:mod:`.export`)."""
    try:
        encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    except ValueError as exc:
        raise ValueError(f"model {model.name!r} has no 'encoder'/'decoder' sub-model: {exc}") from exc
    x = keras.Input(tuple(model.inputs[0].shape[1:]), name="window")
    mu, log_var = encoder(x)
    channels = ops.mean(ops.square(x - decoder(mu)), axis=1)
    return keras.Model(x, {"recon": mean_of_columns(channels), "kl": kl_divergence(mu, log_var),
                           "channels": channels}, name="scoring")


def mean_of_columns(values):
    """The mean of each row of a (k, C) tensor as C - 1 additions in column order and a division:
    element-wise operations, which give each row the same bits wherever it sits in its batch.
    A reduction does not: ONNX Runtime's ReduceMean over rows of 6 gives about half of the windows
    other last bits when they move by an odd number of rows (AVX-512), so a window re-scored after
    a crash in another batch would not be published byte for byte as the first time."""
    total = values[:, 0]
    for column in range(1, values.shape[1]):
        total = total + values[:, column]
    return total / values.shape[1]


def load_vae(path: str | Path, *, compile: bool = True) -> keras.Model:
    """Load a model saved by ``model.save(path)``; ``compile=False`` skips the optimizer (scoring)."""
    custom = {"TCN": TCN, "Sampling": Sampling}
    return keras.saving.load_model(Path(path), custom_objects=custom, compile=compile)
