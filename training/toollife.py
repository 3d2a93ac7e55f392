"""Tool-life evaluation: how the monitor's alarms behave over each tool's life, as an operator sees it.

Each case of the archive is one tool. Its cuts are replayed in run order through the daemon's own
code: a :class:`~edge_monitor.core.pipeline.MachinePipeline` per tool (a new tool starts from a
normal state, as after a ``reset``), fed the cut's start, its six channels in chunks and its end,
with every window scored by the bundle's one scoring call. So the windows, the alarm state machine
and the decision rule are the daemon's, not a re-implementation, and the first warning and first
alarm found here are the ones the daemon would raise replaying the same cuts.

Per tool: the first warning and the first alarm (cut, VB, class) against the first degraded and the
first failed cut, warnings and alarms shown on healthy cuts, a missed failure, and the lead (or lag)
of the alarm in cuts. :func:`tool_totals` sums them over tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edge_monitor.archive.mill import Cut
from edge_monitor.archive.replay import DEFAULT_CHUNK, chunk_bounds, cut_params
from edge_monitor.core.alarm import AlarmPolicy, AlarmTracker, Level, Thresholds
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.inbound import CutEnd, CutStart, SignalChunk
from edge_monitor.core.outbound import AlarmMessage, SummaryMessage
from edge_monitor.core.pipeline import MachinePipeline
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.steps import PipelineSpec, Step, WindowBatch

from .wear import CLASS_NAMES, DEGRADED, FAILED, HEALTHY

LEVELS = ("normal", "warning", "alarm")
#: An alarm this many cuts after the first failed cut still counts as caught in time.
IN_TIME_CUTS = 1


@dataclass
class ToolLife:
    """One tool's cuts in run order, with what the monitor showed at the end of each."""

    case: int
    cuts: list[str]
    runs: list[int]
    vb: list[float]  # mm, unmeasured runs interpolated (nan: unknown)
    classes: list[int]  # 0 healthy, 1 degraded, 2 failed, -1 unknown
    levels: list[str] = field(default_factory=list)  # the machine's state at each cut's end
    medians: list[float | None] = field(default_factory=list)  # median alarm score of each cut's windows
    windows: list[int] = field(default_factory=list)
    first_warning: int | None = None  # index of the cut during which the state first left normal
    first_alarm: int | None = None  # ... first reached alarm
    judged: list[float | None] = field(default_factory=list)  # what the alarm rule judged each cut by

    def _first(self, cls: int) -> int | None:
        return next((i for i, c in enumerate(self.classes) if c >= cls), None)

    @property
    def first_degraded(self) -> int | None:
        return self._first(DEGRADED)

    @property
    def first_failed(self) -> int | None:
        return self._first(FAILED)

    def shown_on_healthy(self, level: str) -> int:
        """Healthy cuts at whose end the machine showed ``level`` or higher."""
        rank = LEVELS.index(level)
        return sum(1 for c, s in zip(self.classes, self.levels) if c == HEALTHY and LEVELS.index(s) >= rank)

    @property
    def alarm_lead(self) -> int | None:
        """Cuts from the first alarm to the first failed cut: positive is early, negative late."""
        if self.first_alarm is None or self.first_failed is None:
            return None
        return self.first_failed - self.first_alarm

    @property
    def warning_lead(self) -> int | None:
        if self.first_warning is None or self.first_degraded is None:
            return None
        return self.first_degraded - self.first_warning

    @property
    def caught(self) -> bool:
        """A failing tool alarmed by :data:`IN_TIME_CUTS` cuts after its first failed cut."""
        lead = self.alarm_lead
        return lead is not None and lead >= -IN_TIME_CUTS

    def _cut(self, i: int | None) -> dict | None:
        if i is None:
            return None
        vb = self.vb[i]
        return {"cut": self.cuts[i], "run": self.runs[i], "vb": None if np.isnan(vb) else float(vb),
                "class": CLASS_NAMES[self.classes[i]] if self.classes[i] >= 0 else "unknown"}

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "cuts": len(self.cuts),
            "first_warning": self._cut(self.first_warning),
            "first_alarm": self._cut(self.first_alarm),
            "first_degraded": self._cut(self.first_degraded),
            "first_failed": self._cut(self.first_failed),
            "warning_lead_cuts": self.warning_lead,
            "alarm_lead_cuts": self.alarm_lead,
            "healthy_cuts": sum(1 for c in self.classes if c == HEALTHY),
            "healthy_cuts_with_warning": self.shown_on_healthy("warning"),
            "healthy_cuts_with_alarm": self.shown_on_healthy("alarm"),
            "missed_failure": self.first_failed is not None and self.first_alarm is None,
            "caught_in_time": self.caught,
            "levels": dict(zip(self.cuts, self.levels)),
        }


def replay_tool(
    spec: PipelineSpec,
    case: int,
    cuts: Sequence[Cut],
    vb: Sequence[float],
    classes: Sequence[int],
    score: Callable[[WindowBatch], WindowScores],
    chunk: int = DEFAULT_CHUNK,
) -> ToolLife:
    """Replay one tool's ``cuts`` (in run order) through a fresh machine pipeline; ``score`` is the
    bundle's scoring call for a batch of windows."""
    life = ToolLife(case, [c.cut_id for c in cuts], [c.run for c in cuts], [float(v) for v in vb],
                    [int(k) for k in classes])
    pipe = MachinePipeline(f"case-{case:02d}", spec)
    ts = 0.0
    for i, cut in enumerate(cuts):
        steps = [pipe.handle(CutStart(cut.cut_id, ts, SAMPLE_RATE_HZ, cut_params(cut)))]
        for first, last in chunk_bounds(cut.n_samples, chunk):  # channels interleaved, as machines send
            for c, channel in enumerate(CHANNELS):
                steps.append(pipe.handle(SignalChunk(cut.cut_id, first, cut.signals[first:last, c]), channel=channel))
        steps.append(pipe.handle(CutEnd(cut.cut_id, ts + cut.n_samples / SAMPLE_RATE_HZ, cut.n_samples)))
        ts += cut.n_samples / SAMPLE_RATE_HZ
        batches = [batch for step in steps for batch in step.windows]
        if batches:  # one scoring call per cut, handed back batch by batch as the daemon does
            scores = score(WindowBatch(
                pipe.machine, cut.cut_id, batches[0].regime, np.concatenate([b.offsets for b in batches]),
                np.concatenate([b.ts for b in batches]), np.concatenate([b.data for b in batches]),
            ))
            at = 0
            for batch in batches:
                steps.append(pipe.scored(batch, scores.subset(slice(at, at + len(batch)))))
                at += len(batch)
        _record(life, i, steps)
    return life


def _record(life: ToolLife, i: int, steps: list[Step]) -> None:
    summary = None
    for step in steps:
        for out in step.outputs:
            m = out.message
            if isinstance(m, AlarmMessage) and m.state != "normal":
                if life.first_warning is None:
                    life.first_warning = i
                if m.state == "alarm" and life.first_alarm is None:
                    life.first_alarm = i
            elif isinstance(m, SummaryMessage):
                summary = m
    if summary is None:  # every cut ends with its summary once its windows are scored
        raise RuntimeError(f"cut {life.cuts[i]} of case {life.case} produced no summary")
    life.levels.append(summary.level)
    life.medians.append(summary.score_median)
    life.judged.append(summary.judged)
    life.windows.append(summary.windows)


def tool_totals(tools: Sequence[ToolLife]) -> dict:
    """What an operator would count over all tools."""
    failing = [t for t in tools if t.first_failed is not None]
    never_failed = [t for t in tools if t.first_failed is None]
    leads = [t.alarm_lead for t in failing if t.alarm_lead is not None]
    return {
        "tools": len(tools),
        "failing_tools": len(failing),
        "failing_caught_in_time": sum(t.caught for t in failing),
        "failing_alarmed_late": sum(1 for t in failing if t.first_alarm is not None and not t.caught),
        "failing_missed": sum(1 for t in failing if t.first_alarm is None),
        "tools_alarmed_on_a_healthy_cut": sum(1 for t in tools if t.shown_on_healthy("alarm")),
        "tools_warned_on_a_healthy_cut": sum(1 for t in tools if t.shown_on_healthy("warning")),
        "never_failed_tools_alarmed": sum(1 for t in never_failed if t.first_alarm is not None),
        "alarm_lead_cuts_median": float(np.median(leads)) if leads else None,
        "in_time_cuts": IN_TIME_CUTS,
    }


def format_tool_table(tools: Sequence[ToolLife], totals: dict) -> str:
    """The tool-life table of the evaluation summary: one line per tool, then the totals."""
    def at(t: ToolLife, i: int | None) -> str:
        return "-" if i is None else f"r{t.runs[i]:02d}"

    def lead(x: int | None) -> str:
        return "-" if x is None else f"{x:+d}"

    lines = [f"{'case':>4} {'cuts':>4} {'1st degr':>8} {'1st warn':>8} {'lead':>5} {'1st fail':>8} "
             f"{'1st alarm':>9} {'lead':>5} {'healthy cuts warned/alarmed':>28}"]
    for t in tools:
        healthy = sum(1 for c in t.classes if c == HEALTHY)
        lines.append(
            f"{t.case:>4} {len(t.cuts):>4} {at(t, t.first_degraded):>8} {at(t, t.first_warning):>8} "
            f"{lead(t.warning_lead):>5} {at(t, t.first_failed):>8} {at(t, t.first_alarm):>9} "
            f"{lead(t.alarm_lead):>5} {t.shown_on_healthy('warning'):>14}/{t.shown_on_healthy('alarm')} of {healthy}"
        )
    n = totals
    lines += [
        "",
        f"failing tools {n['failing_tools']} of {n['tools']}: caught in time (by {n['in_time_cuts']} cut after the "
        f"first failed cut) {n['failing_caught_in_time']}, late {n['failing_alarmed_late']}, "
        f"missed {n['failing_missed']}; median lead {n['alarm_lead_cuts_median']} cuts",
        f"tools alarmed on a healthy cut {n['tools_alarmed_on_a_healthy_cut']}, warned on a healthy cut "
        f"{n['tools_warned_on_a_healthy_cut']}; tools that never failed but alarmed {n['never_failed_tools_alarmed']}",
    ]
    return "\n".join(lines)


def replay_tools(archive, cut_vb: np.ndarray, cut_class: np.ndarray, spec: PipelineSpec,
                 score: Callable[[WindowBatch], WindowScores], cases: Sequence[int] | None = None) -> list[ToolLife]:
    """Every case of ``archive`` (or only ``cases``) as one tool (see :func:`replay_tool`);
    ``cut_vb`` and ``cut_class`` are indexed like ``archive.cuts`` (``dataset.WindowSet``)."""
    position = {id(c): i for i, c in enumerate(archive.cuts)}
    tools = []
    for case, cuts in sorted(archive.by_case().items()):
        if cases is not None and case not in cases:
            continue
        at = [position[id(c)] for c in cuts]
        tools.append(replay_tool(spec, case, cuts, cut_vb[at], cut_class[at], score))
    return tools


def decide_on_cut_medians(case: int, cut_ids: Sequence[str], runs: Sequence[int], vb: Sequence[float],
                          classes: Sequence[int], medians: Sequence[float], windows: Sequence[int],
                          regimes: Sequence[str], policy: AlarmPolicy, thresholds: Thresholds) -> ToolLife:
    """A tool's cuts decided by the daemon's alarm tracker from their median scores alone: what
    ``fit`` reports for the held-out cuts it chose the thresholds on (no signals replayed). The
    decision is the tracker's own (:meth:`AlarmTracker.cut_ended`), as the pipeline feeds it."""
    life = ToolLife(case, list(cut_ids), list(runs), [float(v) for v in vb], [int(c) for c in classes])
    tracker = AlarmTracker(policy, thresholds)
    for i, (cut, median, n, regime) in enumerate(zip(cut_ids, medians, windows, regimes)):
        transition = tracker.cut_ended(float(median), int(n), cut, float(i), str(regime))
        if transition is not None and transition.raised:
            if life.first_warning is None:
                life.first_warning = i
            if transition.new == Level.ALARM and life.first_alarm is None:
                life.first_alarm = i
        life.levels.append(tracker.state.label)
        life.medians.append(float(median))
        life.judged.append(tracker.judged)
        life.windows.append(int(n))
    return life
