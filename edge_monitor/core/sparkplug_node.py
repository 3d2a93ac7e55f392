"""A Sparkplug B 3.0 edge node's session, without MQTT: topics, the one ``seq`` counter, aliases,
and the current value of every tag of the node and of each device, so that a birth always
carries the present state and a data message only what changed. Pure: the caller passes the
time in (ms since the epoch) and publishes what comes back, in order.

The rules it keeps (Sparkplug 3.0.0; ``docs/scada.md``):

- ``seq``: one counter per edge node across NBIRTH, DBIRTH, NDATA and DDATA; the NBIRTH has 0,
  every later message one more, wrapping 255 → 0. The caller publishes messages in the order
  they are made, so seq order is wire order. NDEATH carries no seq.
- Births: NBIRTH with every node metric (name, datatype, value, timestamp), ``bdSeq`` (Int64) and
  ``Node Control/Rebirth``; then a DBIRTH per device before any of its data. QoS 0, not retained.
- Data: only the metrics that changed, each with its timestamp; with aliases, by alias alone
  (aliases are unique across the node and named in births only; ``bdSeq`` and the
  ``… Control/…`` metrics are never aliased). Nothing is made before the node's birth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import sparkplug_payload as sp
from .sparkplug_payload import Metric, Payload

NAMESPACE = "spBv1.0"
BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
#: Group, edge node and device ids: one topic level of printable characters, no wildcards.
_ID = re.compile(r"[^+/#\s\x00-\x1f]{1,128}")


def id_problem(value: object, what: str) -> str | None:
    """Why ``value`` cannot be a Sparkplug ``what`` (group id, edge node id, host id), or None."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        return (f"{what} must be 1-128 printable characters without '+', '/', '#' or spaces "
                f"(one MQTT topic level), got {value!r}")
    return None


@dataclass(frozen=True)
class Tag:
    """A metric's current value and when it took it (ms)."""

    datatype: int
    value: sp.Value
    timestamp: int


@dataclass(frozen=True)
class Publish:
    """One message for the broker: publish it as it is, in the order made."""

    kind: str  # NBIRTH, NDEATH, NDATA, DBIRTH, DDATA
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    device: str | None = None


class EdgeNode:
    """One edge node (``group``/``edge``) and its devices' tags."""

    def __init__(self, group: str, edge: str, aliases: bool) -> None:
        for value, what in ((group, "group id"), (edge, "edge node id")):
            problem = id_problem(value, what)
            if problem:
                raise ValueError(problem)
        self.group, self.edge, self.aliases = group, edge, aliases
        self._seq = 0  # the next message's
        self._node: dict[str, Tag] = {}
        self._devices: dict[str, dict[str, Tag]] = {}  # in the order they appeared
        self._folded: dict[str, str] = {}  # lower-cased device id -> device id
        self._alias: dict[tuple[str | None, str], int] = {}  # (device, metric) -> alias, kept for the process
        self.born = False  # the node's birth was made on the present connection
        self._born_devices: set[str] = set()

    # ------------------------------------------------------------------------------- topics

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.edge}"
        return base if device is None else f"{base}/{device}"

    def command_topics(self) -> list[str]:
        """What the node subscribes to: its own NCMD and every device's DCMD."""
        return [self.topic("NCMD"), self.topic("DCMD", "+")]

    # ------------------------------------------------------------------------------- state

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def device_problem(self, device: str) -> str | None:
        """Why ``device`` cannot be one of this node's devices (an id that collides with another
        when lower-cased, which hosts may treat as one), or None."""
        problem = id_problem(device, "device id")
        if problem:
            return problem
        other = self._folded.get(device.lower())
        if other is not None and other != device:
            return f"device id {device!r} collides with {other!r} when lower-cased"
        return None

    def has_device(self, device: str) -> bool:
        return device in self._devices

    def lost(self) -> None:
        """The connection dropped: nothing more until the next birth."""
        self.born = False
        self._born_devices.clear()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _name_or_alias(self, device: str | None, name: str, birth: bool) -> tuple[str | None, int | None]:
        if not self.aliases or name == BD_SEQ or "Control/" in name:
            return name, None
        alias = self._alias.setdefault((device, name), len(self._alias) + 1)
        return (name, alias) if birth else (None, alias)

    def _metric(self, device: str | None, name: str, tag: Tag, birth: bool) -> Metric:
        name_out, alias = self._name_or_alias(device, name, birth)
        return Metric(name=name_out, datatype=tag.datatype, value=tag.value, timestamp=tag.timestamp, alias=alias)

    def _publish(self, kind: str, device: str | None, metrics: list[Metric], now: int) -> Publish:
        seq = 0 if kind == "NBIRTH" else self._next_seq()
        if kind == "NBIRTH":
            self._seq = 1
        payload = sp.encode(Payload(timestamp=now, metrics=tuple(metrics), seq=seq))
        return Publish(kind, self.topic(kind, device), payload, qos=0, device=device)

    # ------------------------------------------------------------------------------- messages

    def death(self, bd_seq: int, now: int) -> bytes:
        """The NDEATH payload for the connection whose will carries ``bd_seq`` (also the will)."""
        return sp.encode(Payload(timestamp=now, metrics=(Metric(BD_SEQ, sp.INT64, bd_seq, now),)))

    def set_node(self, tags: Mapping[str, tuple[int, sp.Value]], now: int) -> Publish | None:
        """The node's tags as they are now; an NDATA of those that changed, if the node is born."""
        return self._set(None, self._node, tags, now)

    def set_device(self, device: str, tags: Mapping[str, tuple[int, sp.Value]], now: int,
                   at: int | None = None, series: Iterable[tuple[str, int, sp.Value, int | None]] = ()) -> list[Publish]:
        """A device's tags as they are now (``at`` their timestamp, default ``now``), and
        ``series``: (name, datatype, value, timestamp) values of metrics in time order, all sent
        (a batch of window scores). A device new to a born node gets its DBIRTH; one born already
        a DDATA of what changed. Nothing before the node's birth: the birth will carry it.
        ValueError for a device id :meth:`device_problem` refuses."""
        current = self._devices.get(device)
        if current is None:
            problem = self.device_problem(device)
            if problem:
                raise ValueError(problem)
            current = self._devices[device] = {}
            self._folded[device.lower()] = device
        series = [(name, dt, value, now if ts is None else ts) for name, dt, value, ts in series]  # None: no time known
        for name, datatype, value, ts in series:  # the last of each goes into the birth
            current[name] = Tag(datatype, value, ts)
        at = now if at is None else at
        if not self.born:
            self._update(current, tags, at)
            return []
        if device not in self._born_devices:
            self._update(current, tags, at)
            return [self._device_birth(device, now)]
        changed = self._update(current, tags, at)
        metrics = [self._metric(device, name, current[name], False) for name in changed]
        metrics += [self._metric(device, name, Tag(dt, value, ts), False) for name, dt, value, ts in series]
        return [self._publish("DDATA", device, metrics, now)] if metrics else []

    def _set(self, device: str | None, current: dict[str, Tag], tags: Mapping[str, tuple[int, sp.Value]],
             now: int) -> Publish | None:
        changed = self._update(current, tags, now)
        if not (self.born and changed):
            return None
        return self._publish("NDATA", None, [self._metric(None, n, current[n], False) for n in changed], now)

    @staticmethod
    def _update(current: dict[str, Tag], tags: Mapping[str, tuple[int, sp.Value]], now: int) -> list[str]:
        changed = []
        for name, (datatype, value) in tags.items():
            old = current.get(name)
            if old is None or old.datatype != datatype or not _same(old.value, value):
                current[name] = Tag(datatype, value, now)
                changed.append(name)
        return changed

    def birth(self, bd_seq: int, now: int) -> list[Publish]:
        """NBIRTH (seq 0, ``bd_seq`` of the will in force) and every device's DBIRTH: on a new
        connection, and in answer to a rebirth request (same connection, same ``bd_seq``)."""
        metrics = [Metric(BD_SEQ, sp.INT64, bd_seq, now), Metric(REBIRTH, sp.BOOLEAN, False, now)]
        metrics += [self._metric(None, name, tag, True) for name, tag in self._node.items()]
        self.born = True
        self._born_devices.clear()
        out = [self._publish("NBIRTH", None, metrics, now)]
        return out + [self._device_birth(device, now) for device in self._devices]

    def _device_birth(self, device: str, now: int) -> Publish:
        self._born_devices.add(device)
        metrics = [self._metric(device, name, tag, True) for name, tag in self._devices[device].items()]
        return self._publish("DBIRTH", device, metrics, now)


def _same(a: sp.Value, b: sp.Value) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN: unchanged
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class Command:
    """A command for the node (``device`` None) or one of its devices: the metrics a host wrote."""

    device: str | None
    metrics: Mapping[str, sp.Value]


def parse_command(node: EdgeNode, topic: str, payload: bytes) -> Command:
    """The NCMD or DCMD on ``topic``; ValueError (or :class:`~.sparkplug_payload.PayloadError`)
    naming what is wrong. Metrics written by alias are named by the node's aliases."""
    parts = topic.split("/")
    if len(parts) == 4 and topic == node.topic("NCMD"):
        device = None
    elif len(parts) == 5 and "/".join(parts[:4]) == node.topic("DCMD"):
        device = parts[4]
    else:
        raise ValueError(f"{topic!r} is not a command for edge node {node.group}/{node.edge}")
    by_alias = {alias: name for (dev, name), alias in node._alias.items() if dev == device}
    metrics: dict[str, sp.Value] = {}
    for m in sp.decode(payload).metrics:
        name = m.name if m.name is not None else by_alias.get(m.alias) if m.alias is not None else None
        if name is None:
            raise ValueError(f"a metric without a name and with alias {m.alias} that this node did not give")
        metrics[name] = m.value
    return Command(device, metrics)
