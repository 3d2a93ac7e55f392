"""Windows of a cut's stable region: the one implementation shared by training and the daemon.

A :class:`CutWindower` takes a cut's samples in order, in chunks of any size, and yields the
windows to score as soon as the stable-region detector has decided them. Training pushes each
archived cut in one piece; the daemon pushes what arrives over MQTT. Both get the same windows.

Windows start at the first sample of each stable segment and every ``stride`` samples after it;
a window is kept only when it lies wholly inside the segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from . import snapshot as snap
from .channels import CHANNELS, channel_index
from .snapshot import SnapshotError
from .spec import Spec, setting
from .stable_region import StableRegionDetector, StableRegionSpec

LOST_SLICE = 4096  # rows of NaN pushed at a time for a long run of lost rows


@dataclass(frozen=True)
class WindowSpec(Spec):
    section = "window"
    length: int = setting(64, low=2)  # samples
    stride: int = setting(64, low=1)


@dataclass
class Windows:
    """Windows of one cut: ``starts[i]`` is the first sample of ``data[i]`` (length, channels)."""

    starts: np.ndarray  # (n,) int64
    data: np.ndarray  # (n, length, channels) float64, raw (unscaled) signal values

    def __len__(self) -> int:
        return int(self.starts.size)

    @staticmethod
    def empty(length: int, channels: int) -> "Windows":
        return Windows(np.empty(0, np.int64), np.empty((0, length, channels)))

    @staticmethod
    def concat(parts: list["Windows"], length: int, channels: int) -> "Windows":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Windows.empty(length, channels)
        return Windows(
            np.concatenate([p.starts for p in parts]), np.concatenate([p.data for p in parts])
        )


@dataclass
class CutWindower:
    """Windows of one cut, built incrementally. Call :meth:`push` with (k, channels) frames in
    order, then :meth:`finish` when the cut ends; each returns the windows it completed."""

    window: WindowSpec
    stable: StableRegionSpec
    n_channels: int = len(CHANNELS)
    _detector: StableRegionDetector = field(init=False)
    # The rows a future window can still use are _store[_lo:_hi] (see _buffer): appended in place,
    # dropped by moving _lo, copied to the front of a new store when this one is full.
    _store: np.ndarray = field(init=False)
    _lo: int = field(init=False, default=0)
    _hi: int = field(init=False, default=0)
    _buffer_start: int = field(init=False, default=0)  # cut offset of _store[_lo]
    _segment_start: int | None = field(init=False, default=None)
    _segment_stop: int = field(init=False, default=0)
    _next_start: int = field(init=False, default=0)  # next window start in the open segment
    stable_span: tuple[int, int] | None = field(init=False, default=None)  # first, last stable sample

    def __post_init__(self) -> None:
        self._detector = StableRegionDetector(self.stable)
        self._channel = channel_index(self.stable.channel)
        # What a future window may still need: a window, the blocks waiting for their decision, a chunk.
        self._capacity = max(512, 2 * (self.window.length + (self.stable.lookahead + 1) * self.stable.block))
        self._store = np.empty((self._capacity, self.n_channels))

    @property
    def _buffer(self) -> np.ndarray:
        """The rows held, from cut offset ``_buffer_start`` on (a view)."""
        return self._store[self._lo : self._hi]

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
        self._append(frames)
        first = self._detector.decided
        self._detector.push(frames[:, self._channel])
        return self._collect(first)

    def feed(self, parts: tuple) -> Windows:
        """Push rows given as parts (``frames.AddResult.parts``: arrays, and counts of lost rows,
        which are pushed as NaN a slice at a time so that memory stays bounded)."""
        if not parts:
            return Windows.empty(self.window.length, self.n_channels)
        if len(parts) == 1 and isinstance(parts[0], np.ndarray):
            return self.push(parts[0])
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
        self._store = np.empty((0, self.n_channels))
        self._lo = self._hi = 0
        return out

    def to_state(self) -> dict:
        """Everything the windower needs to go on after a restart (plain data and arrays). The
        rows are a read-only view, not a copy: nothing writes them again (see _append)."""
        rows = self._buffer
        rows.flags.writeable = False
        return {
            "buffer": rows,
            "buffer_start": self._buffer_start,
            "segment_start": self._segment_start,
            "segment_stop": self._segment_stop,
            "next_start": self._next_start,
            "stable_span": None if self.stable_span is None else list(self.stable_span),
            "detector": self._detector.to_state(),
        }

    @classmethod
    def from_state(cls, window: WindowSpec, stable: StableRegionSpec, state: object,
                   where: str = "windower", n_channels: int = len(CHANNELS)) -> "CutWindower":
        """The windower of :meth:`to_state`; :class:`~.snapshot.SnapshotError` when it does not fit."""
        w = cls(window, stable, n_channels)
        w._append(snap.array(state, "buffer", where, np.float64, 2, cols=n_channels))
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
        w._detector = StableRegionDetector.from_state(stable, snap.section(state, "detector", where),
                                                      where + ".detector")
        decided_end = w._detector.decided * stable.block
        segment = w._segment_start
        if w._buffer_start + w._hi - w._lo != w._detector.pushed or w._segment_stop > decided_end or (
            segment is not None
            and not (segment <= w._next_start and w._buffer_start <= w._next_start
                     <= w._segment_stop + max(0, window.stride - window.length))
        ):
            raise SnapshotError(f"{where}: the buffered samples and the window positions disagree")
        return w

    def _append(self, frames: np.ndarray) -> None:
        k = frames.shape[0]
        if self._hi + k > self._store.shape[0]:
            held = self._hi - self._lo
            # A new store, never the rows moved to the front of this one: rows held are never
            # written again, so a checkpoint keeps a view of them rather than a copy (to_state).
            size = self._store.shape[0]
            store = np.empty((max(held + k, size if held + k <= size else 2 * size, self._capacity), self.n_channels))
            store[:held] = self._store[self._lo : self._hi]
            self._store, self._lo, self._hi = store, 0, held
        self._store[self._hi : self._hi + k] = frames
        self._hi += k

    def _collect(self, first_block: int) -> Windows:
        decided = self._detector.decided
        if first_block == decided:  # nothing new decided: nothing to cut, nothing to drop
            return Windows.empty(self.window.length, self.n_channels)
        b = self.stable.block
        length, stride = self.window.length, self.window.stride
        stable = self._detector.stable
        starts: list[int] = []
        for i in range(first_block, decided):
            if stable[i]:
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
        at = self._lo - self._buffer_start  # _store row of cut offset 0
        first = starts[0] + at
        if all(b - a == length for a, b in pairwise(starts)):  # back to back: one block of rows
            data = self._store[first : first + len(starts) * length].reshape(len(starts), length, -1).copy()
        else:
            rows = np.asarray(starts, dtype=np.int64)[:, None] + (at + np.arange(length))[None, :]
            data = self._store[rows]
        return Windows(np.asarray(starts, dtype=np.int64), data)

    def _trim(self) -> None:
        # Keep only samples a future window can still use: from the next window start of the open
        # segment, or else from the first undecided block (where a new segment may start: with a
        # stride longer than the window, the next start can lie beyond it).
        keep = self._detector.decided * self.stable.block
        if self._segment_start is not None:
            keep = min(keep, self._next_start)
        drop = keep - self._buffer_start
        if drop > 0:
            self._lo += drop
            self._buffer_start = keep


def cut_windows(signals: np.ndarray, window: WindowSpec, stable: StableRegionSpec) -> Windows:
    """Offline: all windows of a whole cut (the same code path the daemon runs on live data)."""
    windower = CutWindower(window, stable, n_channels=signals.shape[1])
    parts = [windower.push(signals), windower.finish()]
    return Windows.concat(parts, window.length, signals.shape[1])
