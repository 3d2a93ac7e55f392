"""Deterministic window scores from a trained β-VAE, whatever runtime serves it.

:meth:`WindowScorer.score` is the one scoring call of the product: raw signal windows and their
operating regimes in, calibrated scores out (scale with the bundle's scaler, infer, divide by the
healthy reference of the regime). ``fit``, ``evaluate`` and the daemon all call it, so the daemon
scores exactly as training evaluates by construction. :meth:`WindowScorer.raw_scores` stops before
the calibration: what the calibration is fitted on, and the method's uncalibrated figures.

The inference itself is an :class:`Inference`: the scoring graph (:func:`.vae.scoring_model`) run
by TensorFlow (:mod:`.tf_inference`) or by ONNX Runtime on its exported copy
(:mod:`.onnx_inference`). This module imports neither.

Scores use the coding mean μ, never a sample, and the same window always gets the same scores, to
the last bit, whichever windows share its batch: a window scored again after a crash is published
byte for byte as the first time. At another batch size or position a row can get other last bits
(TensorFlow's and ONNX Runtime's CPU kernels do), so every runtime declares a fixed number of
:attr:`Inference.rows` per call and the :attr:`Inference.sizes` at which the last call of a batch
scores each window alike, and the scorer pads the last call to the smallest that holds it.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..core.calibration import ScoreCalibration
from ..core.scores import WindowScores
from .scaling import MinMaxScaler

#: Windows per call of a runtime whose results depend on the batch size: the daemon's batches of
#: a few windows (about 7 at 100 machines in real time) pay little for the padding, and a full
#: batch of 256 is 6 calls. At one shape a row's results still depend on its position where
#: TensorFlow's CPU kernels handle the rows that do not fill a block of theirs (measured on AVX2:
#: the last rows of 32 or 64, none of 48), so the shape is a multiple of their blocks: 48
#: (tests/test_vae.py checks every position).
INFERENCE_ROWS = 48


class Inference(Protocol):
    """The scoring graph, run by one runtime: (k, W, C) float32 scaled windows in, their
    reconstruction score (k,), KL divergence (k,) and per-channel reconstruction error (k, C) out."""

    runtime: str  # "tensorflow", "onnxruntime"
    window_length: int
    n_channels: int
    rows: int  # every call but the last has exactly this many rows
    # the last call's sizes (ascending, the last is rows; the scorer pads to the smallest that
    # holds what is left): a window gets the same bits in each, and a batch of a few windows
    # costs less in a small call
    sizes: tuple[int, ...]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class WindowScorer:
    """Scores (n, W, C) windows with ``inference``."""

    def __init__(
        self,
        inference: Inference,
        scaler: MinMaxScaler,
        calibration: ScoreCalibration | None = None,
    ) -> None:
        self.inference = inference
        self.window_length, self.n_channels = inference.window_length, inference.n_channels
        if len(scaler.minimum) != self.n_channels:
            raise ValueError(
                f"scaler has {len(scaler.minimum)} channels but the model takes {self.n_channels}"
            )
        self.scaler = scaler
        self.calibration = calibration  # None only while training, before it is fitted

    @property
    def runtime(self) -> str:
        return self.inference.runtime

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
        rows = self.inference.rows
        full, rest = divmod(n, rows)
        last = next(size for size in self.inference.sizes if size >= rest) if rest else 0
        padded = np.zeros((full * rows + last, *x.shape[1:]), np.float32)
        padded[:n] = x
        calls = [padded[i : i + rows] for i in range(0, full * rows, rows)] + ([padded[full * rows :]] if rest else [])
        parts = [self.inference(c) for c in calls]
        recon, kl, channels = (np.concatenate([p[k] for p in parts])[:n] for k in range(3))
        return WindowScores(recon, kl, channels)

    def _check_shape(self, x: np.ndarray) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.window_length, self.n_channels):
            raise ValueError(
                f"windows must have shape (n, {self.window_length}, {self.n_channels}), got {x.shape}"
            )
