"""The broker's clients: the data acquisition (publisher), the monitor's input connection,
retained alarms, and the steady-state load as a process of its own."""

from __future__ import annotations

import json
import sys
import threading
import time

from ...service.mqtt import BrokerSettings, connect, disconnect, make_client
from ..broker import HOST
from .harness import CHUNKS_PER_MACHINE, ROOT, SEQ_AT, chunk, chunk_topic, wait_until

INPUT_FILTERS = [f"{ROOT}/+/cut/#", f"{ROOT}/+/signal/#", f"{ROOT}/+/cmd/#"]


def settings(port: int, client_id: str) -> BrokerSettings:
    return BrokerSettings(host=HOST, port=port, client_id=client_id, session_expiry=3600)


class Publisher:
    """The data acquisition: chunks at QoS 1 (clean start; paho keeps unacknowledged and
    not-yet-sent messages across a reconnection and sends them again). Records which sequence
    numbers the broker acknowledged (accepted) and when, and the longest PUBACK wait."""

    def __init__(self, port: int, machines: int, window: int = 0) -> None:
        self.machines = machines
        self.client = make_client(settings(port, "daq"), clean_start=True)
        self.client.on_publish = self._on_publish
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[int, float]] = {}  # mid -> (seq, sent)
        self.early: dict[int, tuple[float, bool]] = {}  # acknowledged before publish() returned
        self.accepted: list[tuple[int, float]] = []  # (seq, when the broker acknowledged it)
        self.refused = 0
        self.max_wait = 0.0
        self.sent = 0
        self.window = threading.Semaphore(window) if window else None
        self.phase = 0  # index in ``accepted`` where the current phase starts
        self.pacer: threading.Thread | None = None
        self.next_seq = 0
        self._pacing = threading.Event()

    def start(self) -> "Publisher":
        connect(self.client)
        return self

    def publish(self, seq: int) -> None:
        if self.window is not None:
            self.window.acquire()
        sent = time.monotonic()
        info = self.client.publish(chunk_topic(seq, self.machines), chunk(seq), qos=1)
        with self.lock:
            self.sent += 1
            early = self.early.pop(info.mid, None)
            if early is None:
                self.pending[info.mid] = (seq, sent)
            else:
                self._record(seq, sent, *early)

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        now = time.monotonic()
        ok = not (reason is not None and getattr(reason, "is_failure", False))
        with self.lock:
            entry = self.pending.pop(mid, None)
            if entry is None:
                self.early[mid] = (now, ok)
            else:
                self._record(*entry, now, ok)
        if self.window is not None:
            self.window.release()

    def _record(self, seq: int, sent: float, acked: float, ok: bool) -> None:
        if ok:
            self.accepted.append((seq, acked))
        else:
            self.refused += 1
        self.max_wait = max(self.max_wait, acked - sent)

    def outstanding(self) -> int:
        with self.lock:
            return self.sent - len(self.accepted) - self.refused

    def wait_acknowledged(self, timeout: float) -> bool:
        return wait_until(lambda: self.outstanding() == 0, timeout)

    def pace(self, rate: float, first_seq: int) -> None:
        """Publish ``rate`` chunks/s from ``first_seq`` on, in a thread, until :meth:`unpace`."""
        self._pacing.set()

        def run() -> None:
            t0, seq = time.monotonic(), first_seq
            while self._pacing.is_set():
                due = first_seq + int((time.monotonic() - t0) * rate)
                while seq < due:
                    self.publish(seq)
                    seq += 1
                time.sleep(0.01)
            self.next_seq = seq

        self.pacer = threading.Thread(target=run, name="pacer", daemon=True)
        self.pacer.start()

    def unpace(self) -> int:
        """Stop pacing; the next sequence number."""
        self._pacing.clear()
        self.pacer.join()
        return self.next_seq

    def stop(self) -> None:
        disconnect(self.client)


class Monitor:
    """The monitor's input connection: persistent session, QoS 1, subscribes again on every
    connection (as service/inbox.py does), auto-acknowledges; records every chunk's sequence
    number (duplicates included) and every CONNACK's session_present."""

    def __init__(self, port: int) -> None:
        self.client = make_client(settings(port, "edge-monitor"), clean_start=False)
        self.sessions: list[bool] = []
        self.received: list[int] = []
        self.last_message = time.monotonic()
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            self.sessions.append(bool(flags.session_present))
            client.subscribe([(f, 1) for f in INPUT_FILTERS])

    def _on_message(self, client, userdata, message) -> None:
        self.last_message = time.monotonic()
        if "/signal/" in message.topic:
            self.received.append(int(message.payload[SEQ_AT]))

    def start(self, timeout: float = 10.0) -> "Monitor":
        connect(self.client)
        if not self.subscribed.wait(timeout):
            raise RuntimeError("the monitor got no SUBACK")
        return self

    def wait_drained(self, expected: set[int], idle: float, timeout: float) -> None:
        """Until every ``expected`` sequence number arrived, or nothing came for ``idle`` s."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if len(self.received) >= len(expected) and expected <= set(self.received):
                return
            if time.monotonic() - self.last_message > idle:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        disconnect(self.client)


def plain_client(port: int, client_id: str, clean_start: bool = True):
    """A connected client and its CONNACK (session_present)."""
    client = make_client(settings(port, client_id), clean_start=clean_start)
    return client, connect(client)


def set_retained(port: int, topic: str | list[str], payload: bytes) -> None:
    """Retained message(s) at QoS 1, as the monitor's output connection sets its alarms."""
    client, _ = plain_client(port, "edge-monitor-out")
    try:
        infos = [client.publish(t, payload, qos=1, retain=True) for t in ([topic] if isinstance(topic, str) else topic)]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        disconnect(client)


def read_retained(port: int, topic_filter: str, wait: float = 0.5) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    client = make_client(settings(port, "bench-retained-probe"), clean_start=True)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    connect(client)
    try:
        client.subscribe(topic_filter, 1)
        time.sleep(wait)
    finally:
        disconnect(client)
    return got


def load_main(port: int, machines: int) -> int:
    """``--load PORT:MACHINES``: the steady-state traffic in its own process (so that the timing
    thread of the measuring process is not kept from the GIL): the monitor subscribed, one
    retained alarm per machine, chunks at ``machines`` x 6/s until a line on stdin; then prints
    its figures as one JSON line."""
    monitor = Monitor(port).start()
    publisher = Publisher(port, machines).start()
    set_retained(port, [f"{ROOT}/m{m:03d}/alarm" for m in range(machines)], b'{"state": "ok", "since": 1717230000.0}')
    rate = machines * CHUNKS_PER_MACHINE
    print("ready", flush=True)
    t0 = time.monotonic()
    publisher.pace(rate, 0)
    sys.stdin.readline()
    published = publisher.unpace()
    elapsed = time.monotonic() - t0
    publisher.wait_acknowledged(10)
    wait_until(lambda: len(monitor.received) >= published, 10)
    print(json.dumps({"rate": published / elapsed, "target": rate, "published": published,
                      "accepted": len(publisher.accepted), "received": len(monitor.received),
                      "max_puback_wait": publisher.max_wait}), flush=True)
    publisher.stop()
    monitor.stop()
    return 0
