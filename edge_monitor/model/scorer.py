"""Deterministic window scores from a trained β-VAE, through one compiled inference function.

:meth:`WindowScorer.score` is the one scoring call of the product: raw signal windows and their
operating regimes in, calibrated scores out (scale with the bundle's scaler, infer, divide by the
healthy reference of the regime). ``fit``, ``evaluate`` and the daemon all call it, so the daemon
scores exactly as training evaluates by construction. :meth:`WindowScorer.raw_scores` stops before
the calibration: what the calibration is fitted on, and the method's uncalibrated figures.

Scores use the coding mean μ, never a sample, and every inference call has the same shape
(:data:`INFERENCE_ROWS` windows, the last call padded), so the same window always gets the same
scores, to the last bit: TensorFlow's CPU kernels give a row results that differ in the last bits
with the batch's size (measured: every size from 2 to 300 differs from the others), and at a
chosen size not with its position or its companions. Training's evaluation and the live daemon agree, a
save/load round trip changes nothing, and a window scored again after a crash is published byte
for byte as the first time, whichever windows shared its batch.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ..core.calibration import ScoreCalibration
from ..core.scores import WindowScores
from .scaling import MinMaxScaler
from .vae import kl_divergence

#: Windows per inference call, always: the daemon's batches of a few windows (about 7 at 100
#: machines in real time) pay little for the padding, and a full batch of 256 is 6 calls. At one
#: shape a row's results still depend on its position where the CPU kernels handle the rows that
#: do not fill a block of theirs (measured on AVX2: the last rows of 32 or 64, none of 48), so the
#: shape is a multiple of their blocks: 48 (tests/test_vae.py checks every position).
INFERENCE_ROWS = 48


class WindowScorer:
    """Scores (n, W, C) windows with ``model``'s "encoder" and "decoder" sub-models."""

    def __init__(
        self,
        model: keras.Model,
        scaler: MinMaxScaler,
        calibration: ScoreCalibration | None = None,
    ) -> None:
        try:
            encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
        except ValueError as exc:
            raise ValueError(f"model {model.name!r} has no 'encoder'/'decoder' sub-model: {exc}") from exc
        _, self.window_length, self.n_channels = model.inputs[0].shape
        if len(scaler.minimum) != self.n_channels:
            raise ValueError(
                f"scaler has {len(scaler.minimum)} channels but the model takes {self.n_channels}"
            )
        self.scaler = scaler
        self.calibration = calibration  # None only while training, before it is fitted

        # One fixed shape: traced once, and a window's scores never depend on its batch.
        @tf.function(
            input_signature=[tf.TensorSpec([INFERENCE_ROWS, self.window_length, self.n_channels], tf.float32)]
        )
        def infer(x):
            mu, log_var = encoder(x, training=False)
            recon = decoder(mu, training=False)
            per_channel = tf.reduce_mean(tf.square(x - recon), axis=1)
            return tf.reduce_mean(per_channel, axis=1), kl_divergence(mu, log_var), per_channel

        self._infer = infer

    @property
    def traces(self) -> int:
        """How many times the inference function was traced (1 after the first batch)."""
        return int(self._infer.experimental_get_tracing_count())

    def score(self, raw_windows: np.ndarray, regimes: Sequence[str] | str) -> WindowScores:
        """Calibrated scores of raw (n, W, C) signal windows; ``regimes`` is each window's operating
        regime (``calibration.regime_key``), or one for all of them."""
        if self.calibration is None:
            raise ValueError("this scorer has no calibration yet: use raw_scores, or fit the calibration first")
        return self.calibration.apply(self.raw_scores(raw_windows), regimes)

    def raw_scores(self, raw_windows: np.ndarray) -> WindowScores:
        """Uncalibrated scores: raw windows scaled with the bundle's scaler, then scored."""
        raw = np.asarray(raw_windows)
        self._check_shape(raw)
        return self.score_scaled(self.scaler.transform(raw))

    def score_scaled(self, x: np.ndarray) -> WindowScores:
        x = np.asarray(x, dtype=np.float32)
        self._check_shape(x)
        n = x.shape[0]
        if n == 0:
            empty = np.empty(0, np.float32)
            return WindowScores(empty, empty.copy(), np.empty((0, self.n_channels), np.float32))
        calls = -(-n // INFERENCE_ROWS)
        padded = np.zeros((calls * INFERENCE_ROWS, *x.shape[1:]), np.float32)
        padded[:n] = x
        parts = [self._infer(tf.constant(padded[i : i + INFERENCE_ROWS]))
                 for i in range(0, len(padded), INFERENCE_ROWS)]
        recon, kl, channels = (np.concatenate([p[k].numpy() for p in parts])[:n] for k in range(3))
        return WindowScores(recon, kl, channels)

    def _check_shape(self, x: np.ndarray) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.window_length, self.n_channels):
            raise ValueError(
                f"windows must have shape (n, {self.window_length}, {self.n_channels}), got {x.shape}"
            )
