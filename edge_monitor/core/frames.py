"""Aligning one machine's six channel streams into frames, per cut.

Each channel arrives as chunks ``(offset, samples)`` in its own order and chunk sizes. A
:class:`CutAssembler` keeps, per channel, the offset it expects next:

- a chunk wholly below it is a *duplicate* (a QoS 1 redelivery): ignored and counted;
- a chunk overlapping it keeps only its new part (the overlap is counted as duplicate);
- a chunk above it opens a *gap*: the missing span is counted and filled with NaN. Samples that
  arrive later for a span already declared lost are duplicates too; they are not backfilled.

A frame row is complete once every channel has passed it; completed rows are handed out in order
as ``(k, 6)`` float64 arrays. A row that misses any channel is NaN in *all* channels: the model
needs all six, and the stable-region detector, which reads only its own channel, treats NaN as
"no window may span this", so whole-row NaN keeps every window clear of every channel's gaps.

Memory is bounded: rows wait only until the slowest channel catches up, and when one channel
runs more than ``max_lead`` samples ahead of another, the laggard's missing span up to
``leader - max_lead`` is declared lost (a gap, counted as *lagged*) so that rows can be released.
Offsets beyond ``max_cut_samples`` are refused, which bounds the NaN a gap can cost.

:class:`MachineStream` is the per-machine state machine over it: idle → cut open → idle.
Everything here is pure: no MQTT, no clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from math import isnan

import numpy as np

from . import snapshot as snap
from .channels import CHANNELS, channel_index
from .inbound import DEFAULT_LIMITS, CutEnd, CutStart, Limits, SignalChunk, SignalFrame
from .snapshot import SnapshotError
from .topics import ProtocolError, StaleInput

N_CHANNELS = len(CHANNELS)


Rows = tuple  # of parts, in order: (k, 6) float64 arrays, and ints that stand for that many lost (all-NaN) rows


def materialize(parts: Rows) -> np.ndarray:
    """The rows as one array (lost runs as NaN rows): for tests and small runs only."""
    arrays = [p if isinstance(p, np.ndarray) else np.full((p, N_CHANNELS), np.nan) for p in parts]
    return np.concatenate(arrays) if arrays else _no_frames()


@dataclass(frozen=True, eq=False)
class AddResult:
    start: int  # cut offset of the first row of parts
    # The rows completed by this chunk, NaN where lost. A long run of lost rows (a channel that
    # jumped far ahead, a cut end far past what arrived) is its count, never materialised: memory
    # stays bounded whatever the offsets.
    parts: Rows
    duplicate_samples: int  # samples of this chunk ignored as already received
    gap_samples: int  # samples declared lost by this call, over all channels

    @property
    def frames(self) -> np.ndarray:
        return materialize(self.parts)


@dataclass(frozen=True)
class CutStats:
    """What happened to one cut's samples, per channel (dicts keyed by channel name)."""

    duplicate_samples: dict[str, int]
    gap_samples: dict[str, int]  # filled with NaN: jumps, lagging, and missing at the end
    lagged_samples: dict[str, int]  # the part of gap_samples declared lost by the max-lead rule
    extra_samples: dict[str, int]  # received past the declared end of the cut
    lost_rows: int  # rows released missing at least one channel (NaN rows; no window spans them)
    rows_past_end: int  # rows already handed out past the declared end (cannot be taken back)

    @property
    def total_gap_samples(self) -> int:
        return sum(self.gap_samples.values())

    @property
    def total_duplicate_samples(self) -> int:
        return sum(self.duplicate_samples.values())


@dataclass(frozen=True, eq=False)
class FinishResult:
    cut: str
    start: int  # cut offset of the first row of parts
    parts: Rows  # the last rows of the cut, padded with NaN up to its end (as in AddResult)
    samples: int  # the cut's length as closed
    stats: CutStats
    aborted: bool = False  # closed by a new cut's start instead of its own end

    @property
    def frames(self) -> np.ndarray:
        return materialize(self.parts)


class CutAssembler:
    """Aligns the channels of one cut; :meth:`add` chunks, then :meth:`finish` once."""

    def __init__(self, max_lead: int, max_cut_samples: int = DEFAULT_LIMITS.max_cut_samples, cut: str = "") -> None:
        if max_lead < 1:
            raise ValueError("max_lead must be at least 1 sample")
        self.cut = cut
        self.max_lead = int(max_lead)
        self.max_cut_samples = int(max_cut_samples)
        self._emitted = 0  # rows [0, _emitted) handed out; _buf[_base] is row _emitted
        # Rows held are _buf[_base : _base + _touched]; every other row of _buf is NaN. Releasing
        # moves _base on; the rows held move to the front only when a chunk would not fit behind.
        self._buf = np.full((1024, N_CHANNELS), np.nan)
        self._base = 0
        self._touched = 0  # rows held that may hold data (the rest is NaN)
        # Per channel, in CHANNELS order (plain ints: a handful of them change per chunk).
        self._expected = [0] * N_CHANNELS  # next offset
        self._real_end = [0] * N_CHANNELS  # end of the last sample received
        self._dup = [0] * N_CHANNELS
        self._gap = [0] * N_CHANNELS
        self._lagged = [0] * N_CHANNELS
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
        return max(self._real_end)

    def add(self, channel: str, offset: int, samples: np.ndarray) -> AddResult:
        if self.finished:
            raise RuntimeError("add after finish")
        c = channel_index(channel)
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        offset = int(offset)
        n = samples.size
        end = offset + n
        if offset < 0 or end > self.max_cut_samples:
            raise ProtocolError(f"chunk [{offset}, {end}) lies outside a cut of at most {self.max_cut_samples} samples")
        expected = self._expected
        if end <= expected[c]:
            self._dup[c] += n
            return AddResult(self._emitted, (), n, 0)
        skip = max(0, expected[c] - offset)  # overlap with what this channel already has
        gap = max(0, offset - expected[c])
        self._dup[c] += skip
        self._gap[c] += gap
        first = offset + skip
        start = self._emitted
        # Rows below `first` will get nothing more from this channel: release what that allows
        # (with the lead rule up to where this chunk ends) before making room, so that the buffer
        # never spans a jump: it holds at most max(max_lead, chunk) rows whatever the offset.
        expected[c] = first
        leader = max(max(expected), end)
        gap += self._raise_laggards(min(first, leader - self.max_lead))
        parts = self._release(min(expected))
        self._reserve(end)
        at = self._base - self._emitted  # _buf row of cut offset 0
        self._buf[first + at : end + at, c] = samples[skip:] if skip else samples
        expected[c] = end
        self._real_end[c] = end
        gap += self._raise_laggards(max(expected) - self.max_lead)
        parts += self._release(min(expected))
        return AddResult(start, tuple(parts), skip, gap)

    def add_level(self, offset: int, rows: np.ndarray) -> AddResult | None:
        """Every channel's samples from ``offset`` on, as (k, channels) finite ``rows``, when every
        channel stands at ``offset``, no row is held and the frame is no longer than the max lead:
        handed out as they are, what :meth:`add` of each channel would hand out (a frame in order:
        the usual case, at a tenth of the cost; tests/test_signal_frame.py compares). Otherwise
        None: add the channels one by one (a frame longer than the max lead has its first channel
        lead the others past it, which declares their rows lost)."""
        end = offset + rows.shape[0]
        # every channel at offset: none is past it, and none behind what was handed out
        if (self._touched or offset != self._emitted or max(self._expected) != offset or rows.shape[0] > self.max_lead
                or rows.shape[1:] != (N_CHANNELS,) or not 0 < rows.shape[0] <= self.max_cut_samples - offset
                or self.finished or isnan(rows.sum())):
            return None
        self._expected = [end] * N_CHANNELS
        self._real_end = [end] * N_CHANNELS
        self._emitted = end
        return AddResult(offset, (rows,), 0, 0)

    def finish(self, total: int) -> FinishResult:
        """The cut is ``total`` samples long: pad every channel up to it with NaN (counted as
        gap), release the remaining rows, and report. Rows past ``total`` that every channel had
        already delivered were handed out before the end was known; they are reported, not undone."""
        if self.finished:
            raise RuntimeError("finish called twice")
        if not 0 <= total <= self.max_cut_samples:
            raise ProtocolError(f"cut length {total} is outside 0..{self.max_cut_samples} samples")
        self.finished = True
        total = int(total)
        self._gap = [g + max(total - e, 0) for g, e in zip(self._gap, self._expected)]
        extra = [max(r - total, 0) for r in self._real_end]
        rows_past_end = max(0, self._emitted - total)
        start = min(self._emitted, total)
        parts = self._release(total)
        self._buf = _no_frames()  # free the buffer: a finished cut holds no samples
        self._base = self._touched = 0
        names = CHANNELS
        stats = CutStats(
            duplicate_samples=dict(zip(names, self._dup)),
            gap_samples=dict(zip(names, self._gap)),
            lagged_samples=dict(zip(names, self._lagged)),
            extra_samples=dict(zip(names, extra)),
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
            "rows": self._buf[self._base : self._base + self._touched].copy(),
            "expected": np.array(self._expected, dtype=np.int64),
            "real_end": np.array(self._real_end, dtype=np.int64),
            "duplicate": np.array(self._dup, dtype=np.int64),
            "gap": np.array(self._gap, dtype=np.int64),
            "lagged": np.array(self._lagged, dtype=np.int64),
            "lost_rows": self._lost_rows,
        }

    @classmethod
    def from_state(cls, state: object, max_cut_samples: int, cut: str, where: str = "assembler") -> "CutAssembler":
        """The assembler of :meth:`to_state`; :class:`~.snapshot.SnapshotError` when it does not fit."""
        a = cls(snap.integer(state, "max_lead", where, low=1), max_cut_samples, cut)
        a._emitted = snap.integer(state, "emitted", where, high=max_cut_samples)
        rows = snap.array(state, "rows", where, np.float64, 2, cols=N_CHANNELS, max_rows=max_cut_samples)
        per_channel = {}
        for key in ("expected", "real_end", "duplicate", "gap", "lagged"):
            values = snap.array(state, key, where, np.int64, 1)
            if values.shape != (N_CHANNELS,) or (values < 0).any():
                raise SnapshotError(f"{where}.{key}: expected {N_CHANNELS} counts >= 0")
            per_channel[key] = values.tolist()
        expected = per_channel["expected"]
        if min(expected) < a._emitted or max(expected) > max_cut_samples or (
            a._emitted + rows.shape[0] < max(per_channel["real_end"])
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
        expected = self._expected
        if min(expected) >= floor:
            return 0
        # The laggards' rows up to the floor stay NaN in the buffer; count them as lost.
        lost = 0
        for c, e in enumerate(expected):
            if e < floor:
                self._gap[c] += floor - e
                self._lagged[c] += floor - e
                expected[c] = floor
                lost += floor - e
        return lost

    def _reserve(self, end: int) -> None:
        """Room in the buffer for the rows up to ``end``."""
        rows = end - self._emitted
        size = self._buf.shape[0]
        if self._base + rows > size:
            held = self._buf[self._base : self._base + self._touched]
            if rows > size:
                grown = np.full((max(rows, 2 * size), N_CHANNELS), np.nan)
                grown[: self._touched] = held
                self._buf = grown
            else:  # to the front; what they leave behind is NaN again
                moved = held.copy()
                held[:] = np.nan
                self._buf[: self._touched] = moved
            self._base = 0
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
            base = self._base
            rows = self._buf[base : base + held]
            frames = rows.copy()
            rows[:] = np.nan  # the buffer's invariant: only rows held hold data
            if isnan(frames.sum()):  # some row misses a channel (NaN propagates into the sum)
                lost = np.isnan(frames).any(axis=1)
                frames[lost] = np.nan
                self._lost_rows += int(lost.sum())
            self._touched -= held
            self._base = base + held if self._touched else 0
            parts.append(frames)
        if k > held:
            self._lost_rows += k - held
            parts.append(k - held)
        self._emitted = ready
        return parts


def _no_frames() -> np.ndarray:
    return np.empty((0, N_CHANNELS))


@dataclass(frozen=True, eq=False)
class StartResult:
    opened: bool  # False: a repeated start of the open cut (QoS 1 redelivery), nothing changed
    closed: FinishResult | None  # the previous cut, if this start had to close it (aborted)


class MachineStream:
    """One machine's inputs: idle → (start) cut open → (end) idle.

    - A chunk or end for a cut that is not open is rejected (:class:`ProtocolError`) as "never
      started" or "already ended"; a repeated end of a recently ended cut is a redelivery and
      returns None.
    - A repeated start of the open cut is a redelivery and changes nothing; a start of a recently
      ended cut is rejected (cut ids are unique per machine).
    - A start while another cut is open closes that one first (its end was lost): it is finished
      at the furthest sample any channel delivered, and returned as ``aborted``.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, remember_ended: int = 64) -> None:
        self.max_lead_seconds = limits.max_lead_seconds  # validated with the other limits
        self.max_cut_samples = limits.max_cut_samples
        self._ended: deque[str] = deque(maxlen=remember_ended)
        self.current: CutStart | None = None
        self._assembler: CutAssembler | None = None

    @property
    def is_open(self) -> bool:
        return self.current is not None

    @property
    def assembler(self) -> CutAssembler | None:
        return self._assembler

    def to_state(self) -> dict:
        """The open cut (as its start message), its assembler and the recently ended cut ids."""
        return {
            "ended": list(self._ended),
            "current": None if self.current is None else self.current.to_dict(),
            "assembler": None if self._assembler is None else self._assembler.to_state(),
        }

    def restore(self, state: object, current: CutStart | None, where: str = "stream") -> None:
        """Resume from :meth:`to_state` (``current``: its ``current``, parsed by the caller, who
        owns the protocol's parser); :class:`~.snapshot.SnapshotError` when it does not fit."""
        ended = snap.texts(state, "ended", where)
        assembler = None
        if current is not None:
            assembler = CutAssembler.from_state(snap.section(state, "assembler", where), self.max_cut_samples,
                                                current.cut, where + ".assembler")
        self._ended = deque(ended[-(self._ended.maxlen or len(ended)):], maxlen=self._ended.maxlen)
        self.current, self._assembler = current, assembler

    def start(self, msg: CutStart) -> StartResult:
        if self.current is not None and msg.cut == self.current.cut:
            return StartResult(False, None)
        if msg.cut in self._ended:
            raise StaleInput(f"cut {msg.cut!r} already ended; cut ids must be unique per machine")
        closed = None
        if self._assembler is not None:
            closed = self._close(self._assembler.received_end, aborted=True)
        max_lead = min(self.max_cut_samples, max(1, math.ceil(self.max_lead_seconds * msg.fs)))
        self.current = msg
        self._assembler = CutAssembler(max_lead, self.max_cut_samples, cut=msg.cut)
        return StartResult(True, closed)

    def chunk(self, channel: str, msg: SignalChunk) -> AddResult:
        self._check_open(msg.cut, "chunk")
        assert self._assembler is not None
        return self._assembler.add(channel, msg.offset, msg.samples)

    def frame(self, msg: SignalFrame) -> AddResult:
        """Every channel's block at once: the six chunks the frame stands for, added in the
        channels' order, as one result (the rows they complete, in order); in one step when every
        channel stands at the frame's offset (:meth:`CutAssembler.add_level`)."""
        self._check_open(msg.cut, "frame")
        assert self._assembler is not None
        level = self._assembler.add_level(msg.offset, msg.samples)
        if level is not None:
            return level
        results = [self._assembler.add(channel, chunk.offset, chunk.samples) for channel, chunk in msg.chunks()]
        return AddResult(results[0].start, tuple(part for r in results for part in r.parts),
                         sum(r.duplicate_samples for r in results), sum(r.gap_samples for r in results))

    def abort(self) -> FinishResult | None:
        """Close the open cut (its end never came) at the furthest sample any channel delivered."""
        if self._assembler is None:
            return None
        return self._close(self._assembler.received_end, aborted=True)

    def end(self, msg: CutEnd) -> FinishResult | None:
        if msg.cut in self._ended:  # a redelivered end: nothing left to do
            return None
        self._check_open(msg.cut, "end")
        return self._close(msg.samples, aborted=False)

    def _check_open(self, cut: str, what: str) -> None:
        if self.current is not None and cut == self.current.cut:
            return
        if cut in self._ended:
            raise StaleInput(f"{what} for cut {cut!r}, which already ended")
        if self.current is None:
            raise ProtocolError(f"{what} for cut {cut!r}, which never started")
        raise ProtocolError(f"{what} for cut {cut!r}, which never started (cut {self.current.cut!r} is open)")

    def _close(self, total: int, aborted: bool) -> FinishResult:
        assert self._assembler is not None and self.current is not None
        result = self._assembler.finish(total)
        self._ended.append(self.current.cut)
        self.current, self._assembler = None, None
        return replace(result, aborted=aborted)
