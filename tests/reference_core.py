"""The core path as it was before it was made cheap (commit efe9929): the reference that
``tests/test_core_equivalence.py`` checks the current classes against, decision for decision, and
that ``tests/bench_pipeline.py`` times them against.

The class bodies are copied from that commit unchanged, but for one generalisation: the
stable-region neighbourhood is ``i - half_width .. i + lookahead`` (it was ``half_width`` both
sides; the same when ``lookahead == half_width``, as every spec was then). Marked CHANGED.
Not product code: nothing under ``edge_monitor/`` imports it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_monitor.core import snapshot as snap
from edge_monitor.core.channels import CHANNELS, channel_index
from edge_monitor.core.frames import (
    N_CHANNELS,
    AddResult,
    CutStats,
    FinishResult,
    _no_frames,
)
from edge_monitor.core.inbound import DEFAULT_LIMITS
from edge_monitor.core.snapshot import SnapshotError
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.topics import ProtocolError
from edge_monitor.core.windowing import LOST_SLICE, Windows, WindowSpec


class RefStableRegionDetector:
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
            "air": None if self._air is None else np.array(self._air),
            "stable": np.asarray(self.stable, dtype=bool),
            "finished": self.finished,
        }

    @classmethod
    def from_state(cls, spec: StableRegionSpec, state: object, where: str = "detector") -> "RefStableRegionDetector":
        """The detector of :meth:`to_state`; :class:`~.snapshot.SnapshotError` when it does not fit ``spec``."""
        det = cls(spec)
        b = spec.block
        partial = snap.array(state, "partial", where, np.float64, 1)
        means = snap.array(state, "means", where, np.float64, 1)
        baseline = snap.array(state, "baseline", where, np.float64, 1)
        stable = snap.array(state, "stable", where, bool, 1)
        air = snap.mapping(state, where).get("air")
        if isinstance(air, np.ndarray):
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
        if self._air is None:
            return 0
        h, ahead = self.spec.half_width, self.spec.lookahead  # CHANGED: was h both sides
        n_blocks = len(self._means)
        first = self.decided
        last = n_blocks if final else n_blocks - ahead  # exclusive
        if last <= first:
            return 0
        air_mean, air_std = self._air
        lo = max(0, first - h)
        loads = np.abs(np.asarray(self._means[lo:n_blocks]) - air_mean)
        # Pad both sides with "outside the cut" markers so every block has a full neighbourhood;
        # padding is ignored, a NaN load inside the cut (a gap) makes the neighbourhood unknown.
        values = np.pad(loads, (h, ahead), constant_values=np.nan)
        inside = np.pad(np.ones(loads.size, bool), (h, ahead), constant_values=False)
        rows = slice(first - lo, last - lo)
        v = sliding_window_view(values, h + ahead + 1)[rows]
        m = sliding_window_view(inside, h + ahead + 1)[rows]
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


@dataclass
class RefCutWindower:
    """Windows of one cut, built incrementally. Call :meth:`push` with (k, channels) frames in
    order, then :meth:`finish` when the cut ends; each returns the windows it completed."""

    window: WindowSpec
    stable: StableRegionSpec
    n_channels: int = len(CHANNELS)
    _detector: RefStableRegionDetector = field(init=False)
    _buffer: np.ndarray = field(init=False)
    _buffer_start: int = field(init=False, default=0)  # cut offset of _buffer[0]
    _segment_start: int | None = field(init=False, default=None)
    _segment_stop: int = field(init=False, default=0)
    _next_start: int = field(init=False, default=0)  # next window start in the open segment
    stable_span: tuple[int, int] | None = field(init=False, default=None)  # first, last stable sample

    def __post_init__(self) -> None:
        self._detector = RefStableRegionDetector(self.stable)
        self._channel = channel_index(self.stable.channel)
        self._buffer = np.empty((0, self.n_channels))

    @property
    def pushed(self) -> int:
        """Frames pushed so far."""
        return self._detector.pushed

    @property
    def finished(self) -> bool:
        return self._detector.finished

    def push(self, frames: np.ndarray) -> Windows:
        frames = np.asarray(frames, dtype=np.float64)
        if frames.ndim != 2 or frames.shape[1] != self.n_channels:
            raise ValueError(f"frames must have shape (k, {self.n_channels}), got {frames.shape}")
        self._buffer = np.concatenate((self._buffer, frames)) if self._buffer.size else frames
        first = self._detector.decided
        self._detector.push(frames[:, self._channel])
        return self._collect(first)

    def feed(self, parts: tuple) -> Windows:
        """Push rows given as parts (``frames.AddResult.parts``: arrays, and counts of lost rows,
        which are pushed as NaN a slice at a time so that memory stays bounded)."""
        out = []
        for part in parts:
            if isinstance(part, np.ndarray):
                out.append(self.push(part))
                continue
            for at in range(0, part, LOST_SLICE):
                out.append(self.push(np.full((min(LOST_SLICE, part - at), self.n_channels), np.nan)))
        return Windows.concat(out, self.window.length, self.n_channels)

    def finish(self) -> Windows:
        first = self._detector.decided
        self._detector.finish()
        out = self._collect(first)
        self._buffer = np.empty((0, self.n_channels))
        return out

    def to_state(self) -> dict:
        """Everything the windower needs to go on after a restart (plain data and arrays)."""
        return {
            "buffer": self._buffer.copy(),
            "buffer_start": self._buffer_start,
            "segment_start": self._segment_start,
            "segment_stop": self._segment_stop,
            "next_start": self._next_start,
            "stable_span": None if self.stable_span is None else list(self.stable_span),
            "detector": self._detector.to_state(),
        }

    @classmethod
    def from_state(cls, window: WindowSpec, stable: StableRegionSpec, state: object,
                   where: str = "windower", n_channels: int = len(CHANNELS)) -> "RefCutWindower":
        """The windower of :meth:`to_state`; :class:`~.snapshot.SnapshotError` when it does not fit."""
        w = cls(window, stable, n_channels)
        w._buffer = snap.array(state, "buffer", where, np.float64, 2, cols=n_channels)
        w._buffer_start = snap.integer(state, "buffer_start", where)
        w._segment_start = snap.optional_integer(state, "segment_start", where)
        w._segment_stop = snap.integer(state, "segment_stop", where)
        w._next_start = snap.integer(state, "next_start", where)
        span = snap.mapping(state, where).get("stable_span")
        if span is not None:
            if not isinstance(span, list) or len(span) != 2 or any(type(x) is not int for x in span):
                raise SnapshotError(f"{where}.stable_span: expected null or [first, last], got {span!r}")
            span = (span[0], span[1])
        w.stable_span = span
        w._detector = RefStableRegionDetector.from_state(stable, snap.section(state, "detector", where),
                                                      where + ".detector")
        decided_end = w._detector.decided * stable.block
        segment = w._segment_start
        if w._buffer_start + w._buffer.shape[0] != w._detector.pushed or w._segment_stop > decided_end or (
            segment is not None
            and not (segment <= w._next_start and w._buffer_start <= w._next_start <= w._segment_stop)
        ):
            raise SnapshotError(f"{where}: the buffered samples and the window positions disagree")
        return w

    def _collect(self, first_block: int) -> Windows:
        b = self.stable.block
        length, stride = self.window.length, self.window.stride
        starts: list[int] = []
        for i in range(first_block, self._detector.decided):
            if self._detector.stable[i]:
                if self._segment_start is None:
                    self._segment_start = i * b
                    self._next_start = i * b
                self._segment_stop = (i + 1) * b
                while self._next_start + length <= self._segment_stop:
                    starts.append(self._next_start)
                    self._next_start += stride
                span_first = self.stable_span[0] if self.stable_span else i * b
                self.stable_span = (span_first, (i + 1) * b - 1)
            else:
                self._segment_start = None
        out = self._cut(starts)
        self._trim()
        return out

    def _cut(self, starts: list[int]) -> Windows:
        length = self.window.length
        if not starts:
            return Windows.empty(length, self.n_channels)
        idx = np.asarray(starts, dtype=np.int64)
        rel = idx - self._buffer_start
        data = self._buffer[rel[:, None] + np.arange(length)[None, :]]
        return Windows(idx, data)

    def _trim(self) -> None:
        # Keep only samples a future window can still use: from the next window start of the open
        # segment, or else from the first undecided block.
        keep = self._next_start if self._segment_start is not None else self._detector.decided * self.stable.block
        drop = keep - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep


class RefCutAssembler:
    """Aligns the channels of one cut; :meth:`add` chunks, then :meth:`finish` once."""

    def __init__(self, max_lead: int, max_cut_samples: int = DEFAULT_LIMITS.max_cut_samples, cut: str = "") -> None:
        if max_lead < 1:
            raise ValueError("max_lead must be at least 1 sample")
        self.cut = cut
        self.max_lead = int(max_lead)
        self.max_cut_samples = int(max_cut_samples)
        self._emitted = 0  # rows [0, _emitted) handed out; _buf[0] is row _emitted
        self._buf = np.full((1024, N_CHANNELS), np.nan)
        self._touched = 0  # rows of _buf that may hold data (the rest is NaN)
        self._expected = np.zeros(N_CHANNELS, np.int64)  # next offset per channel
        self._real_end = np.zeros(N_CHANNELS, np.int64)  # end of the last sample received per channel
        self._dup = np.zeros(N_CHANNELS, np.int64)
        self._gap = np.zeros(N_CHANNELS, np.int64)
        self._lagged = np.zeros(N_CHANNELS, np.int64)
        self._lost_rows = 0
        self.finished = False

    @property
    def emitted(self) -> int:
        """Rows handed out so far (the cut offset the next frames start at)."""
        return self._emitted

    @property
    def pending_rows(self) -> int:
        """Rows held back waiting for a slower channel (what the assembler's memory grows with)."""
        return self._touched

    @property
    def received_end(self) -> int:
        """Furthest offset any channel has delivered a sample up to (exclusive)."""
        return int(self._real_end.max())

    def add(self, channel: str, offset: int, samples: np.ndarray) -> AddResult:
        if self.finished:
            raise RuntimeError("add after finish")
        c = channel_index(channel)
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        n, end = samples.size, int(offset) + samples.size
        if offset < 0 or end > self.max_cut_samples:
            raise ProtocolError(f"chunk [{offset}, {end}) lies outside a cut of at most {self.max_cut_samples} samples")
        expected = int(self._expected[c])
        if end <= expected:
            self._dup[c] += n
            return AddResult(self._emitted, (), n, 0)
        skip = max(0, expected - offset)  # overlap with what this channel already has
        gap = max(0, offset - expected)
        self._dup[c] += skip
        self._gap[c] += gap
        first = offset + skip
        start = self._emitted
        # Rows below `first` will get nothing more from this channel: release what that allows
        # (with the lead rule up to where this chunk ends) before making room, so that the buffer
        # never spans a jump: it holds at most max(max_lead, chunk) rows whatever the offset.
        self._expected[c] = first
        leader = max(int(self._expected.max()), end)
        gap += self._raise_laggards(min(first, leader - self.max_lead))
        parts = self._release(int(self._expected.min()))
        self._reserve(end)
        self._buf[first - self._emitted : end - self._emitted, c] = samples[skip:]
        self._expected[c] = end
        self._real_end[c] = end
        gap += self._raise_laggards(int(self._expected.max()) - self.max_lead)
        parts += self._release(int(self._expected.min()))
        return AddResult(start, tuple(parts), skip, gap)

    def finish(self, total: int) -> FinishResult:
        """The cut is ``total`` samples long: pad every channel up to it with NaN (counted as
        gap), release the remaining rows, and report. Rows past ``total`` that every channel had
        already delivered were handed out before the end was known; they are reported, not undone."""
        if self.finished:
            raise RuntimeError("finish called twice")
        if not 0 <= total <= self.max_cut_samples:
            raise ProtocolError(f"cut length {total} is outside 0..{self.max_cut_samples} samples")
        self.finished = True
        missing = np.maximum(total - self._expected, 0)
        self._gap += missing
        extra = np.maximum(self._real_end - total, 0)
        rows_past_end = max(0, self._emitted - total)
        start = min(self._emitted, total)
        parts = self._release(total)
        self._buf = _no_frames()  # free the buffer: a finished cut holds no samples
        names = CHANNELS
        stats = CutStats(
            duplicate_samples=dict(zip(names, self._dup.tolist())),
            gap_samples=dict(zip(names, self._gap.tolist())),
            lagged_samples=dict(zip(names, self._lagged.tolist())),
            extra_samples=dict(zip(names, extra.tolist())),
            lost_rows=self._lost_rows,
            rows_past_end=rows_past_end,
        )
        return FinishResult(self.cut, start, tuple(parts), total, stats)

    def to_state(self) -> dict:
        """Everything the assembler needs to go on after a restart (plain data and arrays)."""
        if self.finished:
            raise RuntimeError("a finished cut has no state to keep")
        return {
            "max_lead": self.max_lead,
            "emitted": self._emitted,
            "rows": self._buf[: self._touched].copy(),
            "expected": self._expected.copy(),
            "real_end": self._real_end.copy(),
            "duplicate": self._dup.copy(),
            "gap": self._gap.copy(),
            "lagged": self._lagged.copy(),
            "lost_rows": self._lost_rows,
        }

    @classmethod
    def from_state(cls, state: object, max_cut_samples: int, cut: str, where: str = "assembler") -> "RefCutAssembler":
        """The assembler of :meth:`to_state`; :class:`~.snapshot.SnapshotError` when it does not fit."""
        a = cls(snap.integer(state, "max_lead", where, low=1), max_cut_samples, cut)
        a._emitted = snap.integer(state, "emitted", where, high=max_cut_samples)
        rows = snap.array(state, "rows", where, np.float64, 2, cols=N_CHANNELS, max_rows=max_cut_samples)
        per_channel = {}
        for key in ("expected", "real_end", "duplicate", "gap", "lagged"):
            values = snap.array(state, key, where, np.int64, 1)
            if values.shape != (N_CHANNELS,) or (values < 0).any():
                raise SnapshotError(f"{where}.{key}: expected {N_CHANNELS} counts >= 0")
            per_channel[key] = values
        expected = per_channel["expected"]
        if (expected < a._emitted).any() or expected.max() > max_cut_samples or (
            a._emitted + rows.shape[0] < per_channel["real_end"].max()
        ):
            raise SnapshotError(f"{where}: the channels' positions and the rows held disagree")
        a._buf = np.full((max(1024, rows.shape[0]), N_CHANNELS), np.nan)
        a._buf[: rows.shape[0]] = rows
        a._touched = rows.shape[0]
        a._expected, a._real_end = expected, per_channel["real_end"]
        a._dup, a._gap, a._lagged = per_channel["duplicate"], per_channel["gap"], per_channel["lagged"]
        a._lost_rows = snap.integer(state, "lost_rows", where)
        return a

    def _raise_laggards(self, floor: int) -> int:
        """The max-lead rule: channels behind ``floor`` are declared lost up to it."""
        lag = np.maximum(floor - self._expected, 0)
        if not lag.any():
            return 0
        # The laggards' rows up to the floor stay NaN in the buffer; count them as lost.
        self._gap += lag
        self._lagged += lag
        self._expected = np.maximum(self._expected, floor)
        return int(lag.sum())

    def _reserve(self, end: int) -> None:
        rows = end - self._emitted
        if rows > self._buf.shape[0]:
            grown = np.full((max(rows, 2 * self._buf.shape[0]), N_CHANNELS), np.nan)
            grown[: self._touched] = self._buf[: self._touched]
            self._buf = grown
        self._touched = max(self._touched, rows)

    def _release(self, ready: int) -> list:
        """Hand out rows up to ``ready``: those held in the buffer, then (past what any channel
        delivered) the count of lost rows."""
        k = ready - self._emitted
        if k <= 0:
            return []
        parts: list = []
        held = min(k, self._touched)
        if held:
            frames = self._buf[:held].copy()
            lost = np.isnan(frames).any(axis=1)
            if lost.any():
                frames[lost] = np.nan
                self._lost_rows += int(lost.sum())
            keep = self._touched - held
            self._buf[:keep] = self._buf[held : held + keep]  # numpy copes with the overlap
            self._buf[keep : self._touched] = np.nan
            self._touched = keep
            parts.append(frames)
        if k > held:
            self._lost_rows += k - held
            parts.append(k - held)
        self._emitted = ready
        return parts
