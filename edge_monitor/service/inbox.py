"""The inbox: inputs from paho's network thread, handed to the main loop as calls to make.

paho routes each message by its subscription filter (``message_callback_add``): one callback per
input kind, so the topic is parsed once and the payload decoded by that kind's parser. The network
thread never waits for scoring: it checks the topic, drops the inputs of machines this monitor does
not watch before decoding their payload, parses, and puts a call on the queue (``Received``,
``Rejected`` or ``Connected`` for the main loop's handlers). The main loop runs the calls in
arrival order, so each machine's inputs are applied in the order the broker delivered them.

paho acknowledges each input when its callback returns. Acknowledging an input only once its
results are published (at least once across a crash) would start here: ``make_client``'s
``manual_ack``, and the message's id added to ``Received`` for the main loop.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..core.inbound import PAYLOAD_PARSERS, InboundMessage, Limits
from ..core.topics import InboundTopic, ProtocolError, Topics


@dataclass(frozen=True, eq=False)
class Received:
    """A valid input of a watched machine."""

    topic: str
    where: InboundTopic
    message: InboundMessage
    received: float  # monotonic time it arrived


@dataclass(frozen=True)
class Rejected:
    topic: str
    reason: str


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
                 unwatched: Callable[[str], str | None], handlers: Handlers) -> None:
        self.topics, self.limits = topics, limits
        self.unwatched = unwatched  # why a machine's inputs are not ours (None: they are); thread-safe
        self.handlers = handlers
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        for kind, topic_filter in topics.inputs.items():
            client.message_callback_add(topic_filter, self._receiver(kind))
        client.on_message = _ignore  # only late retained alarms and sync echoes of the start-up read-back

    def subscribe(self, client: paho.Client, session_present: bool) -> None:
        """On every (re)connection: subscribe to the inputs (QoS 1)."""
        # Inputs are never retained; a retained one must not be replayed at every resubscribe.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(f, options) for f in self.topics.inputs.values()])
        self._put(self.handlers.connected, Connected(session_present))

    def get(self, timeout: float) -> Callable[[], None] | None:
        """The next call for the main loop, or None after ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def qsize(self) -> int:
        return self._queue.qsize()

    def _put(self, handler: Callable, item: object) -> None:
        self._queue.put(lambda: handler(item))

    def _receiver(self, kind: str) -> Callable:
        parse = PAYLOAD_PARSERS[kind]

        def on_message(client, userdata, message) -> None:  # paho's network thread
            topic = message.topic
            if topic == self.topics.sync:  # R/_monitor/cut/sync matches R/+/cut/#: ours, not an input
                return
            try:
                where = self.topics.parse(topic)
                problem = self.unwatched(where.machine)  # before the payload is decoded
                if problem:
                    raise ProtocolError(problem)
                inbound = Received(topic, where, parse(message.payload, self.limits), time.monotonic())
            except ProtocolError as exc:
                self._put(self.handlers.rejected, Rejected(topic, exc.reason))
                return
            self._put(self.handlers.received, inbound)

        return on_message


def _ignore(client, userdata, message) -> None:
    pass
