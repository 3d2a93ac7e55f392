"""Whether the monitor's threads still do their work: paho's network threads and the checkpoint
writer alive, and the input connection delivering. Connected but silent for
``delivery.stall_timeout_s``, not even the monitor's own ping (sent every ``PING_EVERY`` seconds on
the output connection, received on the input one), means the input thread is stuck: the process
exits (code 1) and systemd restarts it; nothing is lost, since what was not acknowledged comes
again."""

from __future__ import annotations

import time
from typing import Iterable

import paho.mqtt.client as paho

from .checkpoint_writer import CheckpointWriter
from .inbox import Inbox

PING_EVERY = 5.0  # seconds between the monitor's pings to itself through the broker


class NetworkStalled(RuntimeError):
    """The MQTT network thread (or the checkpoint writer's) died, or stopped delivering: exit 1,
    and systemd restarts the service (nothing is lost: what was not acknowledged comes again)."""


class Liveness:
    def __init__(self, inputs: paho.Client, outputs: paho.Client, ping_topic: str, inbox: Inbox,
                 writer: CheckpointWriter, stall_timeout_s: float) -> None:
        self.inputs, self.outputs, self.ping_topic = inputs, outputs, ping_topic
        self.inbox, self.writer, self.stall_timeout_s = inbox, writer, stall_timeout_s
        self._pinged = 0.0  # monotonic time of the last ping to itself
        self.connected_at = time.monotonic()  # of the input connection, last (re)connection

    def check(self, now: float, clients: Iterable[paho.Client]) -> None:
        """Raise :class:`NetworkStalled` when the network thread of one of ``clients`` (the monitor's
        connections) died, or when connected but its own ping has not come back in time."""
        for client in clients:  # (Sparkplug's is restarted on the main thread only: never seen absent)
            thread = getattr(client, "_thread", None)  # paho keeps its loop thread private
            if thread is None or not thread.is_alive():
                raise NetworkStalled("an MQTT network thread is not running")
        if not self.writer.alive:
            failure = self.writer.failure
            raise NetworkStalled("the checkpoint writer stopped"
                                 + ("" if failure is None else f": {type(failure).__name__}: {failure}"))
        if not (self.inputs.is_connected() and self.outputs.is_connected()):
            return  # paho reconnects by itself; the will says offline meanwhile
        if now - self._pinged >= PING_EVERY:  # out on one connection, back on the other
            self.outputs.publish(self.ping_topic, b"", qos=0)
            self._pinged = now
        silent = now - max(self.inbox.last_delivery, self.connected_at)
        if silent > self.stall_timeout_s:
            raise NetworkStalled(f"connected, but nothing has come in for {silent:.0f} s, not even the monitor's "
                                 "own ping: the MQTT network thread is stuck")
