"""Stable-cutting detector: which parts of a cut are steady cutting, from the spindle current alone.

A cut starts with the tool in the air, enters the workpiece (a transient), cuts steadily and may
exit before the recording ends. Only the steady part is comparable from cut to cut, so only it
is windowed and scored.

The detector works on blocks of ``block`` samples of one channel (the DC spindle current by
default), aligned to the start of the cut:

1. The *air level* is taken from the first ``baseline_blocks`` blocks (the tool is in the air
   when a cut starts): the mean and standard deviation of those samples.
2. The *load* of a block is the distance of its mean from the air level.
3. Block ``i`` is stable when, over its neighbourhood of blocks ``i - half_width .. i + half_width``
   (cut short at the ends of the cut), the median load is above ``min_load_sigmas`` times the air
   noise, and no block's load deviates from that median by more than ``tolerance`` times it.
   The level criterion rejects the air; the variation criterion rejects entry, exit and anything
   else that is not steady.

A block is decided as soon as the ``half_width`` blocks after it have arrived, so the look-ahead is
bounded (``half_width * block`` samples); blocks near the end of a cut are decided when the cut
ends, with their neighbourhood cut short. The decision of a block depends only on the samples and
on where the cut ends, never on how the samples were chunked: pushing a cut in one piece (offline,
for training) and in chunks of any size (live) gives exactly the same blocks.

Non-finite samples (the daemon marks samples lost in a transport gap as NaN) make their block
unknown, and no block whose neighbourhood holds an unknown block is stable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import snapshot as snap
from .channels import CHANNELS
from .snapshot import SnapshotError
from .spec import Spec, setting


@dataclass(frozen=True)
class StableRegionSpec(Spec):
    section = "stable_region"
    channel: str = setting("smcDC", choices=CHANNELS)
    block: int = setting(64, low=1)  # samples
    baseline_blocks: int = setting(8, low=1)
    half_width: int = setting(3, low=0)  # blocks
    tolerance: float = setting(0.25, above=0.0)
    min_load_sigmas: float = setting(3.0, low=0.0)

    @property
    def lookahead_samples(self) -> int:
        return self.half_width * self.block


class StableRegionDetector:
    """Incremental detector for one cut: :meth:`push` samples, :meth:`finish` at the cut's end.

    ``stable`` lists the decision for every decided block so far, in order.
    """

    def __init__(self, spec: StableRegionSpec) -> None:
        self.spec = spec
        self._partial = np.empty(0)  # samples of the block being filled
        self._means: list[float] = []  # block means (NaN: block held non-finite samples)
        self._baseline_samples: list[np.ndarray] = []
        self._air: tuple[float, float] | None = None  # air level mean, noise std
        self.stable: list[bool] = []
        self.finished = False

    @property
    def decided(self) -> int:
        """Number of blocks decided so far."""
        return len(self.stable)

    @property
    def pushed(self) -> int:
        """Samples pushed so far."""
        return len(self._means) * self.spec.block + self._partial.size

    def push(self, x: np.ndarray) -> int:
        """Add samples of the detector's channel; returns how many blocks got decided."""
        if self.finished:
            raise RuntimeError("push after finish")
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        b = self.spec.block
        data = np.concatenate((self._partial, x)) if self._partial.size else x
        n_full = data.size // b
        if n_full:
            blocks = data[: n_full * b].reshape(n_full, b)
            self._means.extend(blocks.mean(axis=1).tolist())  # NaN propagates
            missing = self.spec.baseline_blocks - len(self._baseline_samples)
            if self._air is None and missing > 0:
                self._baseline_samples.extend(blocks[:missing])
        self._partial = data[n_full * b :].copy()
        if self._air is None and len(self._baseline_samples) >= self.spec.baseline_blocks:
            self._set_air()
        return self._decide(final=False)

    def finish(self) -> int:
        """The cut ended: decide every remaining block (a trailing partial block is never stable)."""
        if self.finished:
            return 0
        self.finished = True
        if self._air is None:
            self._set_air()
        return self._decide(final=True)

    def to_state(self) -> dict:
        """Everything the detector needs to go on after a restart (plain data and arrays)."""
        baseline = np.concatenate(self._baseline_samples) if self._baseline_samples else np.empty(0)
        return {
            "partial": self._partial.copy(),
            "means": np.asarray(self._means, dtype=np.float64),
            "baseline": baseline,
            "air": None if self._air is None else list(self._air),
            "stable": np.asarray(self.stable, dtype=bool),
            "finished": self.finished,
        }

    @classmethod
    def from_state(cls, spec: StableRegionSpec, state: object, where: str = "detector") -> "StableRegionDetector":
        """The detector of :meth:`to_state`; :class:`~.snapshot.SnapshotError` when it does not fit ``spec``."""
        det = cls(spec)
        b = spec.block
        partial = snap.array(state, "partial", where, np.float64, 1)
        means = snap.array(state, "means", where, np.float64, 1)
        baseline = snap.array(state, "baseline", where, np.float64, 1)
        stable = snap.array(state, "stable", where, bool, 1)
        air = snap.mapping(state, where).get("air")
        if partial.size >= b or baseline.size % b or baseline.size > b * spec.baseline_blocks:
            raise SnapshotError(f"{where}: partial or baseline samples do not fit blocks of {b}")
        if stable.size > means.size:
            raise SnapshotError(f"{where}: {stable.size} blocks decided of {means.size}")
        if air is not None:
            if (not isinstance(air, list) or len(air) != 2
                    or any(type(x) not in (int, float) for x in air)):
                raise SnapshotError(f"{where}.air: expected null or [mean, std], got {air!r}")
            air = (float(air[0]), float(air[1]))
        det._partial = partial
        det._means = means.tolist()
        det._baseline_samples = list(baseline.reshape(-1, b)) if baseline.size else []
        det._air = air
        det.stable = stable.tolist()
        det.finished = snap.boolean(state, "finished", where)
        return det

    def _set_air(self) -> None:
        if not self._baseline_samples:
            self._air = (np.nan, np.nan)
            return
        samples = np.concatenate(self._baseline_samples)
        samples = samples[np.isfinite(samples)]
        self._air = (float(samples.mean()), float(samples.std())) if samples.size else (np.nan, np.nan)
        self._baseline_samples = []

    def _decide(self, final: bool) -> int:
        if self._air is None:
            return 0
        h = self.spec.half_width
        n_blocks = len(self._means)
        first = self.decided
        last = n_blocks if final else n_blocks - h  # exclusive
        if last <= first:
            return 0
        air_mean, air_std = self._air
        lo = max(0, first - h)
        loads = np.abs(np.asarray(self._means[lo:n_blocks]) - air_mean)
        # Pad both sides with "outside the cut" markers so every block has a full neighbourhood;
        # padding is ignored, a NaN load inside the cut (a gap) makes the neighbourhood unknown.
        values = np.pad(loads, h, constant_values=np.nan)
        inside = np.pad(np.ones(loads.size, bool), h, constant_values=False)
        rows = slice(first - lo, last - lo)
        v = sliding_window_view(values, 2 * h + 1)[rows]
        m = sliding_window_view(inside, 2 * h + 1)[rows]
        unknown = (m & np.isnan(v)).any(axis=1)
        with warnings.catch_warnings():  # all-NaN rows are expected at gaps; they come out unstable
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(v, axis=1)
            spread = np.nanmax(np.abs(v - median[:, None]), axis=1)
            threshold = self.spec.min_load_sigmas * air_std
            ok = (
                ~unknown
                & np.isfinite(median)
                & (median > threshold)
                & (median > 0)
                & (spread <= self.spec.tolerance * median)
            )
        self.stable.extend(bool(s) for s in ok)
        return last - first


def stable_blocks(x: np.ndarray, spec: StableRegionSpec) -> np.ndarray:
    """Offline: the stable decision of every block of a whole cut's channel ``x``."""
    det = StableRegionDetector(spec)
    det.push(x)
    det.finish()
    return np.asarray(det.stable, dtype=bool)


def stable_segments(x: np.ndarray, spec: StableRegionSpec) -> list[tuple[int, int]]:
    """Offline: the stable region of a cut as [start, stop) sample spans."""
    return blocks_to_segments(stable_blocks(x, spec), spec.block)


def blocks_to_segments(stable: np.ndarray, block: int) -> list[tuple[int, int]]:
    stable = np.asarray(stable, dtype=bool)
    if not stable.any():
        return []
    edges = np.diff(np.concatenate(([0], stable.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    return [(int(a) * block, int(b) * block) for a, b in zip(starts, stops)]
