"""The service manager's notification protocol: ``edge_monitor.service.systemd`` against a datagram socket
the test binds as ``NOTIFY_SOCKET``, then the real daemon (a subprocess, a real Mosquitto, the
small test bundle) notifying it: ``READY=1`` only once the model is loaded and the broker
connection is up, ``STATUS=`` lines with counters, ``WATCHDOG=1`` pings that keep coming while
the main loop turns and stop when the process is stalled (SIGSTOP), ``STOPPING=1`` at SIGTERM."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import Collector, Daemon, model_fixture

from edge_monitor.service import systemd
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client

ROOT = "t-notify"
INSTANCE = "n1"
WATCHDOG_S = 2.0  # the daemon must ping every second


@dataclass(frozen=True)
class Notification:
    at: float  # monotonic time of arrival
    pid: int  # the sender, from the kernel's credentials (what NotifyAccess=main checks)
    lines: tuple[str, ...]


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str, on_message=None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.address = address
        self.on_message = on_message
        self.received: list[Notification] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            pid = -1
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", value[:12])[0]
            note = Notification(time.monotonic(), pid, tuple(data.decode().split("\n")))
            if self.on_message is not None:
                self.on_message(note)
            self.received.append(note)

    def with_line(self, prefix: str) -> list[Notification]:
        return [n for n in list(self.received) if any(line.startswith(prefix) for line in n.lines)]

    def wait_for(self, prefix: str, timeout: float) -> Notification | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_line(prefix)
            if found:
                return found[0]
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


# ------------------------------------------------------------------------------ the module alone


def test_everything_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.socket_address() is None
    assert not systemd.notify("READY=1")
    assert not systemd.ready("up") and not systemd.status("x") and not systemd.watchdog() and not systemd.stopping()
    assert systemd.watchdog_interval() is None
    pinger = systemd.WatchdogPinger(systemd.watchdog_interval())
    assert not pinger.enabled and not pinger.tick(0.0)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notifications_reach_the_socket(monkeypatch, tmp_path, kind):
    address = str(tmp_path / "notify") if kind == "path" else f"@edge-monitor-test-{secrets.token_hex(6)}"
    listener = NotifyListener(address)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert systemd.ready("model loaded\n  broker up")
        assert systemd.watchdog()
        assert systemd.status("42 windows")
        assert systemd.stopping()
        deadline = time.monotonic() + 5
        while len(listener.received) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [n.lines for n in listener.received] == [
            ("READY=1", "STATUS=model loaded broker up"),  # one line: the value cannot hold a newline
            ("WATCHDOG=1",),
            ("STATUS=42 windows",),
            ("STOPPING=1",),
        ]
        assert {n.pid for n in listener.received} == {os.getpid()}
    finally:
        listener.close()
    with pytest.raises(ValueError, match="KEY=value"):
        systemd.notify("READY=1\nSTATUS=smuggled")


def test_an_unreachable_socket_is_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not systemd.watchdog()
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a kind of address not supported here
    assert systemd.socket_address() is None and not systemd.ready()


def test_watchdog_interval_from_the_environment():
    me = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}) == 0.5
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({}) is None


def test_the_pinger_pings_at_half_the_interval_only_when_ticked(monkeypatch, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        pinger = systemd.WatchdogPinger(10.0)
        assert pinger.period == 5.0
        sent = [t for t in (100.0, 101.0, 104.9, 105.0, 109.0, 110.0, 130.0) if pinger.tick(t)]
        assert sent == [100.0, 105.0, 110.0, 130.0]
        deadline = time.monotonic() + 5
        while len(listener.received) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [n.lines for n in listener.received] == [("WATCHDOG=1",)] * 4
    finally:
        listener.close()


# ------------------------------------------------------------------------------ the daemon


@dataclass
class Run:
    daemon: Daemon
    listener: NotifyListener
    collector: Collector
    broker_log: Path
    at_ready: dict  # what was already true when READY=1 arrived


@pytest.fixture(scope="module")
def run(module_broker, tmp_path_factory):
    model = model_fixture(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("notify")
    at_ready: dict = {}

    def snapshot(note: Notification) -> None:  # runs the moment a notification arrives
        if "READY=1" in note.lines and not at_ready:
            at_ready["broker_log"] = module_broker.log.read_text()
            at_ready["daemon_events"] = [e.get("event") for e in daemon.events()]

    listener = NotifyListener(f"@edge-monitor-test-{secrets.token_hex(6)}", on_message=snapshot)
    collector = Collector(module_broker, [f"{ROOT}/#"], "collector-notify")
    daemon = Daemon(workdir, module_broker, model.bundle, ROOT, INSTANCE, "status_interval_s: 1\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NOTIFY_SOCKET", listener.address)
        env.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
        daemon.start()
    try:
        if listener.wait_for("READY=1", 90) is None:
            daemon.fail("no READY=1 within 90 s")
        yield Run(daemon, listener, collector, module_broker.log, at_ready)
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            os.kill(daemon.process.pid, signal.SIGCONT)  # in case a test left it stopped
        daemon.kill()
        collector.close()
        listener.close()


def test_ready_comes_once_after_the_model_and_the_broker_connection(run):
    events = run.at_ready["daemon_events"]
    # model loaded, connected, retained alarms read back and online published: all before READY
    for event in ("bundle", "connected", "online"):
        assert event in events, f"{event!r} not logged before READY=1: {events}"
    # the broker logs a connection before it sends the CONNACK
    assert re.search(rf"New client connected from \S+ as edge-monitor-{INSTANCE} ", run.at_ready["broker_log"])
    ready = run.listener.with_line("READY=1")
    assert len(ready) == 1
    assert any(line.startswith("STATUS=broker connected") for line in ready[0].lines)
    # before READY only start-up STATUS lines, all from the main process
    before = [n for n in run.listener.received if n.at < ready[0].at]
    assert all(line.startswith("STATUS=") for n in before for line in n.lines)
    assert {n.pid for n in run.listener.received} == {run.daemon.process.pid}


def test_status_lines_carry_the_counters(run, module_broker):
    # one input the daemon must reject: the counters in the next STATUS line show it
    client = make_client(BrokerSettings(module_broker.host, module_broker.port, client_id="pub-notify"),
                         clean_start=True)
    connect(client)
    client.publish(f"{ROOT}/mill-01/cut", b"not json", qos=1).wait_for_publish(5)
    disconnect(client)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for n in run.listener.with_line("STATUS=") for line in n.lines if line.startswith("STATUS=")]
        if any(re.search(r"\b1 messages\b.*\b1 rejected\b", line) for line in lines):
            break
        time.sleep(0.1)
    else:
        run.daemon.fail(f"no STATUS line counted the rejected message; last: {lines[-3:]}")
    assert "windows scored" in lines[-1] and lines[-1].startswith("STATUS=broker connected")


def test_watchdog_pings_keep_coming(run):
    start = time.monotonic()
    time.sleep(2.5 * WATCHDOG_S)
    pings = [n.at for n in run.listener.with_line("WATCHDOG=1") if n.at >= start]
    assert len(pings) >= 4, f"{len(pings)} pings in {2.5 * WATCHDOG_S} s"
    gaps = [b - a for a, b in zip([start, *pings], pings)]
    assert max(gaps) < WATCHDOG_S, f"a gap of {max(gaps):.2f} s would have tripped WatchdogSec={WATCHDOG_S:g}"


def test_a_stalled_loop_stops_the_pings_and_they_resume(run):
    pid = run.daemon.process.pid
    os.kill(pid, signal.SIGSTOP)
    stalled = time.monotonic()
    try:
        time.sleep(2 * WATCHDOG_S)
        # a ping sent just before the stop may be read a little late; a running daemon would have
        # sent three more in this time
        late = [n.at - stalled for n in run.listener.with_line("WATCHDOG=1") if n.at > stalled + WATCHDOG_S / 2]
        assert late == [], f"pings kept coming from a stalled daemon, {late} s after the stop"
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    deadline = resumed + 2 * WATCHDOG_S
    while time.monotonic() < deadline and not [n for n in run.listener.with_line("WATCHDOG=1") if n.at > resumed]:
        time.sleep(0.05)
    assert [n for n in run.listener.with_line("WATCHDOG=1") if n.at > resumed], "no ping after SIGCONT"


def test_sigterm_sends_stopping_and_exits_cleanly(run):
    assert run.daemon.terminate() == 0
    stopping = run.listener.with_line("STOPPING=1")
    assert len(stopping) == 1
    assert not [n for n in run.listener.with_line("WATCHDOG=1") if n.at > stopping[0].at]
