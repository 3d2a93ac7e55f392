"""Publishing with flow control: at most ``max_unacked`` QoS 1 messages wait for the broker.

Memory stays bounded at any speed, and nothing is lost while the broker is briefly away: paho
resends after reconnecting.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MAX_UNACKED = 100  # QoS 1 messages published and not yet acknowledged
Message = tuple[str, bytes]  # (topic, payload)


class PublishError(RuntimeError):
    """A message could not be handed to the MQTT client."""


class Publisher:
    """Publishes QoS 1 (or 2) messages on ``client`` with at most ``max_unacked`` waiting for the
    broker's acknowledgement; :meth:`publish` blocks while that many are pending.

    It owns the client's ``on_publish`` callback: publish on this client only through it."""

    def __init__(self, client: paho.Client, max_unacked: int = MAX_UNACKED) -> None:
        if max_unacked < 1:
            raise ValueError("max_unacked must be at least 1")
        self.client = client
        self.max_unacked = max_unacked
        self.published = 0
        self.refused = 0  # acknowledged with a failure reason code (e.g. not authorised)
        self.last_refusal: str | None = None
        # (topic, reason) -> messages refused: tells a refused command from a refused signal
        self.refusals: Counter[tuple[str, str]] = Counter()
        self._cond = threading.Condition()
        self._pending: dict[int, str] = {}  # mid -> topic
        # acknowledged before publish() had recorded the mid: mid -> the refusal reason, or None
        self._early: dict[int, str | None] = {}
        client.on_publish = self._on_publish

    @property
    def unacked(self) -> int:
        with self._cond:
            return len(self._pending)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                content_type: str | None = None) -> int:
        """Publish once fewer than ``max_unacked`` messages are pending; returns the message id.
        While the connection is down the message waits in paho and is sent after reconnecting.
        ``content_type``: the MQTT 5 content type (the compact encoding of a chunk has one)."""
        if qos not in (1, 2):
            raise ValueError("Publisher is for QoS 1 or 2 (it waits for acknowledgements); use client.publish for QoS 0")
        with self._cond:
            while len(self._pending) >= self.max_unacked:
                self._cond.wait(0.5)
        properties = None
        if content_type is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = content_type
        info = self.client.publish(topic, payload, qos, retain, properties)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: queued for later
            raise PublishError(f"cannot publish to {topic}: {paho.error_string(info.rc)}")
        with self._cond:
            if info.mid in self._early:
                refusal = self._early.pop(info.mid)
                if refusal is not None:
                    self.refusals[topic, refusal] += 1
            else:
                self._pending[info.mid] = topic
            self.published += 1
        return info.mid

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every published message is acknowledged; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(0.5, left))
        return True

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        refusal = str(reason) if reason is not None and reason.is_failure else None
        with self._cond:
            topic = self._pending.pop(mid, None)
            if topic is None:
                self._early[mid] = refusal
            elif refusal is not None:
                self.refusals[topic, refusal] += 1
            if refusal is not None:
                self.refused += 1
                self.last_refusal = refusal
            self._cond.notify_all()
