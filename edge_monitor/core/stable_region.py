"""Stable-cutting detector: which parts of a cut are steady cutting, from the spindle current alone.

A cut starts with the tool in the air, enters the workpiece (a transient), cuts steadily and may
exit before the recording ends. Only the steady part is comparable from cut to cut, so only it
is windowed and scored.

The detector works on blocks of ``block`` samples of one channel (the DC spindle current by
default), aligned to the start of the cut:

1. The *air level* is taken from the first ``baseline_blocks`` blocks (the tool is in the air
   when a cut starts): the mean and standard deviation of those samples.
2. The *load* of a block is the distance of its mean from the air level.
3. Block ``i`` is stable when, over its neighbourhood of blocks ``i - half_width .. i + lookahead``
   (cut short at the ends of the cut), the median load is above ``min_load_sigmas`` times the air
   noise, and no block's load deviates from that median by more than ``tolerance`` times it.
   The level criterion rejects the air; the variation criterion rejects entry, exit and anything
   else that is not steady: the blocks before a block catch the entry behind it, the blocks after
   it an exit ahead of it.

The *look-ahead* is the latency the detector adds: a block is decided as soon as the
``lookahead`` blocks after it have arrived (``lookahead_samples``; 3 blocks of 64 samples, 768 ms
at 250 Hz, by default); blocks near the end of a cut are decided when the cut ends, with their
neighbourhood cut short. The decision of a block depends only on the samples and on where the cut
ends, never on how the samples were chunked: pushing a cut in one piece (offline, for training)
and in chunks of any size (live) gives exactly the same blocks. Bundles written before the
look-ahead was a setting (bundle format 1) had the symmetric neighbourhood: they read as
``lookahead = half_width``. ``python -m training lookahead-study`` measures the choice against the
synthetic archives' truth (``docs/training.md``).

Non-finite samples (the daemon marks samples lost in a transport gap as NaN) make their block
unknown, and no block whose neighbourhood holds an unknown block is stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isfinite

import numpy as np

from . import snapshot as snap
from .channels import CHANNELS
from .snapshot import SnapshotError
from .spec import Spec, setting

_NO_SAMPLES = np.empty(0)
_NO_SAMPLES.flags.writeable = False


@dataclass(frozen=True)
class StableRegionSpec(Spec):
    section = "stable_region"
    channel: str = setting("smcDC", choices=CHANNELS)
    block: int = setting(64, low=1)  # samples
    baseline_blocks: int = setting(8, low=1)
    half_width: int = setting(3, low=0)  # blocks before a block that its neighbourhood takes
    lookahead: int = setting(3, low=0)  # blocks after it: how long a block waits to be decided
    tolerance: float = setting(0.25, above=0.0)
    min_load_sigmas: float = setting(3.0, low=0.0)

    @property
    def lookahead_samples(self) -> int:
        """Samples that must follow a block before it is decided (the latency the detector adds)."""
        return self.lookahead * self.block


class StableRegionDetector:
    """Incremental detector for one cut: :meth:`push` samples, :meth:`finish` at the cut's end.

    ``stable`` lists the decision for every decided block so far, in order.
    """

    def __init__(self, spec: StableRegionSpec) -> None:
        self.spec = spec
        self._partial = _NO_SAMPLES  # samples of the block being filled
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
            # blocks.mean(axis=1) without its overhead: the same sum, divided the same way
            self._means.extend((np.add.reduce(blocks, axis=1) / b).tolist())  # NaN propagates
            if self._air is None:
                missing = self.spec.baseline_blocks - len(self._baseline_samples)
                if missing > 0:
                    self._baseline_samples.extend(np.array(blocks[:missing]))
        rest = data.size - n_full * b
        self._partial = data[n_full * b :].copy() if rest else _NO_SAMPLES
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
            "partial": self._partial,  # never written in place (push makes a new one): no copy
            "means": np.asarray(self._means, dtype=np.float64),
            "baseline": baseline,
            "air": None if self._air is None else np.array(self._air),  # an array: it may be NaN (snapshot.py)
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
        if isinstance(air, np.ndarray):  # as written since state file format 3; a list before
            air = snap.array(state, "air", where, np.float64, 1).tolist()
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
        # Block by block in plain floats: usually one block is decided per call, and its
        # neighbourhood is a handful of blocks. The arithmetic is numpy's (tests/reference_core.py
        # holds the vectorised original): the median of k values is the mean of the sorted values
        # at (k - 1) // 2 and k // 2, computed as (low + high) / 2 also when they are the same.
        if self._air is None:
            return 0
        spec = self.spec
        h, ahead = spec.half_width, spec.lookahead
        means = self._means
        n_blocks = len(means)
        first = len(self.stable)
        last = n_blocks if final else n_blocks - ahead  # exclusive
        if last <= first:
            return 0
        air_mean, air_std = self._air
        threshold = spec.min_load_sigmas * air_std
        tolerance = spec.tolerance
        lo = max(0, first - h)
        loads = [abs(m - air_mean) for m in means[lo : min(n_blocks, last + ahead)]]
        # A non-finite load (NaN: a gap, or no air level; inf) makes a neighbourhood unstable: NaN
        # makes it unknown, and an infinite load or median fails the variation or finite test.
        finite = [isfinite(v) for v in loads]
        stable = self.stable
        for i in range(first, last):
            j0 = max(0, i - h) - lo
            j1 = min(n_blocks, i + ahead + 1) - lo
            if not all(finite[j0:j1]):
                stable.append(False)
                continue
            near = sorted(loads[j0:j1])
            k = len(near)
            median = (near[(k - 1) // 2] + near[k // 2]) / 2
            stable.append(
                median > threshold
                and median > 0
                and isfinite(median)
                and max(abs(near[-1] - median), abs(near[0] - median)) <= tolerance * median
            )
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
