"""One machine's streaming pipeline: protocol messages in, windows to score and results out.

The functional core of the daemon for one machine, with no MQTT, no model and no clock:

    CutStart / SignalChunk / CutEnd / Command
        → frames.MachineStream (aligns the six channels, duplicates, gaps)
        → windowing.CutWindower (the bundle's window and stable-region specs: the windows training
          cuts from the same signals)
        → :class:`PendingWindow` (raw data, plus the ids of the MQTT messages that carried it)

and, once the caller has scored a window, :meth:`MachinePipeline.scored` feeds the
alarm.AlarmTracker and returns what to publish: the window's score, an alarm transition, and the
summary of a cut once all of its windows are scored.

Order is kept per machine: the caller scores windows in the order :meth:`MachinePipeline.handle`
returned them, and a cut's summary or a ``reset`` that arrives while windows are still being
scored takes effect after those windows (a reset must not count the old tool's last windows
against the new tool).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .alarm import AlarmPolicy, AlarmTracker, Level, Thresholds, Transition
from .calibration import GLOBAL, regime_key
from .channels import CHANNELS, channel_index
from .frames import FinishResult, MachineStream
from .inbound import DEFAULT_LIMITS, Command, CutEnd, CutStart, InboundMessage, Limits, SignalChunk
from .outbound import AlarmMessage, ScoreMessage, SummaryMessage
from .topics import ProtocolError
from .stable_region import StableRegionSpec
from .windowing import CutWindower, Windows, WindowSpec


@dataclass(frozen=True)
class PipelineSpec:
    """What every machine's pipeline shares: the bundle's specs and the daemon's policies."""

    window: WindowSpec
    stable: StableRegionSpec
    fs: float  # the model's sample rate, Hz: a cut at another rate is refused
    thresholds: Thresholds
    policy: AlarmPolicy
    model_id: str
    limits: Limits = DEFAULT_LIMITS
    max_lead_seconds: float = 60.0


@dataclass(frozen=True, eq=False)
class PendingWindow:
    """A window waiting to be scored."""

    machine: str
    cut: str
    offset: int  # first sample of the window in the cut
    ts: float  # when that sample was taken: the cut's start ts + offset / fs
    regime: str  # the cut's operating regime (calibration.regime_key): which healthy reference scores it
    data: np.ndarray  # (length, channels) raw float64 signal values
    # MQTT message ids of the signal chunks that carried the window's samples, all channels: what
    # to acknowledge once the window's results are published (acking after publishing).
    message_ids: tuple[int, ...]


@dataclass(frozen=True)
class WindowScore:
    """The scorer's output for one window."""

    recon: float
    kl: float
    channels: tuple[float, ...]  # reconstruction error per channel, CHANNELS order

    def value(self, name: str) -> float:
        return self.recon if name == "recon" else self.kl


Outbound = ScoreMessage | AlarmMessage | SummaryMessage


@dataclass(frozen=True)
class Output:
    """A message to publish on one of the machine's topics (which one follows from its type)."""

    machine: str
    message: Outbound


@dataclass
class Step:
    """What one inbound message did to the pipeline."""

    windows: list[PendingWindow] = field(default_factory=list)  # to score, in order
    outputs: list[Output] = field(default_factory=list)  # to publish now
    duplicate_samples: int = 0
    gap_samples: int = 0
    events: list[tuple[str, dict]] = field(default_factory=list)  # (log event, fields) worth logging
    alarm_changed: bool = False  # the alarm state changed (persist it)


@dataclass
class _CutRecord:
    """A cut's windows on their way through scoring, until its summary."""

    cut: str
    emitted: int = 0  # windows handed out for scoring
    scores: list[float] = field(default_factory=list)
    skipped: int = 0
    stable: tuple[int, int] | None = None


@dataclass(frozen=True)
class _Summarise:
    record: _CutRecord


@dataclass(frozen=True)
class _Reset:
    by: str
    ts: float


class _ChunkIds:
    """Which inbound messages carried which samples of the open cut, per channel, so that a window
    can name the messages it depends on. Spans no future window can touch are dropped."""

    def __init__(self) -> None:
        self._spans: list[list[tuple[int, int, int]]] = [[] for _ in CHANNELS]  # (start, end, mid)

    def add(self, channel: int, start: int, end: int, mid: int) -> None:
        self._spans[channel].append((start, end, mid))  # accepted spans grow per channel

    def covering(self, start: int, end: int) -> tuple[int, ...]:
        ids: set[int] = set()
        for spans in self._spans:
            # spans are sorted and disjoint per channel: skip those ending at or before start
            i = bisect.bisect_right(spans, start, key=lambda s: s[1])
            while i < len(spans) and spans[i][0] < end:
                ids.add(spans[i][2])
                i += 1
        return tuple(sorted(ids))

    def forget_before(self, offset: int) -> None:
        for c, spans in enumerate(self._spans):
            i = bisect.bisect_right(spans, offset, key=lambda s: s[1])
            if i:
                self._spans[c] = spans[i:]


class MachinePipeline:
    """The pipeline of one machine; see the module docstring."""

    def __init__(self, machine: str, spec: PipelineSpec, tracker: AlarmTracker | None = None) -> None:
        self.machine = machine
        self.spec = spec
        self.tracker = tracker or AlarmTracker(spec.policy, spec.thresholds)
        self.stream = MachineStream(spec.max_lead_seconds, spec.limits.max_cut_samples)
        self._cut: CutStart | None = None  # the open cut as this pipeline windows it
        self._regime = ""
        self._windower: CutWindower | None = None
        self._record: _CutRecord | None = None
        self._ids = _ChunkIds()
        self._counted_dup = 0  # of the open cut, already reported by add results
        self._counted_gap = 0
        # Windows being scored and the summaries/resets queued behind them, in order.
        self._outstanding: deque[PendingWindow | _Summarise | _Reset] = deque()
        self._windows_out = 0
        self._records: dict[str, _CutRecord] = {}  # cuts not summarised yet, by id

    @property
    def state(self) -> Level:
        return self.tracker.state

    @property
    def outstanding_windows(self) -> int:
        """Windows handed out and not yet scored."""
        return self._windows_out

    # ------------------------------------------------------------------------------ inbound

    def handle(
        self, message: InboundMessage, *, channel: str | None = None, mid: int = 0, now: float = 0.0
    ) -> Step:
        """Apply one parsed inbound message. ``channel`` names a chunk's channel (from its topic),
        ``mid`` the MQTT message id, ``now`` the monitor's clock (the time of a reset).

        Raises :class:`ProtocolError` for a message out of sequence (a chunk for a cut that is not
        open, a reused cut id, a wrong sample rate, ...); the pipeline is then unchanged."""
        step = Step()
        if isinstance(message, SignalChunk):
            if channel is None:
                raise ValueError("a signal chunk needs its channel")
            self._chunk(channel, message, mid, step)
        elif isinstance(message, CutStart):
            self._start(message, step)
        elif isinstance(message, CutEnd):
            self._end(message, step)
        elif isinstance(message, Command):
            self._outstanding.append(_Reset(message.by, now))
            self._drain(step)
        else:
            raise TypeError(f"not an inbound message: {type(message).__name__}")
        return step

    def _start(self, msg: CutStart, step: Step) -> None:
        fs = self.spec.fs
        if not math.isclose(msg.fs, fs, rel_tol=1e-9):
            raise ProtocolError(
                f"cut {msg.cut!r} has fs {msg.fs:g} Hz but the model was trained at {fs:g} Hz; "
                "windows at another rate are not comparable"
            )
        result = self.stream.start(msg)
        if result.closed is not None:
            self._close(result.closed, step)
        if not result.opened:
            return
        self._cut = msg
        p = msg.params  # a cut without parameters is scored against the reference of all regimes
        self._regime = regime_key(p.doc, p.feed, p.material) if p is not None else GLOBAL
        self._windower = CutWindower(self.spec.window, self.spec.stable)
        self._record = _CutRecord(msg.cut)
        self._records[msg.cut] = self._record
        self._ids = _ChunkIds()
        self._counted_dup = self._counted_gap = 0
        step.events.append(("cut_start", {"cut": msg.cut}))

    def _chunk(self, channel: str, msg: SignalChunk, mid: int, step: Step) -> None:
        c = channel_index(channel)
        result = self.stream.chunk(channel, msg)
        n = msg.samples.size
        if result.duplicate_samples < n:  # the chunk's new part carries samples windows may use
            self._ids.add(c, msg.offset + result.duplicate_samples, msg.offset + n, mid)
        self._count(step, result.duplicate_samples, result.gap_samples)
        if result.gap_samples:
            step.events.append(
                ("gap", {"cut": msg.cut, "channel": channel, "offset": msg.offset, "samples": result.gap_samples})
            )
        assert self._windower is not None
        self._emit(self._windower.push(result.frames), step)

    def _end(self, msg: CutEnd, step: Step) -> None:
        closed = self.stream.end(msg)
        if closed is not None:  # None: a redelivered end
            self._close(closed, step)

    def _close(self, closed: FinishResult, step: Step) -> None:
        assert self._windower is not None and self._record is not None
        windower, record = self._windower, self._record
        stats = closed.stats
        self._count(
            step,
            stats.total_duplicate_samples - self._counted_dup,
            stats.total_gap_samples - self._counted_gap,
        )
        self._emit(windower.push(closed.frames), step)
        self._emit(windower.finish(), step)
        record.skipped = stats.lost_rows
        record.stable = windower.stable_span
        self._cut, self._windower, self._record, self._ids = None, None, None, _ChunkIds()
        step.events.append(
            (
                "cut_end",
                {
                    "cut": closed.cut,
                    "samples": closed.samples,
                    "windows": record.emitted,
                    "aborted": closed.aborted,
                    "lost_rows": stats.lost_rows,
                    "gap_samples": stats.total_gap_samples,
                    "lagged_samples": sum(stats.lagged_samples.values()),
                    "duplicate_samples": stats.total_duplicate_samples,
                    "extra_samples": sum(stats.extra_samples.values()),
                    "rows_past_end": stats.rows_past_end,
                },
            )
        )
        self._outstanding.append(_Summarise(record))
        self._drain(step)

    def _count(self, step: Step, duplicates: int, gaps: int) -> None:
        step.duplicate_samples += duplicates
        step.gap_samples += gaps
        self._counted_dup += duplicates
        self._counted_gap += gaps

    def _emit(self, windows: Windows, step: Step) -> None:
        assert self._cut is not None and self._record is not None
        cut = self._cut
        length = self.spec.window.length
        for start, data in zip(windows.starts.tolist(), windows.data):
            window = PendingWindow(
                machine=self.machine,
                cut=cut.cut,
                offset=start,
                ts=cut.ts + start / cut.fs,
                regime=self._regime,
                data=data,
                message_ids=self._ids.covering(start, start + length),
            )
            step.windows.append(window)
            self._outstanding.append(window)
            self._windows_out += 1
            self._record.emitted += 1
        self._ids.forget_before(self._first_future_start(step))

    def _first_future_start(self, step: Step) -> int:
        """A lower bound on the start of any window the open cut may still yield.

        Windows come out in increasing order, and one is handed out as soon as the stable-region
        detector has decided its last block; the detector decides every block but the last
        ``half_width`` once it has its ``baseline_blocks`` of air (stable_region.py). So a future
        window ends past the decided blocks."""
        assert self._windower is not None
        bound = step.windows[-1].offset + 1 if step.windows else 0
        block = self.spec.stable.block
        blocks = self._windower.received // block
        if blocks >= self.spec.stable.baseline_blocks:
            decided = max(0, blocks - self.spec.stable.half_width)
            bound = max(bound, decided * block - self.spec.window.length + 1)
        return bound

    # ------------------------------------------------------------------------------ results

    def scored(self, window: PendingWindow, score: WindowScore) -> Step:
        """The score of the oldest window still being scored (windows come back in the order they
        were handed out). The step's outputs are what to publish, in order."""
        head = self._outstanding[0] if self._outstanding else None
        if head is not window:
            raise RuntimeError(
                f"machine {self.machine}: scores must come back in window order "
                f"(got cut {window.cut!r} offset {window.offset})"
            )
        self._outstanding.popleft()
        self._windows_out -= 1
        value = score.value(self.spec.thresholds.score)
        transition = self.tracker.update(value, window.cut, window.offset, window.ts)
        step = Step()
        step.outputs.append(
            Output(
                self.machine,
                ScoreMessage(
                    cut=window.cut,
                    offset=window.offset,
                    recon=score.recon,
                    kl=score.kl,
                    score=value,
                    channels=dict(zip(CHANNELS, score.channels)),
                    level=self.tracker.state.label,
                    model=self.spec.model_id,
                    ts=window.ts,
                ),
            )
        )
        if transition is not None:
            step.outputs.append(self._alarm_output(transition))
            step.alarm_changed = True
        self._records[window.cut].scores.append(value)
        self._drain(step)
        return step

    def _drain(self, step: Step) -> None:
        """Apply summaries and resets that no window is waiting in front of any more."""
        while self._outstanding and not isinstance(self._outstanding[0], PendingWindow):
            item = self._outstanding.popleft()
            if isinstance(item, _Summarise):
                del self._records[item.record.cut]
                step.outputs.append(Output(self.machine, self._summary(item.record)))
            else:
                transition = self.tracker.reset(item.by, item.ts)
                was = transition.old.label if transition else "normal"
                step.events.append(("reset", {"by": item.by, "was": was}))
                if transition is not None:
                    step.outputs.append(self._alarm_output(transition))
                    step.alarm_changed = True

    def _summary(self, record: _CutRecord) -> SummaryMessage:
        scores = np.asarray(record.scores, dtype=np.float64)
        finite = scores[np.isfinite(scores)]
        return SummaryMessage(
            cut=record.cut,
            windows=record.emitted,
            skipped=record.skipped,
            stable=record.stable,
            score_median=float(np.median(finite)) if finite.size else None,
            score_max=float(finite.max()) if finite.size else None,
            level=self.tracker.state.label,
        )

    def _alarm_output(self, t: Transition) -> Output:
        return Output(
            self.machine,
            AlarmMessage(
                machine=self.machine,
                state=t.new.label,
                since=t.since,
                cut=t.cut,
                score=t.score,
                threshold=t.threshold,
                model=self.spec.model_id,
            ),
        )
