"""The alarm state of one machine: normal < warning < alarm, raised by k of the last n windows.

Raising: after each scored window, the state becomes the highest level whose threshold at least
``k`` of the machine's last ``n`` window scores exceed (strictly), if that is above the current
state. The last ``n`` windows run across cuts: wear carries over from one cut to the next. With
the defaults (3 of 5) one or two outlier windows raise nothing, while three bad windows out of five
(about 1.3 s of stable cutting at 64 samples and 250 Hz) do.

Wear does not heal, so by default the state only drops on :meth:`AlarmTracker.reset` (the tool
was changed). With ``auto_clear`` it also drops, one level at a time, after ``clear_windows``
consecutive windows scored below the current level's threshold less ``clear_margin`` of it
(hysteresis: scores hovering at the threshold neither raise nor clear). Each drop, like a reset,
empties the window history, so raising again needs ``k`` fresh windows above a threshold.

Non-finite scores are ignored. :meth:`AlarmTracker.to_dict` / :meth:`AlarmTracker.from_dict` carry
the state over a restart; restoring is not a transition, so nothing is announced again. The
retained alarm message itself is a valid snapshot (its extra keys are ignored).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Mapping

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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warning > self.alarm:
            raise self.error("warning", f"must not exceed thresholds.alarm ({self.alarm}), got {self.warning}")

    def of(self, level: Level) -> float:
        if level == Level.NORMAL:
            raise ValueError("the normal state has no threshold")
        return self.alarm if level == Level.ALARM else self.warning

    @classmethod
    def from_dict(cls, data: Any, *, required: bool = True, context: Any = None) -> Thresholds:
        """From :meth:`to_dict`'s output; every key is required (a bundle states all four)."""
        return super().from_dict(data, required=required, context=context)


@dataclass(frozen=True)
class AlarmPolicy(Spec):
    section = "alarm"
    k: int = setting(3, low=1)  # windows above a threshold ...
    n: int = setting(5, low=1)  # ... among the last n raise its level
    auto_clear: bool = False  # wear does not heal: by default only a reset lowers the state
    # with auto_clear: consecutive windows below the clear level (≈ 13 s at 250 Hz)
    clear_windows: int = setting(50, low=1)
    clear_margin: float = setting(0.1, low=0.0, below=1.0)  # clear level = threshold - margin × |threshold|

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k > self.n:
            raise self.error("k", f"must not exceed alarm.n ({self.n}), got {self.k}")


@dataclass(frozen=True)
class Transition:
    old: Level
    new: Level
    since: float | None  # ts of the window (or reset) that changed the state
    cut: str | None  # None after a reset
    offset: int | None  # first sample of the deciding window
    score: float | None  # the deciding window's score
    threshold: float | None  # raise: the new level's threshold; clear: the old level's
    by: str | None = None  # who reset

    @property
    def raised(self) -> bool:
        return self.new > self.old


class AlarmTracker:
    """One machine's alarm state; feed it every scored window in order with :meth:`update`."""

    def __init__(self, policy: AlarmPolicy, thresholds: Thresholds) -> None:
        self.policy = policy
        self.thresholds = thresholds
        self.state = Level.NORMAL
        # The window (or reset) that brought the current state: what the alarm topic announces.
        self.since: float | None = None
        self.cut: str | None = None
        self.offset: int | None = None
        self.score: float | None = None
        self.threshold: float | None = None
        self._recent: deque[float] = deque(maxlen=policy.n)
        self._below = 0  # consecutive windows under the current level's clear level

    def update(self, score: float, cut: str, offset: int, ts: float) -> Transition | None:
        score = float(score)
        if not math.isfinite(score):
            return None
        self._recent.append(score)
        target = self._raised_level()
        if target > self.state:
            return self._move(target, ts, cut, offset, score, self.thresholds.of(target))
        if not self.policy.auto_clear or self.state == Level.NORMAL:
            return None
        threshold = self.thresholds.of(self.state)
        clear_level = threshold - self.policy.clear_margin * abs(threshold)
        self._below = self._below + 1 if score < clear_level else 0
        if self._below < self.policy.clear_windows:
            return None
        self._recent.clear()
        return self._move(Level(self.state - 1), ts, cut, offset, score, threshold)

    def reset(self, by: str, ts: float) -> Transition | None:
        """The tool was changed: back to normal with an empty history. None if already normal."""
        self._recent.clear()
        self._below = 0
        if self.state == Level.NORMAL:
            return None
        old = self.state
        self._set(Level.NORMAL, ts, None, None, None, None)
        return Transition(old, Level.NORMAL, ts, None, None, None, None, by)

    def _raised_level(self) -> Level:
        k = self.policy.k
        for level in (Level.ALARM, Level.WARNING):
            threshold = self.thresholds.of(level)
            if sum(s > threshold for s in self._recent) >= k:
                return level
        return Level.NORMAL

    def _move(
        self, new: Level, ts: float, cut: str, offset: int, score: float, threshold: float
    ) -> Transition:
        old = self.state
        self._set(new, ts, cut, offset, score, threshold)
        self._below = 0
        return Transition(old, new, ts, cut, offset, score, threshold)

    def _set(
        self,
        state: Level,
        since: float | None,
        cut: str | None,
        offset: int | None,
        score: float | None,
        threshold: float | None,
    ) -> None:
        self.state, self.since, self.cut, self.offset = state, since, cut, offset
        self.score, self.threshold = score, threshold

    # --------------------------------------------------------------------------- persistence

    def to_dict(self) -> dict:
        return {
            "state": self.state.label,
            "since": self.since,
            "cut": self.cut,
            "offset": self.offset,
            "score": self.score,
            "threshold": self.threshold,
            "recent": list(self._recent),
            "below": self._below,
        }

    @classmethod
    def from_dict(cls, policy: AlarmPolicy, thresholds: Thresholds, data: Mapping[str, Any]) -> "AlarmTracker":
        """Restore a snapshot (from :meth:`to_dict`, or a retained alarm message). Only ``state``
        is required; the history is cut to the policy's ``n``. Restoring announces nothing."""
        tracker = cls(policy, thresholds)
        state = Level.parse(data.get("state"))
        since = _optional_number(data, "since")
        score = _optional_number(data, "score")
        threshold = _optional_number(data, "threshold")
        cut, offset = data.get("cut"), data.get("offset")
        if cut is not None and type(cut) is not str:
            raise ValueError(f"alarm state: cut must be a string or null, got {cut!r}")
        if offset is not None and (type(offset) is not int or offset < 0):
            raise ValueError(f"alarm state: offset must be a non-negative integer or null, got {offset!r}")
        recent = data.get("recent", [])
        if not isinstance(recent, list) or any(type(s) not in (int, float) or not math.isfinite(s) for s in recent):
            raise ValueError("alarm state: recent must be a list of finite scores")
        below = data.get("below", 0)
        if type(below) is not int or below < 0:
            raise ValueError(f"alarm state: below must be a non-negative integer, got {below!r}")
        tracker._set(state, since, cut, offset, score, threshold)
        tracker._recent.extend(float(s) for s in recent)
        tracker._below = below
        return tracker


def _optional_number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"alarm state: {key} must be a finite number or null, got {value!r}")
    return float(value)
