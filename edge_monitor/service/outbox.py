"""The outbox: every output published where it belongs, with its QoS and retain flag.

A message names its topic leaf and whether it is retained (``core/outbound.py``); the QoS of the
machine outputs and the status is configured under the leaf's name (``qos:`` in ``config.yaml``).
Scores go out as the configuration says (``outputs.scores``): one message per window, a machine's
windows scored together in one (``core/steps.score_batches``), or not at all.
Rejected inputs are echoed on the errors topic, QoS 0, at most ``errors.max_per_second`` (after a
burst): a flood of bad input is counted and logged, but does not flood MQTT.
"""

from __future__ import annotations

import time

import paho.mqtt.client as paho

from ..core.outbound import SCORE_LEAVES, ErrorMessage, ScoreMessage, StatusMessage, encode
from ..core.ratelimit import TokenBucket
from ..core.steps import Output, score_batches
from ..core.topics import Topics
from .config import ErrorsRate, OutputQos, Outputs

MAX_TOPIC_ECHO = 200  # characters of a bad input's topic echoed on the errors topic and in the log
MAX_REASON = 400


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Outbox:
    def __init__(self, client: paho.Client, topics: Topics, qos: OutputQos, errors: ErrorsRate,
                 outputs: Outputs) -> None:
        self.client, self.topics = client, topics
        self.dropped = 0  # QoS 0 results published while disconnected (paho keeps only QoS 1 and 2)
        self.configure(qos, errors, outputs)

    def configure(self, qos: OutputQos, errors: ErrorsRate, outputs: Outputs) -> None:
        """A (reloaded) configuration's QoS, score messages and errors rate limit (the bucket starts full)."""
        self.qos, self.scores = qos, outputs.scores
        self._errors = TokenBucket(errors.max_per_second, errors.burst)

    @property
    def score_leaf(self) -> str:
        """The topic leaf a machine's scores go out on (``score`` when they do not go out at all)."""
        return SCORE_LEAVES[self.scores] or ScoreMessage.leaf

    def publish(self, outputs: list[Output]) -> list[paho.MQTTMessageInfo]:
        """Publish ``outputs`` in order; what paho took, to follow until the broker has it."""
        if self.scores == "batch":
            outputs = score_batches(outputs)
        elif self.scores == "off":
            outputs = [out for out in outputs if type(out.message) is not ScoreMessage]
        infos = []
        for out in outputs:
            m = out.message
            qos = getattr(self.qos, getattr(m, "qos_key", m.leaf))
            info = self.client.publish(self.topics.machine(out.machine, m.leaf), encode(m), qos=qos, retain=m.retain)
            if qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS:
                self.dropped += 1
            else:
                infos.append(info)
        return infos

    def status(self, message: StatusMessage) -> paho.MQTTMessageInfo:
        return self.client.publish(self.topics.status, encode(message), qos=self.qos.status, retain=message.retain)

    def error(self, topic: str, reason: str, limited: bool = True) -> bool:
        """Echo a rejected input on the errors topic unless the rate limit holds it back (False;
        ``limited=False``: the monitor's own rare problems, never held back). The topic and the
        reason are cut short (a topic may be 64 KiB of anything)."""
        if limited and not self._errors.allow(time.monotonic()):
            return False
        message = ErrorMessage(topic=clip(topic, MAX_TOPIC_ECHO), reason=clip(reason, MAX_REASON), ts=time.time())
        self.client.publish(self.topics.errors, encode(message), qos=0, retain=message.retain)
        return True
