"""The inbox: inputs from paho's network thread, handed to the main loop as calls to make.

paho routes each message by its subscription filter (``message_callback_add``): one callback per
input kind, so the topic is parsed once and the payload decoded by that kind's parser. The network
thread never waits for scoring: it checks the topic, drops the inputs of machines this monitor does
not watch before decoding their payload, parses, and puts a call on the queue (``Received``,
``Rejected`` or ``Connected`` for the main loop's handlers). The main loop runs the calls in
arrival order, so each machine's inputs are applied in the order the broker delivered them.

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

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..core.inbound import PAYLOAD_PARSERS, InboundMessage, Limits
from ..core.topics import InboundTopic, ProtocolError, Topics
from .mqtt import acknowledge


@dataclass(frozen=True)
class Delivery:
    """How an input came: what acknowledging it takes, and whether it may be a duplicate."""

    mid: int  # packet id (0 for QoS 0: nothing to acknowledge)
    qos: int
    dup: bool  # the broker sends it again (the monitor may have had it before a crash or reconnect)
    connection: int  # which connection it came on: a packet id means nothing on another


NO_DELIVERY = Delivery(0, 0, False, 0)


@dataclass(frozen=True, eq=False)
class Received:
    """A valid input of a watched machine."""

    topic: str
    where: InboundTopic
    message: InboundMessage
    received: float  # monotonic time it arrived
    delivery: Delivery = NO_DELIVERY


@dataclass(frozen=True)
class Rejected:
    topic: str
    reason: str
    delivery: Delivery = NO_DELIVERY


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class Handlers:
    """What the main loop does with each kind of inbox item."""

    received: Callable[[Received], None]
    rejected: Callable[[Rejected], None]
    connected: Callable[[Connected], None]


class Inbox:
    """Subscribes ``client`` to the inputs under ``topics`` and queues them for the main loop."""

    def __init__(self, client: paho.Client, topics: Topics, limits: Limits,
                 unwatched: Callable[[str], str | None], handlers: Handlers, max_queued: int = 10_000) -> None:
        self.topics, self.limits = topics, limits
        self.unwatched = unwatched  # why a machine's inputs are not ours (None: they are); thread-safe
        self.handlers = handlers
        self._queue: queue.Queue[tuple[float, Callable[[], None]]] = queue.Queue()
        self.max_queued = max_queued
        self._room = threading.Semaphore(max_queued)  # inputs the queue may still take
        self._full_since: float | None = None  # since when input waits at the broker (the queue is full)
        self._closed = threading.Event()
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
        client.subscribe([(f, options) for f in self.topics.inputs.values()] + [(self.topics.ping, 0)])
        self._put(self.handlers.connected, Connected(session_present), counts=False)

    def get(self, timeout: float) -> Callable[[], None] | None:
        """The next call for the main loop, or None after ``timeout`` seconds."""
        try:
            _, call = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        return call

    def qsize(self) -> int:
        return self._queue.qsize()

    def disconnected(self) -> None:
        """The connection is lost (paho's network thread): packet ids of inputs received on it mean
        nothing any more; no acknowledgement of them may go out on the next one."""
        with self.ack_lock:
            self.connection += 1

    def lag(self, now: float) -> float:
        """How far behind the monitor is, in seconds: the age of the oldest queued input, or, while
        the queue is full and input waits at the broker, how long that has lasted (0: keeping up)."""
        with self._queue.mutex:
            oldest = now - self._queue.queue[0][0] if self._queue.queue else 0.0
            if not self._queue.queue:
                self._full_since = None  # drained: nothing waits for room
        full = self._full_since
        return max(0.0, oldest, 0.0 if full is None else now - full)

    def close(self) -> None:
        """Stop taking inputs (shutting down): a network thread waiting for room drops what it
        holds, unacknowledged, so the broker sends it again to the next session."""
        self._closed.set()

    def _put(self, handler: Callable, item: object, counts: bool = True) -> None:
        if counts:
            if self._full_since is not None and self._queue.qsize() < self.max_queued // 2:
                self._full_since = None  # caught up
            if not self._room.acquire(blocking=False):
                if self._full_since is None:
                    self._full_since = time.monotonic()
                while not self._room.acquire(timeout=0.1):
                    if self._closed.is_set():
                        return

            def call() -> None:
                self._room.release()
                handler(item)
        else:
            def call() -> None:
                handler(item)
        self._queue.put((time.monotonic(), call))

    def _on_ping(self, client, userdata, message) -> None:  # paho's network thread
        self.last_delivery = time.monotonic()

    def _receiver(self, kind: str) -> Callable:
        parse = PAYLOAD_PARSERS[kind]

        def on_message(client, userdata, message) -> None:  # paho's network thread
            topic = message.topic
            delivery = Delivery(message.mid if message.qos else 0, message.qos, bool(message.dup), self.connection)
            now = self.last_delivery = time.monotonic()
            if topic == self.topics.sync:  # R/_monitor/cut/sync matches R/+/cut/#: ours, not an input
                acknowledge(client, message)
                return
            try:
                where = self.topics.parse(topic)
                problem = self.unwatched(where.machine)  # before the payload is decoded
                if problem:
                    raise ProtocolError(problem)
                inbound = Received(topic, where, parse(message.payload, self.limits), now, delivery)
            except ProtocolError as exc:
                self._put(self.handlers.rejected, Rejected(topic, exc.reason, delivery))
                return
            self._put(self.handlers.received, inbound)

        return on_message


def _ignore(client, userdata, message) -> None:
    """Not an input (a late retained alarm of the start-up read-back): acknowledged right away."""
    acknowledge(client, message)
