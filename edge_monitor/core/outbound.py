"""Wire protocol v1, outbound: the messages the monitor publishes, as frozen dataclasses.

Each message knows where it goes: ``leaf`` is its topic's last level (``R/<machine>/<leaf>`` or
``R/_monitor/<instance>/<leaf>``; the QoS of each leaf is configured under the same name) and
``retain`` whether the broker keeps the last one for late subscribers. :func:`encode` turns any
protocol message into compact JSON bytes. Non-finite numbers go out as ``null``. Pure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence, Union

from .channels import CHANNELS

PROTOCOL_VERSION = 1
# A machine's level: its wear state (normal, warning, alarm), or sensor_fault while its windows
# keep scoring non-finite (values no model can judge: a broken sensor or a scaling fault upstream).
SENSOR_FAULT = "sensor_fault"
LEVELS: tuple[str, ...] = ("normal", "warning", "alarm", SENSOR_FAULT)


@dataclass(frozen=True)
class ScoreMessage:
    leaf: ClassVar[str] = "score"
    retain: ClassVar[bool] = False

    cut: str
    offset: int  # first sample of the window in the cut
    recon: float
    kl: float
    score: float  # the score the bundle alarms on
    channels: Mapping[str, float]  # reconstruction error per channel
    level: str  # the machine's alarm state after this window
    model: str
    ts: float

    def to_dict(self) -> dict:
        return {"cut": self.cut, **self.window_dict(), "model": self.model, "ts": finite(self.ts)}

    def window_dict(self) -> dict:
        """The window's own fields: what a :class:`ScoreBatchMessage` lists per window."""
        _check_level(self.level)
        return {
            "offset": int(self.offset),
            "recon": finite(self.recon),
            "kl": finite(self.kl),
            "score": finite(self.score),
            "channels": {c: finite(self.channels[c]) for c in CHANNELS if c in self.channels},
            "level": self.level,
        }


@dataclass(frozen=True)
class ScoreBatchMessage:
    """The windows of one machine's cut scored in one batch, in one message (``outputs.scores:
    batch``): what the same windows' :class:`ScoreMessage` s say, in window order, with ``cut`` and
    ``model`` once. Fewer, fuller messages, as frames are on the way in: at 250-sample frames a
    machine's windows come four at a time."""

    leaf: ClassVar[str] = "scores"
    qos_key: ClassVar[str] = "score"  # the QoS of scores, however they are sent
    retain: ClassVar[bool] = False

    windows: tuple[ScoreMessage, ...]  # of one cut and model, in order

    def to_dict(self) -> dict:
        first = self.windows[0]
        return {
            "cut": first.cut,
            "model": first.model,
            "windows": [{**w.window_dict(), "ts": finite(w.ts)} for w in self.windows],
        }


@dataclass(frozen=True)
class AlarmMessage:
    leaf: ClassVar[str] = "alarm"
    retain: ClassVar[bool] = True  # a dashboard that subscribes later sees the current state

    machine: str
    state: str
    since: float | None  # when the state was entered (unix s)
    cut: str | None  # the cut whose window changed the state; null after a reset
    score: float | None
    threshold: float | None
    model: str
    wear: str | None = None  # with sensor_fault: the wear state underneath (normal, warning, alarm)

    def to_dict(self) -> dict:
        _check_level(self.state)
        out = {
            "machine": self.machine,
            "state": self.state,
            "since": finite(self.since),
            "cut": self.cut,
            "score": finite(self.score),
            "threshold": finite(self.threshold),
            "model": self.model,
        }
        if self.wear is not None:
            out["wear"] = self.wear
        return out


@dataclass(frozen=True)
class SummaryMessage:
    leaf: ClassVar[str] = "summary"
    retain: ClassVar[bool] = False

    cut: str
    windows: int  # windows scored
    skipped: int  # samples (frame rows) of the cut lost in gaps: no window could span them
    stable: tuple[int, int] | None  # first and last stable sample, None if no stable region
    score_median: float | None
    score_max: float | None
    level: str  # the machine's alarm state at the cut's end
    # The figure the alarm rule judged the cut by (its median over the tool's reference); None when
    # the cut was no evidence or became the reference.
    judged: float | None = None
    # When the cut's last sample was taken (unix s): the time of the figures for a consumer that
    # stamps them (Sparkplug); not on the JSON topic, whose payload protocol v1 fixes.
    ended: float | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        _check_level(self.level)
        return {
            "cut": self.cut,
            "windows": int(self.windows),
            "skipped": int(self.skipped),
            "stable": None if self.stable is None else [int(self.stable[0]), int(self.stable[1])],
            "score_median": finite(self.score_median),
            "score_max": finite(self.score_max),
            "judged": finite(self.judged),
            "level": self.level,
        }


STATUS_STATES = ("online", "degraded", "offline")


@dataclass(frozen=True)
class StatusMessage:
    leaf: ClassVar[str] = "status"
    retain: ClassVar[bool] = True  # also the will's topic: online / offline

    state: str  # "online" | "degraded" (falling behind its input) | "offline"
    model: str
    device: str
    version: str
    since: float
    counters: Mapping[str, int] | None = field(default=None)
    backlog: Mapping[str, float] | None = field(default=None)  # lag_s, queued, unacknowledged
    runtime: str | None = field(default=None)  # what serves the model: "onnxruntime", "tensorflow"
    operating_point: Mapping[str, Any] | None = field(default=None)  # Thresholds.operating_point()
    machines: Sequence[str] | None = field(default=None)  # the partition: ids and patterns it watches

    def to_dict(self) -> dict:
        if self.state not in STATUS_STATES:
            raise ValueError(f"status state must be one of {', '.join(STATUS_STATES)}, got {self.state!r}")
        out: dict[str, Any] = {
            "state": self.state,
            "model": self.model,
            "device": self.device,
            **({"runtime": self.runtime} if self.runtime else {}),
            "version": self.version,
            "since": finite(self.since),
            "protocol": PROTOCOL_VERSION,
        }
        if self.machines is not None:
            out["machines"] = list(self.machines)
        if self.operating_point is not None:
            out["operating_point"] = dict(self.operating_point)
        if self.counters is not None:
            out["counters"] = {k: int(v) for k, v in self.counters.items()}
        if self.backlog is not None:
            out["backlog"] = {k: round(float(v), 3) for k, v in self.backlog.items()}
        return out


@dataclass(frozen=True)
class ErrorMessage:
    leaf: ClassVar[str] = "errors"
    retain: ClassVar[bool] = False

    topic: str
    reason: str
    ts: float

    def to_dict(self) -> dict:
        return {"topic": self.topic, "reason": self.reason, "ts": finite(self.ts)}


MachineOutput = Union[ScoreMessage, ScoreBatchMessage, AlarmMessage, SummaryMessage]  # under R/<machine>/
#: How scores are published (``outputs.scores``), and on which topic leaf (None: not at all).
SCORE_LEAVES: dict[str, str | None] = {"window": ScoreMessage.leaf, "batch": ScoreBatchMessage.leaf, "off": None}
SCORE_FORMS: tuple[str, ...] = tuple(SCORE_LEAVES)


def encode(message: Any) -> bytes:
    """Compact JSON bytes of any protocol message (one with ``to_dict``: outbound, or inbound as a
    publisher sends it)."""
    return json.dumps(message.to_dict(), separators=(",", ":"), allow_nan=False).encode("ascii")


def finite(x: float | None) -> float | None:
    """Outbound numbers: plain finite floats; None, NaN or infinity become null ("undefined")."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
