"""A Sparkplug B host application for the tests, reading the monitor's payloads and writing its
commands with an independent codec: Eclipse Tahu's JavaScript one (``tests/sparkplug_decoder``,
npm ``sparkplug-payload``), not the project's own.

:class:`Host` subscribes to a group's messages (and the node's will), keeps each as it came
(topic, QoS, retain, decoded payload) and follows the node's ``seq`` as a host does: a message
whose seq is not one more than the last is a gap, answered with a rebirth request.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client

DECODER = Path(__file__).parent / "sparkplug_decoder"


def decoder_problem() -> str | None:
    """Why the independent decoder cannot run here, or None."""
    if shutil.which("node") is None:
        return "Node.js is not installed: the Sparkplug tests decode with Eclipse Tahu's JavaScript codec"
    if not (DECODER / "node_modules" / "sparkplug-payload").is_dir():
        return f"Tahu's codec is not installed: run `make install` (npm ci in {DECODER})"
    return None


class TahuCodec:
    """``node decode.js`` kept running: one payload in, its decoding out (or a payload to encode)."""

    def __init__(self) -> None:
        problem = decoder_problem()
        if problem:
            pytest.skip(problem)
        self.process = subprocess.Popen(["node", str(DECODER / "decode.js")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=DECODER)
        self._lock = threading.Lock()

    def _ask(self, line: str) -> dict:
        with self._lock:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            out = json.loads(self.process.stdout.readline())
        assert "error" not in out, f"Tahu's codec refused {line[:200]}: {out['error']}"
        return out

    def decode(self, payload: bytes) -> dict:
        return self._ask(base64.b64encode(payload).decode())

    def encode(self, metrics: list[dict], timestamp: int | None = None) -> bytes:
        """A command payload as Tahu writes it: ``metrics`` as ``{"name", "type", "value"}``."""
        payload = {"timestamp": int(time.time() * 1000) if timestamp is None else timestamp, "metrics": metrics}
        return base64.b64decode(self._ask(json.dumps({"encode": payload}))["base64"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


@dataclass
class Received:
    topic: str
    qos: int
    retain: bool
    body: dict | None  # decoded (None: a STATE message, JSON)
    kind: str = field(init=False)
    device: str | None = field(init=False)

    def __post_init__(self) -> None:
        parts = self.topic.split("/")
        self.kind = parts[2] if len(parts) > 2 else ""
        self.device = parts[4] if len(parts) > 4 else None

    @property
    def seq(self) -> int | None:
        return None if self.body is None or self.body["seq"] is None else int(self.body["seq"])

    def metrics(self) -> dict[str, dict]:
        """Metrics by name (a name given only by alias is looked up by the caller)."""
        return {m["name"]: m for m in self.body["metrics"] if m["name"] is not None}

    def value(self, name: str):
        return self.metrics()[name]["value"]


def _settings(broker, client_id: str) -> BrokerSettings:
    """``broker``: a test broker (anonymous) or the :class:`BrokerSettings` to log in with."""
    if isinstance(broker, BrokerSettings):
        return broker
    return BrokerSettings(host=broker.host, port=broker.port, client_id=client_id, reconnect_max_delay=2)


class Host:
    """A host application on ``group``: records everything, follows seq, asks for rebirths.
    ``broker``: a test broker (anonymous) or the :class:`BrokerSettings` to log in with."""

    def __init__(self, broker, decoder: TahuCodec, group: str, client_id: str = "test-host",
                 rebirth_on_gap: bool = True) -> None:
        self.decoder, self.group = decoder, group
        self.received: list[Received] = []
        self.gaps: list[tuple[int | None, int]] = []  # (expected, got)
        self.rebirth_on_gap = rebirth_on_gap
        self.drop_next_ddata = False  # pretend one DDATA was lost on the way
        self.dropped: list[Received] = []
        self.rebirths_requested = 0
        # what a strict host would hold against the node: aliases reused, names in data, data of a
        # device not born in the present session, an NDEATH whose bdSeq is not the NBIRTH's
        self.problems: list[str] = []
        self._bd_seq: dict[str, int] = {}  # node -> the bdSeq of its present NBIRTH
        self._born: dict[str, set] = {}  # node -> devices born since its NBIRTH
        self._owners: dict[tuple[str, int], tuple] = {}  # (node, alias) -> (device, name) of this session
        self._expect: dict[str, int] = {}  # node topic part -> the next seq
        self._cond = threading.Condition()
        self.aliases: dict[tuple[str, int], str] = {}  # (node, alias) -> name, from births
        self.client = make_client(_settings(broker, client_id), clean_start=True)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe([(f"spBv1.0/{group}/#", 1)])
        connect(self.client)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, message) -> None:
        if message.topic.split("/")[2:3] in (["NCMD"], ["DCMD"]):
            return  # commands: this host's own (or another host's), not the node's
        body = self.decoder.decode(bytes(message.payload))
        got = Received(message.topic, message.qos, bool(message.retain), body)
        parts = message.topic.split("/")
        node = f"{parts[1]}/{parts[3]}" if len(parts) > 3 else message.topic
        with self._cond:
            self._check(node, got)
            if got.kind in ("NBIRTH", "DBIRTH"):
                for m in body["metrics"]:
                    if m["alias"] is not None:
                        self.aliases[(node, int(m["alias"]))] = m["name"]
            if got.kind == "DDATA" and self.drop_next_ddata:
                self.drop_next_ddata = False
                self.dropped.append(got)
                self._cond.notify_all()
                return
            self.received.append(got)
            if got.seq is not None and got.kind != "NDEATH":
                expected = self._expect.get(node)
                if got.kind != "NBIRTH" and expected is not None and got.seq != expected:
                    self.gaps.append((expected, got.seq))
                    if self.rebirth_on_gap:
                        self.request_rebirth(message.topic.split("/")[3])
                self._expect[node] = (got.seq + 1) % 256
            self._cond.notify_all()

    def _check(self, node: str, got: Received) -> None:
        metrics = got.body["metrics"]
        if got.kind == "NBIRTH":
            self._bd_seq[node] = int(next(m["value"] for m in metrics if m["name"] == "bdSeq"))
            self._born[node] = set()
            self.aliases = {k: v for k, v in self.aliases.items() if k[0] != node}  # a birth gives them anew
        elif got.kind == "NDEATH":
            bd = int(metrics[0]["value"])
            if bd != self._bd_seq.get(node):
                self.problems.append(f"NDEATH bdSeq {bd} is not the NBIRTH's {self._bd_seq.get(node)}")
            self._born.pop(node, None)
        elif got.kind == "DBIRTH":
            if node not in self._born:
                self.problems.append(f"DBIRTH of {got.device} before its node's NBIRTH")
            self._born.setdefault(node, set()).add(got.device)
        elif got.kind in ("DDATA", "NDATA"):
            if node not in self._born or (got.kind == "DDATA" and got.device not in self._born[node]):
                self.problems.append(f"{got.kind} of {got.device or 'the node'} before its birth")
            for m in metrics:
                if m["name"] is not None and m["alias"] is not None:
                    self.problems.append(f"{got.kind} names {m['name']} although it has an alias")
                elif m["alias"] is not None and (node, int(m["alias"])) not in self.aliases:
                    self.problems.append(f"{got.kind}: alias {m['alias']} no birth gave")
                if m["timestamp"] is None:
                    self.problems.append(f"{got.kind}: metric {m['name'] or m['alias']} without a timestamp")
        if got.kind == "NBIRTH":
            self._owners = {k: v for k, v in self._owners.items() if k[0] != node}
        if got.kind in ("NBIRTH", "DBIRTH"):
            for m in metrics:
                if m["alias"] is None:
                    continue
                key, owner = (node, int(m["alias"])), (got.device, m["name"])
                if self._owners.setdefault(key, owner) != owner:  # unique across the node, devices included
                    self.problems.append(f"alias {m['alias']} of {owner} already names {self._owners[key]}")
                if m["timestamp"] is None or m["name"] is None:
                    self.problems.append(f"{got.kind}: a metric without a name or timestamp: {m}")

    def named(self, got: Received) -> dict[str, dict]:
        """A message's metrics by name, aliases resolved from the births."""
        node = f"{got.topic.split('/')[1]}/{got.topic.split('/')[3]}"
        out = {}
        for m in got.body["metrics"]:
            name = m["name"] if m["name"] is not None else self.aliases[(node, int(m["alias"]))]
            out.setdefault(name, []).append(m)
        return out

    def request_rebirth(self, edge: str) -> None:
        self.rebirths_requested += 1
        payload = self.decoder.encode([{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}])
        self.client.publish(f"spBv1.0/{self.group}/NCMD/{edge}", payload, qos=0)

    def command(self, edge: str, device: str, name: str, value: bool = True) -> None:
        payload = self.decoder.encode([{"name": name, "type": "Boolean", "value": value}])
        self.client.publish(f"spBv1.0/{self.group}/DCMD/{edge}/{device}", payload, qos=0)

    def of(self, kind: str, device: str | None = None) -> list[Received]:
        with self._cond:
            return [r for r in self.received if r.kind == kind and (device is None or r.device == device)]

    def wait(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        disconnect(self.client)


def publish_state(broker, host_id: str, online: bool, client_id: str = "test-primary-host") -> None:
    """The primary host's retained STATE (QoS 1), as a host application publishes it."""
    client = make_client(_settings(broker, client_id), clean_start=True)
    connect(client)
    body = json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()
    client.publish(f"spBv1.0/STATE/{host_id}", body, qos=1, retain=True).wait_for_publish(10)
    disconnect(client)
