"""What the monitor shows SCADA through Sparkplug B: its outbound messages as scalar tags (each
becomes a tag a host can historise and alarm on), documented in ``docs/scada.md``. Pure.

The edge node is the monitor: its status as ``Monitor/…`` and ``Counters/…`` tags. Each machine
is a device: its alarm state (``Alarm/…``, as the retained JSON alarm has it), the thresholds
and model it is judged by, the figures of its last cut (``Last Cut/…``, timestamped with the
cut's end) and, when enabled, its window scores (``Window/Score``, one value per window).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from . import sparkplug_payload as sp
from .alarm import Thresholds
from .outbound import SENSOR_FAULT, AlarmMessage, ScoreMessage, StatusMessage, SummaryMessage

Tags = dict[str, tuple[int, sp.Value]]

#: ``Alarm/Level``: the wear level as a number a host can alarm on (a sensor fault keeps the wear
#: level underneath it, and sets ``Alarm/Sensor Fault``).
WEAR_LEVELS = {"normal": 0, "warning": 1, "alarm": 2}
RESET = "Device Control/Reset"
WINDOW_SCORE = "Window/Score"


#: The latest time a Sparkplug DateTime or timestamp shows: 2**63 - 1 ms (an unsigned 64-bit field,
#: kept within what a signed 64-bit reader, Java's long, reads back).
_LATEST_MS = 2**63 - 1


def ms(seconds: float | None) -> int | None:
    """Unix seconds as Sparkplug's milliseconds; None for None and for a time no DateTime holds
    (before 1970, or a data acquisition's clock in the wrong unit): the input took it, Sparkplug
    shows no time rather than a wrong one."""
    if seconds is None or not math.isfinite(seconds):
        return None
    value = int(round(seconds * 1000))
    return value if 0 <= value <= _LATEST_MS else None


def alarm_tags(alarm: AlarmMessage) -> Tags:
    fault = alarm.state == SENSOR_FAULT
    wear = (alarm.wear or "normal") if fault else alarm.state
    return {
        "Alarm/State": (sp.STRING, alarm.state),
        "Alarm/Level": (sp.INT32, WEAR_LEVELS[wear]),
        "Alarm/Sensor Fault": (sp.BOOLEAN, fault),
        "Alarm/Since": (sp.DATETIME, ms(alarm.since)),
        "Alarm/Cut": (sp.STRING, alarm.cut),
        "Alarm/Score": (sp.DOUBLE, alarm.score),
        "Alarm/Threshold": (sp.DOUBLE, alarm.threshold),
        "Model": (sp.STRING, alarm.model),
    }


def threshold_tags(thresholds: Thresholds) -> Tags:
    return {
        "Thresholds/Score": (sp.STRING, thresholds.score),
        "Thresholds/Warning": (sp.DOUBLE, thresholds.warning),
        "Thresholds/Alarm": (sp.DOUBLE, thresholds.alarm),
    }


def summary_tags(summary: SummaryMessage | None) -> Tags:
    """The last cut's figures (all null before the first cut ends: a birth names every tag)."""
    s = summary
    stable = None if s is None else s.stable
    return {
        "Last Cut/Id": (sp.STRING, None if s is None else s.cut),
        "Last Cut/Windows": (sp.INT64, None if s is None else int(s.windows)),
        "Last Cut/Skipped Samples": (sp.INT64, None if s is None else int(s.skipped)),
        "Last Cut/Stable Start": (sp.INT64, None if stable is None else int(stable[0])),
        "Last Cut/Stable End": (sp.INT64, None if stable is None else int(stable[1])),
        "Last Cut/Score Median": (sp.DOUBLE, None if s is None else s.score_median),
        "Last Cut/Score Max": (sp.DOUBLE, None if s is None else s.score_max),
        "Last Cut/Judged": (sp.DOUBLE, None if s is None else s.judged),
        "Last Cut/Level": (sp.STRING, None if s is None else s.level),
    }


def device_tags(alarm: AlarmMessage, thresholds: Thresholds, summary: SummaryMessage | None,
                window_scores: bool, reset: bool) -> Tags:
    """Every tag of a machine's device, as its birth carries them."""
    tags = {**alarm_tags(alarm), **threshold_tags(thresholds), **summary_tags(summary)}
    if window_scores:
        tags[WINDOW_SCORE] = (sp.DOUBLE, None)
    if reset:
        tags[RESET] = (sp.BOOLEAN, False)  # a command tag: a host writes true to reset the machine
    return tags


def score_point(score: ScoreMessage) -> tuple[str, int, sp.Value, int | None]:
    """One window's score as a value of ``Window/Score`` at the window's time."""
    return (WINDOW_SCORE, sp.DOUBLE, score.score, ms(score.ts))


def node_tags(status: StatusMessage, machines: int) -> Tags:
    """The monitor's status as the edge node's tags."""
    tags: Tags = {
        "Monitor/State": (sp.STRING, status.state),
        "Monitor/Model": (sp.STRING, status.model),
        "Monitor/Version": (sp.STRING, status.version),
        "Monitor/Runtime": (sp.STRING, status.runtime),
        "Monitor/Device": (sp.STRING, status.device),
        "Monitor/Since": (sp.DATETIME, ms(status.since)),
        "Monitor/Machines": (sp.INT64, int(machines)),
    }
    backlog: Mapping[str, float] = status.backlog or {}
    tags["Monitor/Lag"] = (sp.DOUBLE, float(backlog["lag_s"]) if "lag_s" in backlog else None)
    tags["Monitor/Queued"] = (sp.INT64, int(backlog["queued"]) if "queued" in backlog else None)
    tags["Monitor/Unacknowledged"] = (sp.INT64, int(backlog["unacknowledged"]) if "unacknowledged" in backlog
                                      else None)
    counters: Mapping[str, Any] = status.counters or {}
    for name, value in counters.items():
        tags[f"Counters/{name}"] = (sp.INT64, int(value))
    return tags
