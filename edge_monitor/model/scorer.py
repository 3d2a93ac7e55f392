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
:attr:`Inference.rows` per call and the smaller :attr:`Inference.sizes` at which a call scores
each window alike; what is left of a batch after its full calls goes in calls of those sizes
(:func:`call_plan`), only the last of them padded.
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
    rows: int  # a batch's calls have this many rows, but those of what is left (call_plan)
    # the sizes of those (ascending, the last is rows): a window gets the same bits in each, and
    # a batch of a few windows costs less in small calls
    sizes: tuple[int, ...]
    # what a call costs besides its rows, in rows (call_plan): a few on a CPU, where a call's
    # time grows with its rows; ``rows`` where the call itself is the cost (a GPU)
    call_cost_rows: float

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def call_plan(n: int, sizes: Sequence[int], call_cost_rows: float) -> tuple[int, ...]:
    """The calls, of ``sizes``, that score ``n`` windows at the least cost, a call of ``s`` windows
    costing ``s + call_cost_rows``: the last may be padded, no other. On a CPU a call's time grows
    with its rows plus a little (measured, demo model, ONNX Runtime: a call of 2 costs 0.42 ms, of
    16 1.64, of 48 4.9, ~0.1 ms a row), so 32 windows left go in two calls of 16 rather than one of
    48 padded (3.3 ms rather than 4.9)."""
    best: list[tuple[float, int, tuple[int, ...]]] = [(0.0, 0, ())]  # cost, calls, sizes: fewer calls on a tie
    for left in range(1, n + 1):
        best.append(min((cost + s + call_cost_rows, calls + 1, (s, *plan))
                        for s in sizes for cost, calls, plan in [best[max(left - s, 0)]]))
    plan = best[n][2]
    if sum(plan) == n:  # nothing padded: largest first
        return tuple(sorted(plan, reverse=True))
    return (*sorted(plan[:-1], reverse=True), plan[-1])


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
        self._plans: dict[int, tuple[int, ...]] = {}  # windows left after the full calls -> their calls

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
        plan = self._plans.get(rest)
        if plan is None:
            plan = self._plans[rest] = call_plan(rest, self.inference.sizes, self.inference.call_cost_rows)
        sizes = [rows] * full + list(plan)
        padded = np.zeros((sum(sizes), *x.shape[1:]), np.float32)
        padded[:n] = x
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        parts = [self.inference(padded[at : at + size]) for at, size in zip(starts, sizes)]
        recon, kl, channels = (np.concatenate([p[k] for p in parts])[:n] for k in range(3))
        return WindowScores(recon, kl, channels)

    def _check_shape(self, x: np.ndarray) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.window_length, self.n_channels):
            raise ValueError(
                f"windows must have shape (n, {self.window_length}, {self.n_channels}), got {x.shape}"
            )
