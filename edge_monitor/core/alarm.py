"""The alarm state of one machine: normal < warning < alarm, decided over a tool's life, cut by cut.

Tool wear grows over cuts, not within a second: a decision on a burst of windows alarms on a fresh
tool's odd cut and then, latched, shows ALARM for the tool's whole life. So the evidence is one
figure per cut (:class:`CutEvidence`): the median alarm score of the cut's stable windows (robust
to a few outlier windows; a cut with fewer than ``min_windows`` scored windows, a few seconds of
steady cutting, is no evidence either way), divided by the tool's own reference. After a ``reset``
(a tool change) the monitor knows the tool is new: its first ``reference_cuts`` cuts with evidence
in each operating regime are its reference, and every later cut in that regime is judged by how
many times the reference its median is. Tools differ (insert runout, clamping, the workpiece), and
a fresh tool that happens to score high on every cut is not wearing; its growth is. The reference
cuts decide nothing. ``reference_cuts: 0`` judges the calibrated median itself.

After each judged cut, the state becomes the highest level whose threshold the last
``persist_cuts`` judged cuts all exceeded (strictly), if that is above the current state: one odd
cut raises nothing, a tool that has crossed a threshold is reported ``persist_cuts - 1`` cuts
later. The window scores still go out one by one for dashboards; only the decision waits for the
cut's end.

Wear does not heal, so by default the state only drops on :meth:`AlarmTracker.reset` (the tool was
changed). With ``auto_clear`` it also drops, one level at a time, after ``clear_cuts`` consecutive
judged cuts below the current level's threshold less ``clear_margin`` of it (hysteresis: cuts
hovering at the threshold neither raise nor clear). Each drop, like a reset, forgets the cut
history, so raising again needs ``persist_cuts`` fresh cuts above a threshold; only a reset
forgets the reference. A reference taken while the state is raised (a worn tool restored without
its reference, or its first cut in another regime) understates the wear: such a tool never
auto-clears until it is reset.

:meth:`AlarmTracker.to_dict` / :meth:`AlarmTracker.from_dict` carry the state over a restart;
restoring is not a transition, so nothing is announced again. The retained alarm message itself is a
valid snapshot (its extra keys are ignored; without a reference, the next cut becomes one).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .scores import SCORE_NAMES  # the scores a bundle can alarm on
from .spec import Spec, setting


class Level(IntEnum):
    NORMAL = 0
    WARNING = 1
    ALARM = 2

    @property
    def label(self) -> str:
        """The wire name: ``normal``, ``warning`` or ``alarm``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: Any) -> "Level":
        if isinstance(text, str) and text.upper() in cls.__members__ and text == text.lower():
            return cls[text.upper()]
        raise ValueError(f"alarm state must be one of normal, warning, alarm, got {text!r}")


@dataclass(frozen=True)
class Thresholds(Spec):
    """The bundle's alarm thresholds on one score: exceeding ``warning`` means a degraded tool,
    ``alarm`` a failed one. ``rule`` records how training chose them. Stored in ``bundle.json``.
    Numpy scalars become plain floats (JSON and the bundle's content hash)."""

    section = "thresholds"
    warning: float
    alarm: float
    score: str = setting("kl", choices=SCORE_NAMES)  # which score the monitor alarms on
    rule: str = ""
    # The operating point, when training chose one by a stated rule: the rule (its largest shares of
    # healthy tool lives alarmed and warned) and what each level achieved on held-out tools. The
    # monitor shows it in its start line and status. Bundles from before it have none.
    operating: dict | None = setting(None, parse=lambda value, _: _operating(value))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warning > self.alarm:
            raise self.error("warning", f"must not exceed thresholds.alarm ({self.alarm}), got {self.warning}")

    @property
    def levels(self) -> int:
        """2 with a warning below the alarm, 1 when they coincide (the archive did not separate them)."""
        return 1 if self.warning == self.alarm else 2

    def to_dict(self) -> dict:
        data = super().to_dict()
        if data["operating"] is None:
            del data["operating"]  # as bundles before it wrote it: their model ids stay
        return data

    def operating_point(self) -> dict:
        """What the status message shows (docs/protocol.md): the score, the levels' thresholds and,
        when training chose them by a stated rule, the rule and what each level achieved held out."""
        return {"score": self.score, "warning": self.warning, "alarm": self.alarm, "levels": self.levels,
                **({"chosen": self.operating} if self.operating else {})}

    def describe(self) -> str:
        """One line for the start line and ``check``: the levels, and the stated rule if any."""
        levels = (f"one level: alarm > {self.alarm:.4g}" if self.levels == 1 else
                  f"warning > {self.warning:.4g}, alarm > {self.alarm:.4g}")
        text = f"{self.score} {levels}"
        rule = (self.operating or {}).get("rule")
        if rule:
            text += (f" (chosen for at most {rule['max_false_alarms']:.0%} of healthy tool lives alarmed, "
                     f"{rule['max_false_warnings']:.0%} warned)")
        return text

    def of(self, level: Level) -> float:
        if level == Level.NORMAL:
            raise ValueError("the normal state has no threshold")
        return self.alarm if level == Level.ALARM else self.warning

    @classmethod
    def from_dict(cls, data: Any, *, required: bool = True, context: Any = None) -> Thresholds:
        """From :meth:`to_dict`'s output; every key is required (a bundle states all four) but
        ``operating``, which bundles before it do not have."""
        if isinstance(data, Mapping) and "operating" not in data:
            data = {**data, "operating": None}
        return super().from_dict(data, required=required, context=context)


def _operating(value: Any) -> dict | None:
    """An operating point as training writes it: its rule's two shares, and what each level achieved."""
    if value is None:
        return None
    rule = value.get("rule") if isinstance(value, Mapping) else None
    if not (isinstance(rule, Mapping) and all(
            isinstance(rule.get(k), (int, float)) and not isinstance(rule.get(k), bool) and 0 <= rule[k] < 1
            for k in ("max_false_alarms", "max_false_warnings"))):
        raise ValueError("must hold 'rule' with max_false_alarms and max_false_warnings, shares from 0 to below 1")
    return dict(value)


@dataclass(frozen=True)
class AlarmPolicy(Spec):
    section = "alarm"
    # Settings of the rule that decided on windows, with what replaces them (an upgraded config.yaml).
    retired: ClassVar[dict[str, str]] = {
        "k": "alarms are decided per cut now; use persist_cuts (consecutive cuts above a threshold)",
        "n": "alarms are decided per cut now; use persist_cuts (consecutive cuts above a threshold)",
        "clear_windows": "auto_clear counts cuts now; use clear_cuts",
    }
    persist_cuts: int = setting(2, low=1, high=100)  # consecutive judged cuts above a threshold raise its level
    reference_cuts: int = setting(1, low=0, high=20)  # a new tool's first cuts per regime: its reference
    min_windows: int = setting(16, low=1)  # a cut with fewer scored windows (≈ 4 s at 250 Hz) is no evidence
    auto_clear: bool = False  # wear does not heal: by default only a reset lowers the state
    clear_cuts: int = setting(3, low=1)  # with auto_clear: consecutive cuts below the clear level
    clear_margin: float = setting(0.1, low=0.0, below=1.0)  # clear level = threshold - margin × |threshold|


@dataclass(frozen=True)
class Transition:
    old: Level
    new: Level
    since: float | None  # when the deciding cut ended (or the reset came)
    cut: str | None  # the deciding cut; None after a reset
    score: float | None  # the deciding cut's judged figure
    threshold: float | None  # raise: the new level's threshold; clear: the old level's
    by: str | None = None  # who reset

    @property
    def raised(self) -> bool:
        return self.new > self.old


class CutEvidence:
    """What a cut tells about the tool: its median alarm score over the tool's reference in the
    cut's regime (or the median itself with ``reference_cuts: 0``). Shared by the tracker and by
    training, which chooses the thresholds on these very figures."""

    def __init__(self, policy: AlarmPolicy) -> None:
        self.policy = policy
        self.references: dict[str, list[float]] = {}  # regime -> the reference cuts' medians
        self.took_reference = False  # whether the last cut judged became a reference

    def judge(self, median: float | None, windows: int, regime: str) -> float | None:
        """The figure a cut is judged by; None when the cut is no evidence or becomes reference."""
        self.took_reference = False
        if median is None or not math.isfinite(median) or windows < self.policy.min_windows:
            return None
        median = float(median)
        if self.policy.reference_cuts == 0:
            return median
        reference = self.references.setdefault(regime, [])
        if len(reference) < self.policy.reference_cuts:
            if median < MIN_REFERENCE:
                return None  # not cutting as the tool cuts (air, a stalled feed): no reference
            reference.append(median)
            self.took_reference = True
            return None
        return median / float(np.median(reference))

    def new_tool(self) -> None:
        self.references.clear()

    def to_dict(self) -> dict:
        return {regime: list(values) for regime, values in self.references.items()}

    def restore(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"alarm state: references must map each regime to a list of scores, got {data!r}")
        for regime, values in data.items():
            if type(regime) is not str or not isinstance(values, list) or any(
                type(x) not in (int, float) or not math.isfinite(x) or x < MIN_REFERENCE for x in values
            ):
                raise ValueError(f"alarm state: the references of regime {regime!r} must be a list of scores "
                                 f"of at least {MIN_REFERENCE}, got {values!r}")
        self.references = {k: [float(x) for x in v][: self.policy.reference_cuts] for k, v in data.items()}


# Calibrated scores are about 1 on a healthy cut of the regime; a cut scoring a twentieth of that is
# not the tool cutting (and as a reference it would make every later cut look worn).
MIN_REFERENCE = 0.05


class AlarmTracker:
    """One machine's alarm state; feed it every cut's median alarm score, in order, with :meth:`cut_ended`."""

    def __init__(self, policy: AlarmPolicy, thresholds: Thresholds) -> None:
        self.policy = policy
        self.thresholds = thresholds
        self.evidence = CutEvidence(policy)
        self.judged: float | None = None  # the last cut's figure (None: no evidence, or a reference cut)
        self.state = Level.NORMAL
        # The cut (or reset) that brought the current state: what the alarm topic announces.
        self.since: float | None = None
        self.cut: str | None = None
        self.score: float | None = None
        self.threshold: float | None = None
        self._recent: deque[float] = deque(maxlen=policy.persist_cuts)  # last judged cuts' figures
        self._below = 0  # consecutive judged cuts under the current level's clear level
        self._late_reference = False  # a reference was taken while the state was raised: never auto-clear

    def cut_ended(self, median: float | None, windows: int, cut: str, ts: float, regime: str = "") -> Transition | None:
        """A cut in ``regime`` ended with ``windows`` scored windows whose median alarm score is
        ``median``; it is judged by :class:`CutEvidence` (:attr:`judged`)."""
        self.judged = value = self.evidence.judge(median, windows, regime)
        if self.evidence.took_reference and self.state != Level.NORMAL:
            # A reference taken from a tool already flagged (restored without its reference, or a
            # new regime): growth over it understates the wear, so it may raise but never clear.
            self._late_reference = True
        if value is None:
            return None  # no evidence (or a reference cut): the history is kept as it is
        self._recent.append(value)
        target = self._raised_level()
        if target > self.state:
            return self._move(target, ts, cut, value, self.thresholds.of(target))
        if not self.policy.auto_clear or self.state == Level.NORMAL or self._late_reference:
            return None
        threshold = self.thresholds.of(self.state)
        clear_level = threshold - self.policy.clear_margin * abs(threshold)
        self._below = self._below + 1 if value < clear_level else 0
        if self._below < self.policy.clear_cuts:
            return None
        self._recent.clear()
        return self._move(Level(self.state - 1), ts, cut, value, threshold)

    def reset(self, by: str, ts: float) -> Transition | None:
        """The tool was changed: back to normal with an empty history and no reference. None if
        already normal."""
        self._recent.clear()
        self._below = 0
        self._late_reference = False
        self.evidence.new_tool()
        if self.state == Level.NORMAL:
            return None
        old = self.state
        self._set(Level.NORMAL, ts, None, None, None)
        return Transition(old, Level.NORMAL, ts, None, None, None, by)

    def _raised_level(self) -> Level:
        figure = persisted(self._recent, self.policy.persist_cuts)
        for level in (Level.ALARM, Level.WARNING):
            if figure > self.thresholds.of(level):
                return level
        return Level.NORMAL

    def _move(self, new: Level, ts: float, cut: str, score: float, threshold: float) -> Transition:
        old = self.state
        self._set(new, ts, cut, score, threshold)
        self._below = 0
        return Transition(old, new, ts, cut, score, threshold)

    def _set(self, state: Level, since: float | None, cut: str | None, score: float | None,
             threshold: float | None) -> None:
        self.state, self.since, self.cut, self.score, self.threshold = state, since, cut, score, threshold

    # --------------------------------------------------------------------------- persistence

    def to_dict(self) -> dict:
        return {
            "state": self.state.label,
            "since": self.since,
            "cut": self.cut,
            "score": self.score,
            "threshold": self.threshold,
            "recent": list(self._recent),
            "below": self._below,
            "references": self.evidence.to_dict(),
            "late_reference": self._late_reference,
        }

    def for_model(self, policy: AlarmPolicy, thresholds: Thresholds, same_scores: bool = False) -> "AlarmTracker":
        """This machine's tracker under another model's thresholds (and the policy of a reloaded
        configuration): what :func:`carried_over` keeps. With ``same_scores`` (the new model scores
        as the old one did: only its thresholds moved) and a policy that judges cuts the same way,
        the judged history and the references are the same figures and stay too."""
        snapshot = self.to_dict()
        if same_scores and judges_alike(self.policy, policy):
            return AlarmTracker.from_dict(policy, thresholds, thresholds_moved(snapshot, thresholds))
        return AlarmTracker.from_dict(policy, thresholds, carried_over(snapshot, thresholds))

    @classmethod
    def from_dict(cls, policy: AlarmPolicy, thresholds: Thresholds, data: Mapping[str, Any]) -> "AlarmTracker":
        """Restore a snapshot (from :meth:`to_dict`, or a retained alarm message). Only ``state``
        is required; the history keeps the policy's last ``persist_cuts`` cuts. A snapshot without
        ``references`` (a retained message, or a state file from before references) keeps only the
        state: its history, if any, is not in judged figures. Restoring announces nothing."""
        tracker = cls(policy, thresholds)
        state = Level.parse(data.get("state"))
        since = _optional_number(data, "since")
        score = _optional_number(data, "score")
        threshold = _optional_number(data, "threshold")
        cut = data.get("cut")
        if cut is not None and type(cut) is not str:
            raise ValueError(f"alarm state: cut must be a string or null, got {cut!r}")
        recent = data.get("recent", [])
        if not isinstance(recent, list) or any(type(s) not in (int, float) or not math.isfinite(s) for s in recent):
            raise ValueError("alarm state: recent must be a list of finite scores")
        below = data.get("below", 0)
        if type(below) is not int or below < 0:
            raise ValueError(f"alarm state: below must be a non-negative integer, got {below!r}")
        late = data.get("late_reference", False)
        if type(late) is not bool:
            raise ValueError(f"alarm state: late_reference must be true or false, got {late!r}")
        tracker._set(state, since, cut, score, threshold)
        if "references" in data:
            tracker.evidence.restore(data["references"])
            tracker._recent.extend(float(s) for s in recent)
            tracker._below = below
            tracker._late_reference = late
        return tracker


def persisted(recent: Sequence[float], persist: int) -> float:
    """The figure the last ``persist`` judged cuts all exceed: a level whose threshold is below it
    is raised (-inf before ``persist`` cuts are judged). The one raising rule of the tracker, and
    what training sweeps thresholds with (:func:`raise_points`)."""
    if len(recent) < persist:
        return -math.inf
    return min(list(recent)[-persist:])  # a deque has no slices; this runs once per cut


def raise_points(figures: Sequence[float | None], persist: int) -> list[float]:
    """For each cut of a tool's life in order (its judged figure, None when not judged): the
    highest threshold the state would have been raised above by the end of that cut, by
    :func:`persisted` (-inf: none). The state shows a level at a cut exactly when the level's
    threshold is below that cut's value, without ``auto_clear`` (the default: wear does not heal).
    So every threshold's outcome over a life comes from one pass."""
    recent: list[float] = []
    highest, out = -math.inf, []
    for value in figures:
        if value is not None:
            recent.append(float(value))
            highest = max(highest, persisted(recent, persist))
        out.append(highest)
    return out


def judging(policy: AlarmPolicy) -> dict:
    """What of a policy makes the figure each cut is judged by (its references and evidence)."""
    return {"reference_cuts": policy.reference_cuts, "min_windows": policy.min_windows}


def judges_alike(a: AlarmPolicy, b: AlarmPolicy) -> bool:
    """Whether two policies judge every cut by the same figure (same references and evidence)."""
    return judging(a) == judging(b)


def policy_mismatch(chosen_for: object, running: AlarmPolicy) -> str | None:
    """What in the running alarm policy differs from the one the bundle's thresholds were chosen
    for (the thresholds are figures of that rule); None when nothing does or the bundle does not say."""
    if not isinstance(chosen_for, dict):
        return None
    keys = ("persist_cuts", "reference_cuts", "min_windows")
    differ = [f"alarm.{k}: {getattr(running, k)} (chosen for {chosen_for[k]})"
              for k in keys if k in chosen_for and chosen_for[k] != getattr(running, k)]
    if not differ:
        return None
    return ("the bundle's thresholds were chosen for another alarm rule than config.yaml sets: "
            + ", ".join(differ) + "; alarms may come too early or too late")


def carried_over(snapshot: Mapping[str, Any], thresholds: Thresholds) -> dict:
    """An alarm snapshot (:meth:`AlarmTracker.to_dict`) as another model takes the machine over: a
    reload, or a restart with a new bundle (docs/protocol.md, "A new model").

    The state carries over, with when and by which cut it was entered: wear does not heal because
    the model changed. What is in the old model's figures does not: the judged cuts' history (so a
    level is raised only by ``persist_cuts`` cuts judged by the new model against its thresholds)
    and the tool's references (the next cuts with evidence under the new model become them; taken
    while the state is raised, they may raise it further but never clear it). A raised state shows
    the new model's threshold of its level, the one that rules it from now on."""
    state = Level.parse(snapshot.get("state"))
    return {
        "state": state.label,
        "since": snapshot.get("since"),
        "cut": snapshot.get("cut"),
        "score": snapshot.get("score"),
        "threshold": None if state == Level.NORMAL else thresholds.of(state),
    }


def thresholds_moved(snapshot: Mapping[str, Any], thresholds: Thresholds) -> dict:
    """An alarm snapshot under other thresholds of the same scores (a bundle whose operating point
    alone moved): everything stays, the history and references too (the same figures); a raised
    state shows the threshold of its level that holds it from now on."""
    state = Level.parse(snapshot.get("state"))
    return {**snapshot, "threshold": None if state == Level.NORMAL else thresholds.of(state)}


def _optional_number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"alarm state: {key} must be a finite number or null, got {value!r}")
    return float(value)
