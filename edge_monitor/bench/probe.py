"""The score probe: a subscriber that records when each of the daemon's results arrives.

Scores (``R/<machine>/score``: the window's ``cut`` and ``offset``; ``R/<machine>/scores``: a
batch of them), summaries (one per cut) and the daemon's status (``R/_monitor/<instance>/status``),
each with its ``time.monotonic()`` on arrival, taken first thing in paho's callback.
"""

from __future__ import annotations

import json
import threading
import time

from ..service.mqtt import BrokerSettings, connect, disconnect, make_client
from .accounting import WindowKey


class ScoreProbe:
    def __init__(self, host: str, port: int, root: str, instance: str) -> None:
        self.root = root
        self.status_topic = f"{root}/_monitor/{instance}/status"
        self.scores: list[tuple[WindowKey, float]] = []
        self.summaries: dict[tuple[str, str], float] = {}  # (machine, cut) -> arrival
        self.status: dict = {}  # the last one
        self.online = threading.Event()
        self.bad: list[str] = []  # results the probe could not read
        self._subscribed = threading.Event()
        filters = [(f"{root}/+/score", 1), (f"{root}/+/scores", 1), (f"{root}/+/summary", 1), (self.status_topic, 1)]
        self.client = make_client(BrokerSettings(host=host, port=port, client_id=f"bench-probe-{root}"),
                                  clean_start=True)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, reason, p: None if reason.is_failure else c.subscribe(filters)
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def start(self, timeout: float = 10.0) -> "ScoreProbe":
        connect(self.client)
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"the score probe got no SUBACK within {timeout:g} s")
        return self

    def stop(self) -> None:
        disconnect(self.client)

    def progress(self) -> int:
        return len(self.scores) + len(self.summaries)

    def _on_message(self, client, userdata, message) -> None:
        now = time.monotonic()
        try:
            body = json.loads(message.payload)
            if message.topic == self.status_topic:
                self.status = body
                if body.get("state") == "online":
                    self.online.set()
                return
            machine, leaf = message.topic[len(self.root) + 1:].split("/")
            if leaf == "score":
                self.scores.append(((machine, body["cut"], int(body["offset"])), now))
            elif leaf == "scores":  # outputs.scores: batch
                self.scores.extend(((machine, body["cut"], int(w["offset"])), now) for w in body["windows"])
            else:
                self.summaries[(machine, body["cut"])] = now
        except (ValueError, KeyError, TypeError) as exc:
            self.bad.append(f"{message.topic}: {exc}")
