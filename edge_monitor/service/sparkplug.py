"""Sparkplug B 3.0 edge node beside the JSON topics (``sparkplug:`` in the configuration,
``docs/scada.md``): the monitor appears in SCADA as an edge node and each machine as a device
whose alarm, thresholds and cut figures are tags, with no parsing.

A sink, as the outbox is: the monitor hands it the same outputs it publishes as JSON
(:meth:`SparkplugEdge.outputs`) and its status (:meth:`SparkplugEdge.status`); what Sparkplug
shows follows from them (``core/sparkplug_tags``, ``core/sparkplug_node``). The JSON topics stay
authoritative: nothing here is waited for by a checkpoint or an acknowledgement, and what cannot
be sent while disconnected is counted (``sparkplug_unsent``), since the next birth carries the
current state anyway.

Its own MQTT connection (one will per connection: the will is the NDEATH), clean start and
session expiry 0. ``bdSeq`` goes up by one for every connection the broker accepted, wrapping
255 → 0, and is kept across restarts in ``sparkplug.bd_seq_file``: the will in force and the
NBIRTH that follows carry the same one. The network thread only queues what happens (a
connection, a message); the main loop calls :meth:`SparkplugEdge.turn` every turn, which makes the
births, answers rebirth requests and hands device resets back to the monitor, so that ``seq``
order is wire order without a lock.

With ``primary_host_id`` the births wait until that host's retained ``STATE`` says online (on every
connection: the broker sends it again after each subscription); when it goes offline the node
disconnects with its will, the NDEATH, and starts over (a new ``bdSeq``), as the specification asks.

A deliberate stop disconnects with reason 0x04, "disconnect with will message": the broker
publishes the NDEATH, and nothing here waits for it. Sparkplug never takes the monitor down: a
failure in here is logged, counted (``failures``) and answered with a fresh birth.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ..core import sparkplug_payload as sp
from ..core.alarm import Thresholds
from ..core.outbound import AlarmMessage, ScoreMessage, StatusMessage, SummaryMessage
from ..core.sparkplug_node import NAMESPACE, REBIRTH, EdgeNode, Publish, id_problem, parse_command
from ..core.sparkplug_tags import RESET, alarm_tags, device_tags, ms, node_tags, score_point, summary_tags, threshold_tags
from ..core.spec import Spec, setting
from ..core.steps import Output
from . import parsers
from .mqtt import BrokerSettings, connect, make_client
from .parsers import local_path
from .state import sync_directory, write_synced


def _sparkplug_id(what: str, optional: bool = False) -> Callable[[Any, Any], Any]:
    def parse(value: Any, _base: Any) -> Any:
        if value is None and optional:
            return None
        problem = id_problem(value, what)
        if problem:
            raise ValueError(problem)
        return value

    return parse


@dataclass(frozen=True)
class SparkplugSettings(Spec):
    """The Sparkplug B edge node (off by default)."""

    section = "sparkplug"
    enabled: bool = setting(False)
    group_id: str = setting("edge-monitor", parse=_sparkplug_id("sparkplug.group_id"))
    edge_node_id: str | None = setting(None, parse=_sparkplug_id("sparkplug.edge_node_id", optional=True))  # None: the instance
    # births wait for this host application's STATE online; its going offline restarts the session
    primary_host_id: str | None = setting(None, parse=_sparkplug_id("sparkplug.primary_host_id", optional=True))
    aliases: bool = setting(True)  # data by alias (names in births only): smaller payloads
    # window scores as Window/Score values, batched per machine this often; None: not sent
    window_scores_interval_s: float | None = setting(None, low=1.0)
    device_reset: bool = setting(False)  # whether a host may reset a machine (Device Control/Reset)
    username: str | None = setting(None, parse=parsers.user_name)  # None: the inputs' user
    password_file: Path | None = setting(None, parse=parsers.existing_file, requires="username")
    # the last bdSeq, kept across restarts; None: sparkplug-bdseq beside the state file
    bd_seq_file: Path | None = setting(None, parse=local_path)


class BdSeqFile:
    """The last ``bdSeq`` used, in a one-line file: each new connection takes the next."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def last(self) -> int | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        value = int(text)
        if not 0 <= value <= 255:
            raise ValueError(f"bdSeq {value} is not 0-255")
        return value

    def advance(self, last: int | None) -> int:
        """The next ``bdSeq`` after ``last`` (0 when None), on disk before it is used: after a
        power cut the broker may still hold the old will, and a repeated bdSeq would match it."""
        value = 0 if last is None else (last + 1) % 256
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(write_synced(self.path.parent, f".{self.path.name}.", f"{value}\n".encode()), self.path)
        sync_directory(self.path.parent)
        return value


@dataclass(frozen=True)
class Reset:
    """A host asked to reset ``machine`` (a DCMD ``Device Control/Reset``)."""

    machine: str
    topic: str


@dataclass(frozen=True)
class Refused:
    """A command the node does not carry out, and why (for the errors topic)."""

    topic: str
    reason: str


def _contained(method: Callable) -> Callable:
    """Sparkplug must never take the monitor down: an exception in ``method`` is logged and
    counted, and the node births again (same bdSeq) to put the host back in step."""

    @functools.wraps(method)
    def guarded(self: "SparkplugEdge", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the JSON path goes on whatever happens here
            self.failures += 1
            self._rebirth_due = True
            self.log.error("sparkplug_failed", step=method.__name__, error=f"{type(exc).__name__}: {exc}",
                           detail="Sparkplug births again; the JSON topics are not affected", exc_info=True)
            return [] if method.__name__ == "turn" else None

    return guarded


class SparkplugEdge:
    def __init__(self, settings: SparkplugSettings, broker: BrokerSettings, instance: str, bd_seq_file: Path,
                 thresholds: Thresholds, alarm_of: Callable[[str], AlarmMessage], log: Any) -> None:
        """``alarm_of(machine)``: the machine's alarm state as the retained JSON alarm shows it.
        Raises OSError when the ``bdSeq`` file cannot be read or written, BrokerError for a
        password or TLS file."""
        self.settings = settings
        self.log = log
        self.node = EdgeNode(settings.group_id, settings.edge_node_id or instance, settings.aliases)
        self.thresholds = thresholds
        self.alarm_of = alarm_of
        self._summaries: dict[str, SummaryMessage] = {}
        self._scores: dict[str, list[tuple[str, int, sp.Value, int]]] = {}  # waiting window scores
        self._next_scores = 0.0
        self.unsent = 0  # messages that could not be sent (disconnected): the next birth carries the state
        self.births = 0
        self.failures = 0  # exceptions contained (see _contained)
        self._rebirth_due = False
        self._bd_file = BdSeqFile(bd_seq_file)
        try:
            last = self._bd_file.last()
        except ValueError as exc:
            log.warning("sparkplug_bdseq_unreadable", path=str(bd_seq_file), reason=str(exc), detail="starting at 0")
            last = None
        self.bd_seq = self._bd_file.advance(last)  # the will's, from the first connection on
        self._used = False  # whether the will in force has been on an accepted connection
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._connections = 0  # accepted connections (network thread)
        self._handled = 0  # the connection whose "connected" the main thread has taken (its bdSeq below)
        self._born_on = -1  # the connection the present birth was made on
        self._connection_bd: int | None = None  # the bdSeq of the will of connection _handled
        self._host_online = settings.primary_host_id is None
        self._host_ts = -1
        self._stopping = False
        self.state_topic = None if settings.primary_host_id is None else f"{NAMESPACE}/STATE/{settings.primary_host_id}"
        self.client = make_client(broker.for_sparkplug(settings.username, settings.password_file), clean_start=True)
        self._connect_args = (self.client.host, self.client.port, self.client.keepalive)
        self._set_will()
        self._prior_pre_connect = self.client.on_pre_connect  # the reconnection back-off (mqtt.Reconnect)
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --------------------------------------------------------------------- network thread

    def _set_will(self) -> None:
        self.client.will_set(self.node.topic("NDEATH"), self.node.death(self.bd_seq, _now_ms()), qos=1, retain=False)

    def _on_pre_connect(self, client, userdata) -> None:
        if self._prior_pre_connect is not None:
            self._prior_pre_connect(client, userdata)
        if self._used:  # the broker has had this will: the next connection's carries the next bdSeq
            try:
                self.bd_seq = self._bd_file.advance(self.bd_seq)
            except OSError as exc:
                self.bd_seq = (self.bd_seq + 1) % 256
                self.log.error("sparkplug_bdseq_not_saved", path=str(self._bd_file.path), reason=str(exc),
                               detail="a restart may repeat a bdSeq")
            self._set_will()
            self._used = False

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            return
        self._used = True
        self._connections += 1
        topics = [(t, 1) for t in self.node.command_topics()]
        if self.state_topic is not None:
            topics.append((self.state_topic, 1))
        client.subscribe(topics)
        self._events.put(("connected", self._connections, self.bd_seq))

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self._events.put(("lost",))
        if not self._stopping:
            self.log.warning("sparkplug_disconnected", reason=str(reason), reconnect="automatic, with a new bdSeq")

    def _on_message(self, client, userdata, message) -> None:
        self._events.put(("message", message.topic, bytes(message.payload)))

    # --------------------------------------------------------------------- main thread

    def start(self) -> None:
        """Connect (raises BrokerError); the births follow in :meth:`turn`."""
        connect(self.client)

    @_contained
    def turn(self) -> list[Reset | Refused]:
        """What happened on the connection since the last turn: births, rebirths, the primary
        host's state; the device resets (and refused commands) for the monitor. Window scores
        due go out."""
        todo: list[Reset | Refused] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event[0] == "connected":
                self.node.lost()
                self._handled, self._connection_bd = event[1], event[2]
                self._birth_if_live("connected")
            elif event[0] == "lost":
                self.node.lost()
                # a new connection waits for the primary host's STATE again (the broker resends it)
                self._host_online = self.settings.primary_host_id is None
            else:
                todo += self._message(event[1], event[2])
        if self._rebirth_due:
            self._birth_if_live("after a failure")
        now = time.monotonic()
        interval = self.settings.window_scores_interval_s
        if interval is not None and now >= self._next_scores:
            self._next_scores = now + interval
            for machine in list(self._scores):
                self._send(self.node.set_device(machine, {}, _now_ms(), series=self._scores.pop(machine)))
        return todo

    def _live(self) -> bool:
        """Connected, on the connection whose bdSeq the main thread knows: births may go out (a
        birth made for a connection paho has replaced already would carry the old will's bdSeq)."""
        return self.client.is_connected() and self._handled == self._connections

    def _birth_if_live(self, why: str) -> None:
        if self._host_online and self._live():
            self._rebirth_due = False
            self._born_on = self._handled
            sent = self._send(self.node.birth(self._connection_bd, _now_ms()), birth=True)
            self.births += 1
            self.log.info("sparkplug_birth", why=why, bd_seq=self._connection_bd, devices=len(self.node.devices),
                          sent=sent, unsent_before=self.unsent)

    def _message(self, topic: str, payload: bytes) -> list[Reset | Refused]:
        if topic == self.state_topic:
            self._host_state(payload)
            return []
        try:
            command = parse_command(self.node, topic, payload)
        except (ValueError, UnicodeError) as exc:
            return [Refused(topic, f"not a Sparkplug B command: {exc}")]
        if command.device is None:
            if command.metrics.get(REBIRTH) is True:
                self._birth_if_live("rebirth requested")  # same connection, same bdSeq, no NDEATH
                return []
            return [Refused(topic, f"no such node command: {', '.join(command.metrics) or 'no metrics'}; "
                                   f"this node takes {REBIRTH}")]
        if not self.node.has_device(command.device):
            return [Refused(topic, f"{command.device!r} is not a device of this node: a machine's device is born "
                                   "at its first cut, or at start when it has an alarm state")]
        if command.metrics.get(RESET) is not True:
            return [Refused(topic, f"no such device command: {', '.join(command.metrics) or 'no metrics'}"
                                   + (f"; devices take {RESET} = true" if self.settings.device_reset else ""))]
        if not self.settings.device_reset:
            return [Refused(topic, "device resets over Sparkplug are off (sparkplug.device_reset); "
                                   "reset through the JSON cmd topic, or turn them on")]
        return [Reset(command.device, topic)]

    def _host_state(self, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, ts = state["online"], state["timestamp"]
            if not isinstance(online, bool) or not isinstance(ts, int):
                raise ValueError("online must be a bool and timestamp an integer")
        except (ValueError, KeyError, TypeError) as exc:
            self.log.warning("sparkplug_host_state_ignored", topic=self.state_topic, reason=str(exc))
            return
        if ts < self._host_ts:
            return  # an older state than one seen already
        self._host_ts = ts
        was = self._host_online
        self._host_online = online
        self.log.info("sparkplug_host_state", host=self.settings.primary_host_id, online=online)
        if online and not self.node.born:
            self._birth_if_live("primary host online")
        elif not online and was and self.node.born:
            self._start_over()

    def _start_over(self) -> None:
        """The primary host went offline: disconnect with the will (the NDEATH), connect again (a
        new bdSeq) and wait for the host to come back before the births."""
        self.log.warning("sparkplug_host_offline", host=self.settings.primary_host_id,
                         detail="NDEATH sent; reconnecting, births when the host is back")
        self.node.lost()
        self._disconnect_with_will()
        self.client.connect_async(*self._connect_args, clean_start=True)
        self.client.loop_start()

    def _disconnect_with_will(self) -> None:
        """MQTT 5 reason 0x04: the broker publishes the will, this connection's NDEATH, so the
        NDEATH always carries the bdSeq of the will in force, and nothing waits for it here."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def _send(self, messages: Iterable[Publish], birth: bool = False) -> int:
        sent = 0
        live = self._live() and (birth or self._born_on == self._handled)
        for m in messages:
            if live and self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain).rc == paho.MQTT_ERR_SUCCESS:
                sent += 1
            else:
                self.unsent += 1
        return sent

    # --------------------------------------------------------------------- what the monitor shows

    @_contained
    def machines(self, alarms: Iterable[AlarmMessage]) -> None:
        """Machines known before any input (the alarm states restored at start): devices from the
        first birth on, in the state they resume in."""
        for alarm in alarms:
            self._device(alarm.machine, alarm)

    @_contained
    def seen(self, machine: str) -> None:
        """A machine's input was taken: its device is born at its first cut."""
        if not self.node.has_device(machine):
            self._device(machine, self.alarm_of(machine))

    def _device(self, machine: str, alarm: AlarmMessage) -> bool:
        problem = self.node.device_problem(machine)
        if problem:
            self.log.warning("sparkplug_device_refused", machine=machine, reason=problem)
            return False
        tags = device_tags(alarm, self.thresholds, self._summaries.get(machine),
                           self.settings.window_scores_interval_s is not None, self.settings.device_reset)
        self._send(self.node.set_device(machine, tags, _now_ms()))
        return True

    @_contained
    def outputs(self, outputs: Iterable[Output]) -> None:
        """What the monitor published as JSON, as tags: alarms and cut summaries at once (with
        the machine's waiting window scores first), window scores batched."""
        window_scores = self.settings.window_scores_interval_s is not None
        for out in outputs:
            machine, m = out.machine, out.message
            if not self.node.has_device(machine) and not self._device(machine, self.alarm_of(machine)):
                continue
            if type(m) is ScoreMessage:
                if window_scores:
                    self._scores.setdefault(machine, []).append(score_point(m))
                continue
            now = _now_ms()
            series = self._scores.pop(machine, [])
            if type(m) is AlarmMessage:
                self._send(self.node.set_device(machine, alarm_tags(m), now, series=series))
            elif type(m) is SummaryMessage:
                self._summaries[machine] = m
                self._send(self.node.set_device(machine, summary_tags(m), now, at=ms(m.ended) or now, series=series))

    @_contained
    def configure(self, thresholds: Thresholds) -> None:
        """A reloaded bundle's thresholds, on every device."""
        self.thresholds = thresholds
        for machine in self.node.devices:
            self._send(self.node.set_device(machine, threshold_tags(thresholds), _now_ms()))

    @_contained
    def status(self, status: StatusMessage, machines: int) -> None:
        publish = self.node.set_node(node_tags(status, machines), _now_ms())
        if publish is not None:
            self._send([publish])

    def stop(self) -> None:
        """A deliberate stop: disconnect with the will, the NDEATH."""
        self._stopping = True
        self._disconnect_with_will()


def _now_ms() -> int:
    return int(time.time() * 1000)
