"""Wire protocol, version 1: the monitor's MQTT topics and JSON payloads (see ``docs/protocol.md``).

Inbound messages are parsed strictly: every rejection raises :class:`ProtocolError` whose
``reason`` says what to fix, short enough for the errors topic and the log. Outbound messages are
frozen dataclasses that :func:`encode` turns into compact JSON bytes. Pure: no MQTT, no model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import numpy as np

from .channels import CHANNELS, MATERIALS

PROTOCOL_VERSION = 1

#: Machine ids and monitor instance names: one topic level.
MACHINE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Cut ids: also allow ``.``, ``:`` and ``+`` so timestamps, UUIDs and job numbers fit as they are.
CUT_ID = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")
#: The topic level under the root that the monitor's own topics live in; not a machine id.
MONITOR_LEVEL = "_monitor"
MATERIAL_NAMES: tuple[str, ...] = tuple(MATERIALS.values())
LEVELS: tuple[str, ...] = ("normal", "warning", "alarm")

INBOUND_KINDS: dict[str, int] = {"cut": 2, "signal": 3, "cmd": 2}  # kind -> levels below the root


class ProtocolError(ValueError):
    """An input the monitor rejects; ``reason`` says why, in a few words naming the thing to fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Sanity limits on inbound messages; all configurable."""

    max_payload_bytes: int = 1 << 20
    max_chunk: int = 4096  # samples per signal message
    # Offsets and cut lengths beyond this are absurd; it also bounds what a gap can cost in memory
    # (a gap is filled with NaN rows). 10^6 samples ≈ 67 min at 250 Hz.
    max_cut_samples: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_payload_bytes", "max_chunk", "max_cut_samples"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"limits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class InboundTopic:
    machine: str
    kind: str  # "cut" | "signal" | "cmd"
    channel: str | None = None  # set for "signal"


def validate_root(root: str) -> str:
    """The topic root (one or more levels, e.g. ``mill`` or ``plant1/mill``), or ValueError."""
    if not isinstance(root, str) or not root:
        raise ValueError("topic root must be a non-empty string")
    if any(ch in root for ch in "+#\0"):
        raise ValueError(f"topic root {root!r} must not contain '+', '#' or NUL")
    if "" in root.split("/"):
        raise ValueError(f"topic root {root!r} must not start or end with '/' nor contain '//'")
    return root


def machine_id_problem(machine: str) -> str | None:
    """Why ``machine`` is not a usable machine id, or None when it is."""
    if machine == MONITOR_LEVEL:
        return f"machine id {MONITOR_LEVEL!r} is reserved for the monitor's own topics"
    if not MACHINE_ID.fullmatch(machine):
        return f"machine id {_show(machine)} is not 1-64 characters of A-Z a-z 0-9 _ -"
    return None


def parse_topic(root: str, topic: str) -> InboundTopic:
    """Which machine and input kind ``topic`` addresses: ``R/<machine>/cut``,
    ``R/<machine>/signal/<channel>`` or ``R/<machine>/cmd``."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise ProtocolError(f"topic {_show(topic)} is not under the root {root!r}")
    levels = topic[len(prefix) :].split("/")
    problem = machine_id_problem(levels[0])
    if problem:
        raise ProtocolError(problem)
    if len(levels) < 2:
        raise ProtocolError("wrong topic depth: nothing after the machine id")
    machine, kind = levels[0], levels[1]
    if kind not in INBOUND_KINDS:
        raise ProtocolError(f"unknown topic kind {_show(kind)}; expected cut, signal/<channel> or cmd")
    if len(levels) != INBOUND_KINDS[kind]:
        shape = "R/<machine>/signal/<channel>" if kind == "signal" else f"R/<machine>/{kind}"
        raise ProtocolError(f"wrong topic depth for {kind}: expected {shape}")
    if kind != "signal":
        return InboundTopic(machine, kind)
    channel = levels[2]
    if channel not in CHANNELS:
        raise ProtocolError(f"unknown channel {_show(channel)}; expected one of {', '.join(CHANNELS)}")
    return InboundTopic(machine, kind, channel)


def inbound_filters(root: str) -> tuple[str, ...]:
    """Subscription filters for every input. The trailing ``#`` also catches topics of the wrong
    depth under a known kind, so they are rejected with a reason rather than never seen."""
    validate_root(root)
    return tuple(f"{root}/+/{kind}/#" for kind in INBOUND_KINDS)


def alarm_filter(root: str) -> str:
    """Filter for every machine's retained alarm (read back at start-up)."""
    return f"{validate_root(root)}/+/alarm"


def _machine_topic(root: str, machine: str, *levels: str) -> str:
    problem = machine_id_problem(machine)
    if problem:
        raise ValueError(problem)
    return "/".join((validate_root(root), machine, *levels))


def cut_topic(root: str, machine: str) -> str:
    return _machine_topic(root, machine, "cut")


def signal_topic(root: str, machine: str, channel: str) -> str:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    return _machine_topic(root, machine, "signal", channel)


def cmd_topic(root: str, machine: str) -> str:
    return _machine_topic(root, machine, "cmd")


def score_topic(root: str, machine: str) -> str:
    return _machine_topic(root, machine, "score")


def alarm_topic(root: str, machine: str) -> str:
    return _machine_topic(root, machine, "alarm")


def summary_topic(root: str, machine: str) -> str:
    return _machine_topic(root, machine, "summary")


def _monitor_topic(root: str, instance: str, leaf: str) -> str:
    if not MACHINE_ID.fullmatch(instance):
        raise ValueError(f"instance name {instance!r} is not 1-64 characters of A-Z a-z 0-9 _ -")
    return f"{validate_root(root)}/{MONITOR_LEVEL}/{instance}/{leaf}"


def status_topic(root: str, instance: str) -> str:
    return _monitor_topic(root, instance, "status")


def errors_topic(root: str, instance: str) -> str:
    return _monitor_topic(root, instance, "errors")


# ------------------------------------------------------------------------------ inbound messages


@dataclass(frozen=True)
class CutParams:
    doc: float  # depth of cut, mm
    feed: float  # mm/rev
    material: str  # one of MATERIAL_NAMES


@dataclass(frozen=True)
class CutStart:
    cut: str
    ts: float  # unix seconds
    fs: float  # sample rate, Hz
    params: CutParams | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"event": "start", "cut": self.cut, "ts": self.ts, "fs": self.fs}
        if self.params is not None:
            p = self.params
            out["params"] = {"doc": p.doc, "feed": p.feed, "material": p.material}
        return out


@dataclass(frozen=True)
class CutEnd:
    cut: str
    ts: float
    samples: int  # samples in the cut, per channel

    def to_dict(self) -> dict:
        return {"event": "end", "cut": self.cut, "ts": self.ts, "samples": self.samples}


@dataclass(frozen=True, eq=False)  # eq on an ndarray field is ambiguous
class SignalChunk:
    cut: str
    offset: int  # index in the cut of samples[0]
    samples: np.ndarray  # (n,) float64, finite, read-only

    def to_dict(self) -> dict:
        return {"cut": self.cut, "offset": int(self.offset), "samples": np.asarray(self.samples, np.float64).tolist()}


@dataclass(frozen=True)
class Command:
    cmd: str  # "reset"
    by: str

    def to_dict(self) -> dict:
        return {"cmd": self.cmd, "by": self.by}


InboundMessage = Union[CutStart, CutEnd, SignalChunk, Command]


@dataclass(frozen=True, eq=False)
class Inbound:
    topic: InboundTopic
    message: InboundMessage


def parse_message(root: str, topic: str, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Inbound:
    """Topic and payload of one inbound MQTT message, both validated."""
    where = parse_topic(root, topic)
    if where.kind == "cut":
        return Inbound(where, parse_cut_event(payload, limits))
    if where.kind == "signal":
        return Inbound(where, parse_signal(payload, limits))
    return Inbound(where, parse_command(payload, limits))


def parse_cut_event(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> CutStart | CutEnd:
    obj = decode_object(payload, limits)
    event = _get(obj, "event")
    if event == "start":
        return CutStart(
            cut=_cut_id(obj),
            ts=_timestamp(obj),
            fs=_positive(_get(obj, "fs"), "fs"),
            params=_params(obj.get("params")),
        )
    if event == "end":
        samples = _integer(_get(obj, "samples"), "samples")
        if samples > limits.max_cut_samples:
            raise ProtocolError(f"samples {samples} is absurd: over the limit of {limits.max_cut_samples} per cut")
        return CutEnd(cut=_cut_id(obj), ts=_timestamp(obj), samples=samples)
    raise ProtocolError(f"event must be \"start\" or \"end\", got {_show(event)}")


def parse_signal(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> SignalChunk:
    obj = decode_object(payload, limits)
    cut = _cut_id(obj)
    offset = _integer(_get(obj, "offset"), "offset")
    samples = _samples(_get(obj, "samples"), limits)
    if offset + samples.size > limits.max_cut_samples:
        raise ProtocolError(
            f"offset {offset} is absurd: the chunk would end past the limit of {limits.max_cut_samples} samples per cut"
        )
    return SignalChunk(cut, offset, samples)


def parse_command(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Command:
    obj = decode_object(payload, limits)
    cmd = _get(obj, "cmd")
    if cmd != "reset":
        raise ProtocolError(f"unknown cmd {_show(cmd)}; expected \"reset\"")
    by = _get(obj, "by")
    if type(by) is not str or not 1 <= len(by) <= 64 or not by.isprintable():
        raise ProtocolError("by must be a string of 1-64 printable characters naming who reset")
    return Command(cmd, by)


def decode_object(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict:
    """A JSON object from raw payload bytes: size checked before decoding, strict UTF-8, no NaN or
    Infinity literals, no duplicate keys."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    size = memoryview(payload).nbytes
    if size > limits.max_payload_bytes:
        raise ProtocolError(f"payload of {size} bytes is over the limit of {limits.max_payload_bytes} bytes")
    if size == 0:
        raise ProtocolError("payload is empty")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8 (bad byte at position {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ProtocolError("payload is not usable JSON: nested too deeply") from None
    except ValueError:  # an integer literal longer than Python's int conversion limit
        raise ProtocolError("payload is not usable JSON: a number has too many digits") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload must be a JSON object, got {_json_type(obj)}")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"payload holds {name}, which is not valid JSON; send only finite numbers")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a repeated key is ambiguous: refuse rather than keep the last
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ProtocolError(f"key {_show(key)} appears twice in one object")
            seen.add(key)
    return obj


def _get(obj: dict, key: str, where: str = "") -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ProtocolError(f"missing key {where}{key!r}") from None


def _cut_id(obj: dict) -> str:
    cut = _get(obj, "cut")
    if type(cut) is not str:
        raise ProtocolError(f"cut must be a string, got {_json_type(cut)}")
    if not CUT_ID.fullmatch(cut):
        raise ProtocolError(f"cut id {_show(cut)} is not 1-64 characters of A-Z a-z 0-9 _ . : + -")
    return cut


def _number(value: Any, name: str) -> float:
    # Exact types: bool is an int subclass in Python but not a number on the wire.
    if type(value) not in (int, float):
        raise ProtocolError(f"{name} must be a number, got {_json_type(value)}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise ProtocolError(f"{name} is not a finite number")
    return x


def _positive(value: Any, name: str) -> float:
    x = _number(value, name)
    if x <= 0:
        raise ProtocolError(f"{name} must be positive, got {_show(value)}")
    return x


def _timestamp(obj: dict) -> float:
    ts = _number(_get(obj, "ts"), "ts")
    if ts < 0:
        raise ProtocolError(f"ts must be unix seconds (not negative), got {_show(ts)}")
    return ts


def _integer(value: Any, name: str) -> int:
    if type(value) is float:
        raise ProtocolError(f"{name} must be an integer, got the fractional-typed number {_show(value)}")
    if type(value) is not int:
        raise ProtocolError(f"{name} must be an integer, got {_json_type(value)}")
    if value < 0:
        raise ProtocolError(f"{name} must not be negative, got {_show(value)}")
    return value


def _params(value: Any) -> CutParams | None:
    if value is None:  # absent or null: no cutting parameters
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"params must be an object, got {_json_type(value)}")
    material = _get(value, "material", "params.")
    if material not in MATERIAL_NAMES:
        raise ProtocolError(f"params.material must be one of {', '.join(MATERIAL_NAMES)}, got {_show(material)}")
    return CutParams(
        doc=_positive(_get(value, "doc", "params."), "params.doc"),
        feed=_positive(_get(value, "feed", "params."), "params.feed"),
        material=material,
    )


def _samples(value: Any, limits: Limits) -> np.ndarray:
    if type(value) is not list:
        raise ProtocolError(f"samples must be an array of numbers, got {_json_type(value)}")
    n = len(value)
    if n == 0:
        raise ProtocolError("samples is empty")
    if n > limits.max_chunk:
        raise ProtocolError(f"samples has {n} values, over the limit of {limits.max_chunk} per chunk")
    # Type check at C speed; the per-element loops below run only to name the culprit.
    if not set(map(type, value)) <= {float, int}:
        i = next(i for i, v in enumerate(value) if type(v) not in (int, float))
        raise ProtocolError(f"samples[{i}] is not a number (got {_json_type(value[i])})")
    try:
        arr = np.array(value, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        i = next(i for i, v in enumerate(value) if not _fits_float(v))
        raise ProtocolError(f"samples[{i}] is not a finite number") from None
    finite = np.isfinite(arr)
    if not finite.all():  # e.g. 1e999, which JSON parsing turns into inf
        raise ProtocolError(f"samples[{int(np.argmin(finite))}] is not a finite number")
    arr.setflags(write=False)
    return arr


def _fits_float(value: float | int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any, limit: int = 40) -> str:
    """repr of an input value, cut short: reasons echo what was sent without flooding the log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- outbound messages


@dataclass(frozen=True)
class ScoreMessage:
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
        _check_level(self.level)
        return {
            "cut": self.cut,
            "offset": int(self.offset),
            "recon": _finite(self.recon),
            "kl": _finite(self.kl),
            "score": _finite(self.score),
            "channels": {c: _finite(self.channels[c]) for c in CHANNELS if c in self.channels},
            "level": self.level,
            "model": self.model,
            "ts": _finite(self.ts),
        }


@dataclass(frozen=True)
class AlarmMessage:
    machine: str
    state: str
    since: float | None  # when the state was entered (unix s)
    cut: str | None  # the cut whose window changed the state; null after a reset
    score: float | None
    threshold: float | None
    model: str

    def to_dict(self) -> dict:
        _check_level(self.state)
        return {
            "machine": self.machine,
            "state": self.state,
            "since": _finite(self.since),
            "cut": self.cut,
            "score": _finite(self.score),
            "threshold": _finite(self.threshold),
            "model": self.model,
        }


@dataclass(frozen=True)
class SummaryMessage:
    cut: str
    windows: int  # windows scored
    skipped: int  # samples (frame rows) of the cut lost in gaps: no window could span them
    stable: tuple[int, int] | None  # first and last stable sample, None if no stable region
    score_median: float | None
    score_max: float | None
    level: str  # the machine's alarm state at the cut's end

    def to_dict(self) -> dict:
        _check_level(self.level)
        return {
            "cut": self.cut,
            "windows": int(self.windows),
            "skipped": int(self.skipped),
            "stable": None if self.stable is None else [int(self.stable[0]), int(self.stable[1])],
            "score_median": _finite(self.score_median),
            "score_max": _finite(self.score_max),
            "level": self.level,
        }


@dataclass(frozen=True)
class StatusMessage:
    state: str  # "online" | "offline"
    model: str
    device: str
    version: str
    since: float
    counters: Mapping[str, int] | None = field(default=None)

    def to_dict(self) -> dict:
        if self.state not in ("online", "offline"):
            raise ValueError(f"status state must be online or offline, got {self.state!r}")
        out: dict[str, Any] = {
            "state": self.state,
            "model": self.model,
            "device": self.device,
            "version": self.version,
            "since": _finite(self.since),
            "protocol": PROTOCOL_VERSION,
        }
        if self.counters is not None:
            out["counters"] = {k: int(v) for k, v in self.counters.items()}
        return out


@dataclass(frozen=True)
class ErrorMessage:
    topic: str
    reason: str
    ts: float

    def to_dict(self) -> dict:
        return {"topic": self.topic, "reason": self.reason, "ts": _finite(self.ts)}


OutboundMessage = Union[ScoreMessage, AlarmMessage, SummaryMessage, StatusMessage, ErrorMessage]


def encode(message: OutboundMessage | InboundMessage) -> bytes:
    """Compact JSON bytes of any protocol message (outbound, or inbound as a publisher sends it)."""
    return json.dumps(message.to_dict(), separators=(",", ":"), allow_nan=False).encode("ascii")


def parse_alarm(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> AlarmMessage:
    """A retained alarm message read back at start-up (written by this or an earlier monitor)."""
    obj = decode_object(payload, limits)

    def optional_number(key: str) -> float | None:
        value = obj.get(key)
        return None if value is None else _number(value, key)

    machine, state, model, cut = obj.get("machine"), obj.get("state"), obj.get("model"), obj.get("cut")
    if type(machine) is not str or machine_id_problem(machine):
        raise ProtocolError(f"alarm machine {_show(machine)} is not a machine id")
    if state not in LEVELS:
        raise ProtocolError(f"alarm state must be one of {', '.join(LEVELS)}, got {_show(state)}")
    if cut is not None and type(cut) is not str:
        raise ProtocolError(f"alarm cut must be a string or null, got {_json_type(cut)}")
    return AlarmMessage(
        machine=machine,
        state=state,
        since=optional_number("since"),
        cut=cut,
        score=optional_number("score"),
        threshold=optional_number("threshold"),
        model=model if type(model) is str else "",
    )


def _finite(x: float | None) -> float | None:
    """Outbound numbers: plain finite floats; None, NaN or infinity become null ("undefined")."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
