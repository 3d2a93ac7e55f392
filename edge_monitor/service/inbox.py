"""The inbox: inputs from paho's network thread, handed to the main loop in batches.

paho routes each message by its subscription filter (``message_callback_add``): one callback per
input kind, so the topic is parsed once and the payload decoded by that kind's parser. The network
thread never waits for scoring: it checks the topic, drops the inputs of machines this monitor does
not watch before decoding their payload, parses, and appends the result (``Received``,
``Rejected`` or ``Connected``) to the queue. The main loop takes everything queued at once
(:meth:`Inbox.take`) and applies it in arrival order, so each machine's inputs are applied in the
order the broker delivered them.

Why batches: handing over one message at a time cost a lock, a semaphore and a thread wake-up per
message, more than the pipeline's own work (docs/performance.md). Now the network thread wakes the
main loop only when it sleeps, and the main loop, once woken, lets a few milliseconds of input
gather (``GATHER``) before it takes the lot: latency grows by at most that, and the per-message
cost of the hand-over all but disappears.

Inputs are acknowledged by the main loop, not here (``manual_ack``): each item carries its
:class:`Delivery` (packet id, QoS, whether the broker marked it a redelivery, and the connection
it came on), and the monitor acknowledges it once a checkpoint covers its effect.

Backpressure: the queue holds at most ``max_queued`` inputs. When it is full, the network thread
waits for room, so further inputs wait at the broker (unacknowledged, in its queue for this
session) rather than in this process's memory. The broker's own bound (the receive maximum this
client announces) would do the same, but Mosquitto 2.0.11 lets more through after each
acknowledgement.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Union

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..core.inbound import PAYLOAD_PARSERS, InboundMessage, Limits
from ..core.topics import InboundTopic, ProtocolError, Topics
from .mqtt import acknowledge

GATHER = 0.005  # seconds the woken main loop lets input gather before it takes the batch
MAX_TAKE = 2000  # items per take: the loop still turns (scores, checkpoints) during a backlog
# What ``unwatched`` says of a machine another instance on the root owns (core/partition.py):
# its inputs are dropped, counted, and not reported as errors.
OTHER_INSTANCE = "the machine of another instance"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How an input came: what acknowledging it takes, and whether it may be a duplicate."""

    mid: int  # packet id (0 for QoS 0: nothing to acknowledge)
    qos: int
    dup: bool  # the broker sends it again (the monitor may have had it before a crash or reconnect)
    connection: int  # which connection it came on: a packet id means nothing on another


NO_DELIVERY = Delivery(0, 0, False, 0)


@dataclass(frozen=True, eq=False, slots=True)
class Received:
    """A valid input of a watched machine."""

    topic: str
    where: InboundTopic
    message: InboundMessage
    received: float  # monotonic time it arrived
    delivery: Delivery = NO_DELIVERY


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input refused before it reached a pipeline."""

    topic: str
    reason: str
    delivery: Delivery = NO_DELIVERY
    stage: str = "payload"  # what refused it: "topic", "unwatched_machine" or "payload" (a bounded label)
    kind: str = ""  # the input kind its subscription is for: "cut", "signal" or "cmd"


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool


Item = Union[Received, Rejected, Connected]


class Inbox:
    """Subscribes ``client`` to the inputs under ``topics`` and queues them for the main loop."""

    def __init__(self, client: paho.Client, topics: Topics, limits: Limits,
                 unwatched: Callable[[str], str | None], max_queued: int = 10_000) -> None:
        self.topics, self.limits = topics, limits
        self.unwatched = unwatched  # why a machine's inputs are not ours (None: they are); thread-safe
        self.max_queued = max_queued
        self._items: deque[tuple[float, Item]] = deque()  # (monotonic time queued, item)
        # Inputs queued, or taken and not yet applied (:meth:`done`): what max_queued bounds
        # (Connected does not count).
        self._inputs = 0
        self._waiting_for_room = 0  # network threads waiting for room: input waits at the broker
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # the main loop sleeps on it
        self._room = threading.Condition(self._lock)  # the network thread waits on it when full
        self._sleeping = False  # the main loop waits for input: wake it
        self._full_since: float | None = None  # since when input waits at the broker (the queue is full)
        self._closed = False
        self.connection = 0  # counts connections (and losses of one): deliveries say which one they came on
        self.ack_lock = threading.Lock()  # held while acknowledging, and while the connection changes
        # When the network thread last delivered anything (an input, or our own ping): a backlog
        # can hold the ping back for minutes behind inputs (Mosquitto 2.0.11 sends far more than
        # the receive maximum), but then inputs keep coming.
        self.last_delivery = time.monotonic()
        for kind, topic_filter in topics.inputs.items():
            client.message_callback_add(topic_filter, self._receiver(kind))
        client.message_callback_add(topics.ping, self._on_ping)
        client.on_message = _ignore  # only late retained alarms and sync echoes of the start-up read-back

    def subscribe(self, client: paho.Client, session_present: bool) -> None:
        """On every (re)connection: subscribe to the inputs (QoS 1)."""
        # Inputs are never retained; a retained one must not be replayed at every resubscribe.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        with self.ack_lock:
            self.connection += 1  # before any message of this connection is queued
        self.last_delivery = time.monotonic()
        # the other instances' retained statuses too: whose machines are whose
        filters = [(f, options) for f in self.topics.inputs.values()] + [(self.topics.ping, 0), (self.topics.statuses, 0)]
        client.subscribe(filters)
        self._put(Connected(session_present), counts=False)

    def take(self, timeout: float) -> list[Item]:
        """Everything queued (at most ``MAX_TAKE`` items), in arrival order; when nothing is, wait
        up to ``timeout`` seconds for input and let it gather for ``GATHER`` seconds first. Call
        :meth:`done` once they are applied: only then is their room given back, so that the inputs
        held in this process, queued or being applied, stay within ``max_queued``."""
        with self._lock:
            if not self._items:
                if timeout <= 0:
                    return []
                self._sleeping = True
                self._arrived.wait(timeout)
                self._sleeping = False
                if not self._items:
                    return []
                woken = True
            else:
                woken = False
        if woken:
            time.sleep(GATHER)
        with self._lock:
            queued = len(self._items)
            if queued < self.max_queued // 2 and not self._waiting_for_room:
                self._full_since = None  # caught up: input no longer waits for room
            n = min(queued, MAX_TAKE)
            return [self._items.popleft()[1] for _ in range(n)]

    def done(self, items: list[Item]) -> None:
        """``items`` from :meth:`take` are applied: their room is free again."""
        inputs = sum(type(item) is not Connected for item in items)
        if not inputs:
            return
        with self._lock:
            self._inputs -= inputs
            if self._waiting_for_room:
                self._room.notify_all()

    def qsize(self) -> int:
        return len(self._items)

    def disconnected(self) -> None:
        """The connection is lost (paho's network thread): packet ids of inputs received on it mean
        nothing any more; no acknowledgement of them may go out on the next one."""
        with self.ack_lock:
            self.connection += 1

    def lag(self, now: float) -> float:
        """How far behind the monitor is, in seconds: the age of the oldest queued input, or, while
        the queue is full and input waits at the broker, how long that has lasted (0: keeping up)."""
        with self._lock:
            oldest = now - self._items[0][0] if self._items else 0.0
            if not self._items and not self._waiting_for_room:
                self._full_since = None  # drained: nothing waits for room
            full = self._full_since
        return max(0.0, oldest, 0.0 if full is None else now - full)

    def close(self) -> None:
        """Stop taking inputs (shutting down): a network thread waiting for room drops what it
        holds, unacknowledged, so the broker sends it again to the next session."""
        with self._lock:
            self._closed = True
            self._room.notify_all()

    def _put(self, item: Item, counts: bool = True) -> None:  # paho's network thread
        with self._lock:
            if counts:
                if self._inputs >= self.max_queued:
                    if self._full_since is None:
                        self._full_since = time.monotonic()
                    self._waiting_for_room += 1
                    try:
                        while self._inputs >= self.max_queued:
                            if self._closed:
                                return
                            self._room.wait(0.1)
                    finally:
                        self._waiting_for_room -= 1
                self._inputs += 1
            self._items.append((time.monotonic(), item))
            if self._sleeping:
                self._sleeping = False  # one wake-up per sleep
                self._arrived.notify()

    def _on_ping(self, client, userdata, message) -> None:  # paho's network thread
        self.last_delivery = time.monotonic()

    def _receiver(self, kind: str) -> Callable:
        parse = PAYLOAD_PARSERS[kind]
        topics, limits, unwatched = self.topics, self.limits, self.unwatched

        def on_message(client, userdata, message) -> None:  # paho's network thread
            topic = message.topic
            qos = message.qos
            delivery = Delivery(message.mid if qos else 0, qos, bool(message.dup), self.connection)
            now = self.last_delivery = time.monotonic()
            if topic == topics.sync:  # R/_monitor/cut/sync matches R/+/cut/#: ours, not an input
                acknowledge(client, message)
                return
            stage = "topic"
            try:
                where = topics.parse(topic)
                problem = unwatched(where.machine)  # before the payload is decoded
                if problem:
                    stage = "unwatched_machine"
                    raise ProtocolError(problem)
                stage = "payload"
                content_type = getattr(message.properties, "ContentType", None)  # MQTT 5 only
                item = Received(topic, where, parse(message.payload, limits, content_type), now, delivery)
            except ProtocolError as exc:
                self._put(Rejected(topic, exc.reason, delivery, stage, kind))
                return
            self._put(item)

        return on_message


def _ignore(client, userdata, message) -> None:
    """Not an input (a late retained alarm of the start-up read-back): acknowledged right away."""
    acknowledge(client, message)
