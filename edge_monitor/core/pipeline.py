"""One machine's streaming pipeline: protocol messages in, windows to score and results out.

The functional core of the daemon for one machine, with no MQTT, no model and no clock:

    CutStart / SignalChunk or SignalFrame / CutEnd / Command
        → frames.MachineStream (aligns the six channels, duplicates, gaps)
        → windowing.CutWindower (the bundle's window and stable-region specs: the windows training
          cuts from the same signals)
        → :class:`WindowBatch` (the windows one message completed, as arrays)

and, once the caller has scored them, :meth:`MachinePipeline.scored` returns what to publish: each
window's score and, once all of a cut's windows are scored, the cut's median score goes to the
alarm.AlarmTracker (the decision is per cut) and the cut's summary and any alarm transition go out.

Order is kept per machine: the caller scores windows in the order :meth:`MachinePipeline.handle`
returned them (a batch may come back in parts), and a cut's summary or a ``reset`` that arrives
while windows are still being scored takes effect after those windows (a reset must not count the
old tool's last windows against the new tool).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from . import snapshot as snap
from .alarm import AlarmTracker, Level, Transition
from .calibration import GLOBAL, regime_key
from .channels import CHANNELS
from .fault import SensorFault
from .frames import AddResult, FinishResult, MachineStream
from .inbound import (
    Command,
    CutEnd,
    CutStart,
    InboundMessage,
    SignalChunk,
    SignalFrame,
    parse_cut_event,
)
from .outbound import (
    SENSOR_FAULT,
    AlarmMessage,
    ScoreMessage,
    SummaryMessage,
)
from .scores import WindowScores
from .snapshot import SnapshotError
from .steps import Event, Output, PipelineSpec, Step, WindowBatch
from .topics import ProtocolError
from .windowing import CutWindower, Windows

REMEMBER_COMMANDS = 64  # command ids kept per machine to refuse a repeat


@dataclass
class _CutRecord:
    """A cut's windows on their way through scoring, until its summary."""

    cut: str
    regime: str  # the cut's operating regime: which of the tool's references judges it
    emitted: int = 0  # windows handed out for scoring
    scores: list[float] = field(default_factory=list)
    skipped: int = 0
    stable: tuple[int, int] | None = None
    end_ts: float = 0.0  # when the cut's last sample was taken


@dataclass(frozen=True)
class _Summarise:
    record: _CutRecord


@dataclass(frozen=True)
class _Reset:
    by: str
    ts: float


class MachinePipeline:
    """The pipeline of one machine; see the module docstring."""

    def __init__(self, machine: str, spec: PipelineSpec, tracker: AlarmTracker | None = None) -> None:
        self.machine = machine
        self.spec = spec
        self.tracker = tracker or AlarmTracker(spec.policy, spec.thresholds)
        self.stream = MachineStream(spec.limits)
        self._cut: CutStart | None = None  # the open cut as this pipeline windows it
        self._regime = ""
        self._windower: CutWindower | None = None
        self._record: _CutRecord | None = None
        self._counted_dup = 0  # of the open cut, already reported by add results
        self._counted_gap = 0
        # Windows being scored and the summaries/resets queued behind them, in order.
        self._outstanding: deque[WindowBatch | _Summarise | _Reset] = deque()
        self._windows_out = 0
        self._records: dict[str, _CutRecord] = {}  # cuts not summarised yet, by id
        self._commands: deque[str] = deque(maxlen=REMEMBER_COMMANDS)  # ids of the commands applied
        self.last_input = 0.0  # the caller's clock at the last input (not checkpointed: a restart restarts it)
        self.fault = SensorFault()  # the windows keep scoring non-finite
        self._last_reset: float | None = None  # when (the caller's clock)

    @property
    def state(self) -> Level:
        return self.tracker.state

    @property
    def level(self) -> str:
        """What SCADA sees: the wear state, or sensor_fault."""
        return SENSOR_FAULT if self.fault.shown else self.tracker.state.label

    @property
    def outstanding_windows(self) -> int:
        """Windows handed out and not yet scored."""
        return self._windows_out

    # ------------------------------------------------------------------------------ inbound

    def handle(self, message: InboundMessage, *, channel: str | None = None, now: float = 0.0) -> Step:
        """Apply one parsed inbound message. ``channel`` names a chunk's channel (from its topic),
        ``now`` the monitor's clock (the time of a reset).

        Raises :class:`ProtocolError` for a message out of sequence (a chunk for a cut that is not
        open, a reused cut id, a wrong sample rate, ...); the pipeline is then unchanged."""
        step = Step()
        self.last_input = now
        if isinstance(message, SignalChunk):
            if channel is None:
                raise ValueError("a signal chunk needs its channel")
            self._signal(self.stream.chunk(channel, message), message, channel, step)
        elif isinstance(message, SignalFrame):
            self._signal(self.stream.frame(message), message, "all", step)
        elif isinstance(message, CutStart):
            self._start(message, step)
        elif isinstance(message, CutEnd):
            self._end(message, step)
        elif isinstance(message, Command):
            self._command(message, now, step)
        else:
            raise TypeError(f"not an inbound message: {type(message).__name__}")
        return step

    def abort(self, reason: str) -> Step:
        """Close the open cut now as aborted (its end never came), with its summary."""
        step = Step()
        closed = self.stream.abort()
        if closed is not None:
            step.events.append(Event("cut_timeout", {"cut": closed.cut, "reason": reason}, "warning"))
            self._close(closed, step)
        return step

    @property
    def idle(self) -> bool:
        """No cut open, nothing being scored and no sensor fault shown: the pipeline may leave
        memory (its tracker stays; a fault must be cleared by its own windows)."""
        return not self.stream.is_open and not self._outstanding and not self.fault.shown

    def _command(self, msg: Command, now: float, step: Step) -> None:
        if msg.id is not None and msg.id in self._commands:
            step.events.append(Event("command_repeated", {"id": msg.id, "by": msg.by}))
            return  # applied already (a redelivery, or the sender trying again)
        wait = self.spec.limits.min_reset_interval_s
        if self._last_reset is not None and 0 <= now - self._last_reset < wait:
            raise ProtocolError(f"reset refused: the last one was {now - self._last_reset:.2f} s ago, at most one "
                                f"per {wait:g} s (limits.min_reset_interval_s)")
        self._last_reset = now
        if msg.id is not None:
            self._commands.append(msg.id)
        self._outstanding.append(_Reset(msg.by, now))
        self._drain(step)

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
        self._start_cut(msg)
        step.events.append(Event("cut_start", {"cut": msg.cut}))

    def _start_cut(self, msg: CutStart) -> None:
        self._cut = msg
        p = msg.params  # a cut without parameters is scored against the reference of all regimes
        self._regime = regime_key(p.doc, p.feed, p.material) if p is not None else GLOBAL
        self._windower = CutWindower(self.spec.window, self.spec.stable)
        self._record = _CutRecord(msg.cut, self._regime)
        self._records[msg.cut] = self._record
        self._counted_dup = self._counted_gap = 0

    def _signal(self, result: AddResult, msg: SignalChunk | SignalFrame, channel: str, step: Step) -> None:
        """What a chunk (or a frame: ``channel`` "all") added to the open cut, on to the windows."""
        self._count(step, result.duplicate_samples, result.gap_samples)
        if result.gap_samples:
            fields = {"cut": msg.cut, "channel": channel, "offset": msg.offset, "samples": result.gap_samples}
            step.events.append(Event("gap", fields, "warning"))
        assert self._windower is not None
        self._emit(self._windower.feed(result.parts), step)

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
        last = [windower.feed(closed.parts), windower.finish()]
        self._emit(Windows.concat(last, self.spec.window.length, len(CHANNELS)), step)
        record.skipped = stats.lost_rows
        record.stable = windower.stable_span
        assert self._cut is not None
        record.end_ts = self._cut.ts + closed.samples / self._cut.fs
        self._cut, self._windower, self._record = None, None, None
        fields = {
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
        }
        step.events.append(Event("cut_end", fields, "warning" if closed.aborted else "info"))
        self._outstanding.append(_Summarise(record))
        self._drain(step)

    def _count(self, step: Step, duplicates: int, gaps: int) -> None:
        step.duplicate_samples += duplicates
        step.gap_samples += gaps
        self._counted_dup += duplicates
        self._counted_gap += gaps

    def _emit(self, windows: Windows, step: Step) -> None:
        if not len(windows):
            return
        assert self._cut is not None and self._record is not None
        cut = self._cut
        batch = WindowBatch(
            machine=self.machine,
            cut=cut.cut,
            regime=self._regime,
            offsets=windows.starts,
            ts=cut.ts + windows.starts / cut.fs,
            data=windows.data,
        )
        step.windows.append(batch)
        self._outstanding.append(batch)
        self._windows_out += len(batch)
        self._record.emitted += len(batch)

    # ------------------------------------------------------------------------------ checkpoints

    def to_state(self) -> dict:
        """What this pipeline needs to resume after a restart: the open cut with its aligned
        samples, stable-region detector, partial windows and the scores of its windows so far.
        Only between steps with nothing being scored (the caller scores everything first), so that
        a checkpoint never holds a window without its score. The alarm tracker is kept apart
        (``tracker.to_dict``)."""
        if self._outstanding:
            raise RuntimeError(f"machine {self.machine}: windows are being scored; checkpoint after their scores")
        record = self._record
        return {
            "stream": self.stream.to_state(),
            "windower": None if self._windower is None else self._windower.to_state(),
            "emitted": 0 if record is None else record.emitted,
            "scores": np.asarray([] if record is None else record.scores, dtype=np.float64),
            "counted": [self._counted_dup, self._counted_gap],
            "commands": list(self._commands),
            "last_reset": self._last_reset,
        }

    def restore(self, state: object) -> None:
        """Resume from :meth:`to_state` (a fresh pipeline only); :class:`~.snapshot.SnapshotError`
        naming the field when the snapshot does not fit this pipeline's spec. On an error the
        pipeline is left as it was."""
        if self._outstanding or self._cut is not None or self.stream.is_open:
            raise RuntimeError(f"machine {self.machine}: restore a fresh pipeline only")
        where = f"machine {self.machine}"
        stream_state = snap.section(state, "stream", where)
        current_dict = snap.mapping(stream_state, where + ".stream").get("current")
        current = None
        if current_dict is not None:
            try:
                current = parse_cut_event(json.dumps(current_dict).encode(), self.spec.limits)
            except (ProtocolError, TypeError, ValueError) as exc:
                raise SnapshotError(f"{where}.stream.current: not a cut start ({exc})") from None
            if not isinstance(current, CutStart) or not math.isclose(current.fs, self.spec.fs, rel_tol=1e-9):
                raise SnapshotError(f"{where}.stream.current: not a cut start at {self.spec.fs:g} Hz")
        windower = None
        if current is not None:
            windower = CutWindower.from_state(self.spec.window, self.spec.stable,
                                              snap.section(state, "windower", where), where + ".windower")
        emitted = snap.integer(state, "emitted", where)
        scores = snap.array(state, "scores", where, np.float64, 1)
        counted = snap.mapping(state, where).get("counted")
        if not isinstance(counted, list) or len(counted) != 2 or any(type(x) is not int or x < 0 for x in counted):
            raise SnapshotError(f"{where}.counted: expected [duplicates, gaps]")
        if scores.size != emitted:
            raise SnapshotError(f"{where}: {scores.size} scores for {emitted} windows")
        commands = snap.texts(state, "commands", where)
        last_reset = snap.mapping(state, where).get("last_reset")
        if last_reset is not None:
            last_reset = snap.number(state, "last_reset", where)
        fresh = MachineStream(self.spec.limits)
        fresh.restore(stream_state, current, where + ".stream")
        if windower is not None and windower.finished:
            raise SnapshotError(f"{where}.windower.detector: finished, but the cut is open")
        if windower is not None and fresh.assembler is not None and windower.pushed != fresh.assembler.emitted:
            raise SnapshotError(f"{where}: the windower has {windower.pushed} samples, the frames {fresh.assembler.emitted}")
        self._commands.extend(commands[-REMEMBER_COMMANDS:])
        self._last_reset = last_reset
        self.stream = fresh
        if current is None:
            return
        self._start_cut(current)
        self._windower = windower
        assert self._record is not None
        self._record.emitted = emitted
        self._record.scores = scores.tolist()
        self._counted_dup, self._counted_gap = counted

    # ------------------------------------------------------------------------------ a new model

    def switch_model(self, spec: PipelineSpec) -> None:
        """Another model scores this machine from the next window on (a reload): its thresholds,
        model id and the reloaded alarm policy; the alarm state carries over
        (:func:`~.alarm.carried_over`). The caller scores every outstanding window with the old
        model first. The open cut, windowed the same way (the caller checks that the specs that
        cut windows are unchanged), is judged on the windows the new model scores: scores of two
        models do not make one median."""
        if self._windows_out:
            raise RuntimeError(f"machine {self.machine}: score the outstanding windows before switching models")
        if (spec.window, spec.stable, spec.fs) != (self.spec.window, self.spec.stable, self.spec.fs):
            raise ValueError(f"machine {self.machine}: a new model must window cuts as the old one does")
        same_scores = bool(spec.scoring_id) and spec.scoring_id == self.spec.scoring_id
        self.spec = spec
        self.tracker = self.tracker.for_model(spec.policy, spec.thresholds, same_scores)
        if not same_scores:
            self.forget_scores()

    def forget_scores(self) -> None:
        """Drop the scores of the cuts not summarised yet (another model's: see :meth:`switch_model`);
        their windows keep counting, their medians come from the windows scored from now on."""
        for record in self._records.values():
            record.scores.clear()

    # ------------------------------------------------------------------------------ results

    def scored(self, batch: WindowBatch, scores: WindowScores) -> Step:
        """The calibrated scores of the oldest windows still being scored (all of a batch handed
        out by :meth:`handle`, or its first part). The step's outputs are what to publish, in order."""
        values = scores.score(self.spec.thresholds.score)
        if values.size != len(batch):
            raise ValueError(f"machine {self.machine}: {values.size} scores for {len(batch)} windows")
        self._take_outstanding(batch)
        recon, kl, channels = scores.recon.tolist(), scores.kl.tolist(), scores.channels.tolist()
        step = Step()
        finite = np.isfinite(values)
        calm = finite.all() and self.fault.quiet  # the usual case: no fault to follow
        level = self.level  # the wear state is decided per cut: the same for all of a cut's windows
        for i, (value, offset, ts, r, k, c) in enumerate(zip(values.tolist(), batch.offsets.tolist(),
                                                             batch.ts.tolist(), recon, kl, channels)):
            if not calm:
                level = self._follow_fault(bool(finite[i]), batch.cut, offset, ts, step)
            message = ScoreMessage(
                cut=batch.cut, offset=offset, recon=r, kl=k, score=value, channels=dict(zip(CHANNELS, c)),
                level=level, model=self.spec.model_id, ts=ts,
            )
            step.outputs.append(Output(self.machine, message))
        self._records[batch.cut].scores.extend(values.tolist())
        self._drain(step)
        return step

    def shown_alarm(self) -> AlarmMessage:
        """The alarm message for what the machine's level is now (the retained topic's content)."""
        t = self.tracker
        if self.fault.shown:
            return AlarmMessage(self.machine, SENSOR_FAULT, self.fault.since, self.fault.cut, None, None,
                                self.spec.model_id, wear=t.state.label)
        return AlarmMessage(self.machine, t.state.label, t.since, t.cut, t.score, t.threshold, self.spec.model_id)

    def _follow_fault(self, finite: bool, cut: str, offset: int, ts: float, step: Step) -> str:
        """One window's score on the way to or from sensor_fault; the level to show with it."""
        if not finite:
            step.nonfinite_scores += 1
            step.faults.append(f"cut {cut!r} window at offset {offset} scored non-finite: a sensor value out of "
                               "range? (the window cannot count towards the alarm)")
        if self.fault.follow(finite, cut, ts):
            # sensor_fault with the wear state underneath (for a monitor that restarts from this
            # message), or back to the wear state as it stands
            step.outputs.append(Output(self.machine, self.shown_alarm()))
            step.events.append(Event("sensor_fault" if self.fault.shown else "sensor_fault_cleared",
                                     {"cut": cut, "offset": offset}, "warning"))
            step.alarm_changed = True
        return self.level

    def _take_outstanding(self, batch: WindowBatch) -> None:
        head = self._outstanding[0] if self._outstanding else None
        n = len(batch)
        if (
            not isinstance(head, WindowBatch)
            or head.cut != batch.cut
            or n > len(head)
            or not np.array_equal(head.offsets[:n], batch.offsets)
        ):
            raise RuntimeError(
                f"machine {self.machine}: scores must come back in window order "
                f"(got cut {batch.cut!r} offsets from {batch.offsets[:1].tolist()})"
            )
        if n == len(head):
            self._outstanding.popleft()
        else:
            self._outstanding[0] = head.split(n)[1]
        self._windows_out -= n

    def _drain(self, step: Step) -> None:
        """Apply summaries and resets that no window is waiting in front of any more."""
        while self._outstanding and not isinstance(self._outstanding[0], WindowBatch):
            item = self._outstanding.popleft()
            if isinstance(item, _Summarise):
                record = item.record
                del self._records[record.cut]
                median, highest, n = _cut_figures(record.scores)
                transition = self.tracker.cut_ended(median, n, record.cut, record.end_ts, record.regime)
                if transition is not None:
                    self._announce(transition, step)
                summary = self._summary(record, median, highest)
                step.outputs.append(Output(self.machine, summary))
                fields = summary.to_dict()
                fields["state"] = fields.pop("level")  # "level" is the log record's own key
                step.events.append(Event("summary", fields))
            else:
                transition = self.tracker.reset(item.by, item.ts)
                was = transition.old.label if transition else "normal"
                step.events.append(Event("reset", {"by": item.by, "was": was}))
                # Announced even when already normal: the retained alarm may show a state this
                # monitor does not have (a state file lost or unusable), and a reset must clear it.
                t = self.tracker
                self._announce(transition or Transition(Level.NORMAL, Level.NORMAL, t.since, None, None, None,
                                                        item.by), step)

    def _summary(self, record: _CutRecord, median: float | None, highest: float | None) -> SummaryMessage:
        return SummaryMessage(
            cut=record.cut,
            windows=record.emitted,
            skipped=record.skipped,
            stable=record.stable,
            score_median=median,
            score_max=highest,
            level=self.level,  # after the cut's decision
            judged=self.tracker.judged,
            ended=record.end_ts,
        )

    def _announce(self, t: Transition, step: Step) -> None:
        alarm = AlarmMessage(
            machine=self.machine, state=t.new.label, since=t.since, cut=t.cut, score=t.score,
            threshold=t.threshold, model=self.spec.model_id,
        )
        if not self.fault.shown:  # in a sensor fault the alarm topic keeps showing it; the state follows it
            step.outputs.append(Output(self.machine, alarm))
        step.events.append(Event("alarm", {"state": alarm.state, "cut": alarm.cut, "score": alarm.score,
                                           "threshold": alarm.threshold}, "warning"))
        step.alarm_changed = True


def _cut_figures(scores: list[float]) -> tuple[float | None, float | None, int]:
    """The median and the highest of a cut's finite window scores, and how many there are (the
    median and the count are the cut's evidence for the alarm rule)."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return None, None, 0
    return float(np.median(finite)), float(finite.max()), int(finite.size)
