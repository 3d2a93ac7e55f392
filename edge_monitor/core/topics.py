"""Wire protocol v1, topics: where every message of the monitor lives (``docs/protocol.md``).

Inputs come from machines under ``R/<machine>/cut``, ``R/<machine>/signal/<channel>``,
``R/<machine>/frame`` (every channel at once) and ``R/<machine>/cmd``; outputs go to ``R/<machine>/<leaf>`` (``score``, ``alarm``, ``summary``) and
to the monitor's own ``R/_monitor/<instance>/<leaf>`` (``status``, ``errors``, ``sync``).
:class:`Topics` binds the root and the instance once, so the service never builds a topic by hand.
Pure: no MQTT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .channels import CHANNELS

#: Machine ids and monitor instance names: one topic level.
MACHINE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The topic level under the root that the monitor's own topics live in; not a machine id.
MONITOR_LEVEL = "_monitor"
INBOUND_KINDS: dict[str, int] = {"cut": 2, "signal": 3, "frame": 2, "cmd": 2}  # kind -> levels below the root


class ProtocolError(ValueError):
    """An input the monitor rejects; ``reason`` says why, in a few words naming the thing to fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StaleInput(ProtocolError):
    """An input for a cut that already ended: a redelivery when the broker marks it as one."""


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
        return f"machine id {show(machine)} is not 1-64 characters of A-Z a-z 0-9 _ -"
    return None


def parse_topic(root: str, topic: str) -> InboundTopic:
    """Which machine and input kind ``topic`` addresses: ``R/<machine>/cut``,
    ``R/<machine>/signal/<channel>``, ``R/<machine>/frame`` or ``R/<machine>/cmd``."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise ProtocolError(f"topic {show(topic)} is not under the root {root!r}")
    levels = topic[len(prefix) :].split("/")
    problem = machine_id_problem(levels[0])
    if problem:
        raise ProtocolError(problem)
    if len(levels) < 2:
        raise ProtocolError("wrong topic depth: nothing after the machine id")
    machine, kind = levels[0], levels[1]
    if kind not in INBOUND_KINDS:
        raise ProtocolError(f"unknown topic kind {show(kind)}; expected cut, signal/<channel>, frame or cmd")
    if len(levels) != INBOUND_KINDS[kind]:
        shape = "R/<machine>/signal/<channel>" if kind == "signal" else f"R/<machine>/{kind}"
        raise ProtocolError(f"wrong topic depth for {kind}: expected {shape}")
    if kind != "signal":
        return InboundTopic(machine, kind)
    channel = levels[2]
    if channel not in CHANNELS:
        raise ProtocolError(f"unknown channel {show(channel)}; expected one of {', '.join(CHANNELS)}")
    return InboundTopic(machine, kind, channel)


def inbound_filters(root: str) -> tuple[str, ...]:
    """Subscription filters for every machine's inputs. Every machine's, also with ``machines`` a
    list of ids: an input of a machine nobody watches (a data acquisition with a mistyped id) is
    then reported on the errors topic rather than never seen, and one of a machine another
    instance watches is dropped quietly (core/partition.py). The trailing ``#`` also catches
    topics of the wrong depth under a known kind, so they are rejected with a reason rather than
    never seen."""
    validate_root(root)
    return tuple(f"{root}/+/{kind}/#" for kind in INBOUND_KINDS)


def alarm_filter(root: str) -> str:
    """Filter for every machine's retained alarm (read back at start-up)."""
    return f"{validate_root(root)}/+/alarm"


def machine_topic(root: str, machine: str, *levels: str) -> str:
    """``R/<machine>/<levels...>``, the machine id checked."""
    problem = machine_id_problem(machine)
    if problem:
        raise ValueError(problem)
    return "/".join((validate_root(root), machine, *levels))


def cut_topic(root: str, machine: str) -> str:
    return machine_topic(root, machine, "cut")


def signal_topic(root: str, machine: str, channel: str) -> str:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    return machine_topic(root, machine, "signal", channel)


def frame_topic(root: str, machine: str) -> str:
    return machine_topic(root, machine, "frame")


def cmd_topic(root: str, machine: str) -> str:
    return machine_topic(root, machine, "cmd")


def instance_problem(instance: str) -> str | None:
    """Why ``instance`` is not a usable monitor instance name, or None when it is."""
    if not isinstance(instance, str) or not MACHINE_ID.fullmatch(instance) or instance == MONITOR_LEVEL:
        return f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {instance!r}"
    return None


def monitor_topic(root: str, instance: str, leaf: str) -> str:
    """``R/_monitor/<instance>/<leaf>``: the monitor's own topics."""
    problem = instance_problem(instance)
    if problem:
        raise ValueError(f"instance name {problem}")
    return f"{validate_root(root)}/{MONITOR_LEVEL}/{instance}/{leaf}"


@dataclass(frozen=True)
class Topics:
    """Every topic of one monitor instance under one root."""

    root: str
    instance: str
    status: str = field(init=False)
    errors: str = field(init=False)
    sync: str = field(init=False)  # the private round trip that ends the retained-alarm read-back
    ping: str = field(init=False)  # the private round trip that shows the network thread delivers
    alarms: str = field(init=False)  # filter: every machine's retained alarm
    statuses: str = field(init=False)  # filter: every instance's retained status (partitions)
    inputs: dict[str, str] = field(init=False)  # input kind -> subscription filter

    def __post_init__(self) -> None:
        validate_root(self.root)
        for name, leaf in (("status", "status"), ("errors", "errors"), ("sync", "sync"), ("ping", "ping")):
            object.__setattr__(self, name, monitor_topic(self.root, self.instance, leaf))
        object.__setattr__(self, "alarms", alarm_filter(self.root))
        object.__setattr__(self, "statuses", f"{self.root}/{MONITOR_LEVEL}/+/status")
        object.__setattr__(self, "inputs", dict(zip(INBOUND_KINDS, inbound_filters(self.root))))

    def machine(self, machine: str, leaf: str) -> str:
        """``R/<machine>/<leaf>`` for an output leaf such as ``score``. ``machine`` is an id that
        was checked on its way in (a parsed input topic, a restored alarm state): the hot path
        does not check it again."""
        return f"{self.root}/{machine}/{leaf}"

    def parse(self, topic: str) -> InboundTopic:
        return parse_topic(self.root, topic)


def show(value: Any, limit: int = 40) -> str:
    """repr of an input value, cut short: reasons echo what was sent without flooding the log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
