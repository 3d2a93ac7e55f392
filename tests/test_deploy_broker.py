"""The edge box's broker configuration (``deploy/mosquitto/``) against a real Mosquitto 2: users and
ACL from ``make-users.sh``, TLS from ``make-test-ca.sh``, the listener and queue settings of
``edge-monitor.conf``, the bridge example towards a second Mosquitto playing the plant's central
broker, and the real monitor daemon working end to end under all of it.

Unauthorised publishes are checked from both sides: MQTT 5 publishers get the reason code "Not
authorized" on QoS 1, MQTT 3.1.1 ones get a plain acknowledgement (Mosquitto drops the message
silently), and in both cases observers with read rights on every topic see nothing arrive. So are
packets over the broker's max_packet_size: the publisher is disconnected, nobody receives them, and
everyone else goes on.
"""

from __future__ import annotations

import dataclasses
import getpass
import itertools
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from broker import Broker, free_port
from daemon_support import Collector, Daemon, model_fixture
from deploy_broker import DEPLOY, PLACEHOLDER, DeployBroker, render

from edge_monitor.archive.replay import replay_cuts
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.inbound import Limits
from edge_monitor.service.mqtt import (
    BrokerError,
    BrokerSettings,
    TlsSettings,
    connect,
    disconnect,
    make_client,
)

ROOT = "mill"
MACHINES = ("mill-01", "mill-02")
BOX = "box-1"
CENTRAL_USER = f"edge-{BOX}"
CENTRAL_PREFIX = f"edge/{BOX}/{ROOT}"
_ids = itertools.count(1)


def cid(name: str) -> str:
    """A client id of its own for every connection (Mosquitto kicks out a second one)."""
    return f"{name}-{next(_ids)}"


# ------------------------------------------------------------------------------------ brokers


class CentralBroker(Broker):
    """The plant's central broker: TLS with a password for the edge box's bridge (its own test
    CA), and a loopback listener without authentication for the test's own clients."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.tls_port = free_port()
        self.certs = self.workdir / "certs"
        subprocess.run([str(DEPLOY / "make-test-ca.sh"), "--broker-group", "", "--ca-key-dir",
                        str(self.workdir / "test-ca"), str(self.certs)], check=True, capture_output=True, timeout=60)
        self.password = "central-secret"
        self.passwd = self.workdir / "passwd"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(self.passwd), CENTRAL_USER, self.password],
                       check=True, capture_output=True, timeout=30)

    def _write_conf(self) -> None:
        c = self.certs
        self.conf.write_text(
            "per_listener_settings true\n"
            f"user {getpass.getuser()}\npersistence false\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {self.passwd}\n"
            f"cafile {c}/ca.crt\ncertfile {c}/server.crt\nkeyfile {c}/server.key\n"
        )


@pytest.fixture(scope="module")
def central(tmp_path_factory):
    b = CentralBroker(tmp_path_factory.mktemp("central")).start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, central):
    bridge = render((DEPLOY / "bridge.conf.example").read_text(), {
        "BOX": BOX, "ROOT": ROOT, "CENTRAL_HOST": "localhost", "CENTRAL_PORT": central.tls_port,
        "CENTRAL_CA": central.certs / "ca.crt", "CENTRAL_USER": CENTRAL_USER, "CENTRAL_PASSWORD": central.password,
    })
    # One connection per user (use_username_as_clientid): clients that run at once get users of their own.
    b = DeployBroker(tmp_path_factory.mktemp("edge-broker"), MACHINES, root=ROOT, conf_d={"bridge.conf": bridge},
                     dashboards=("observe", "late", "operator"), replay=True,
                     extra_users={"observe-monitor": ("edge-monitor", "edge-monitor-out"),
                                  # may read every topic there is (two: one connection per user)
                                  "observe-all": "topic read #", "observe-all-late": "topic read #"})
    b.start()
    try:
        yield b
    finally:
        b.kill()


# ------------------------------------------------------------------------------------ clients


class Observer(Collector):
    """A :class:`Collector` logged in with ``settings`` that also keeps the raw payloads."""

    def __init__(self, settings: BrokerSettings, topics: list[str]) -> None:
        self.raw: list[tuple[str, bytes]] = []
        super().__init__(settings, topics)

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.raw.append((message.topic, bytes(message.payload)))
        super()._on_message(client, userdata, message)

    def got(self, payload: bytes) -> list[str]:
        """Topics on which ``payload`` arrived."""
        with self._cond:
            return [t for t, p in self.raw if p == payload]


class Publisher5:
    """An MQTT 5 client that publishes at QoS 1 and returns the broker's reason code."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.client = make_client(settings, clean_start=True)
        self._acks: dict[int, str] = {}
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        connect(self.client)

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._cond:
            self._acks[mid] = str(reason)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> str:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self._acks, 10), f"no PUBACK for {topic}"
            return self._acks.pop(info.mid)

    def close(self) -> None:
        disconnect(self.client)


def mqtt311_client(broker: DeployBroker, user: str) -> paho.Client:
    """An MQTT 3.1.1 client: the protocol of most PLC and SCADA stacks, where the broker
    acknowledges an unauthorised publish like any other."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid(f"v311-{user}"), protocol=paho.MQTTv311)
    client.username_pw_set(user, broker.password_file(user).read_text().strip())
    connected = threading.Event()
    client.on_connect = lambda c, u, f, r, p: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10)
    return client


@pytest.fixture
def observers(edge):
    """Readers that together may read every topic under the root: the monitor's user (inputs,
    alarms, _monitor) and SCADA's over TLS (outputs)."""
    inputs = Observer(edge.settings("observe-monitor", cid("observe-monitor")), [f"{ROOT}/#"])
    outputs = Observer(edge.settings("scada-observe", cid("observe-scada"), tls=True), [f"{ROOT}/#"])
    try:
        yield inputs, outputs
    finally:
        inputs.close()
        outputs.close()


@pytest.fixture
def everything(edge):
    """A reader of every topic there is (``topic read #``): what the ACL refuses must not reach it."""
    observer = Observer(edge.settings("observe-all", cid("observe-all")), ["#"])
    try:
        yield observer
    finally:
        observer.close()


def retained_under_root(edge) -> list[tuple[str, bytes]]:
    """Every retained message under the root, as a new subscriber gets them: a reader of every
    topic subscribes, then the monitor's output user publishes a marker, which arrives after them."""
    late = Observer(edge.settings("observe-all-late", cid("late")), [f"{ROOT}/#"])
    try:
        marker = b'"retained-marker-%d"' % next(_ids)
        monitor = Publisher5(edge.settings("edge-monitor-out", cid("monitor")))
        try:
            assert monitor.publish(f"{ROOT}/_monitor/test/sync", marker) == "Success"
        finally:
            monitor.close()
        assert late.wait(lambda: late.got(marker))
        with late._cond:
            return [(t, p) for (t, p), (_, _, retained) in zip(late.raw, late.messages) if retained]
    finally:
        late.close()


def settle(observers, sentinel_cut: bytes, via: BrokerSettings) -> None:
    """Wait until everything published before now has reached both observers: a cut message
    (``sentinel_cut``, already published last by the client under test) reaches the inputs
    observer; then the monitor's user publishes a score, which the outputs observer gets after
    anything queued to it before."""
    inputs, outputs = observers
    assert inputs.wait(lambda: inputs.got(sentinel_cut)), "the allowed sentinel never arrived"
    marker = b'{"sentinel": "%d"}' % next(_ids)
    monitor = Publisher5(via)
    try:
        assert monitor.publish(f"{ROOT}/mill-01/score", marker) == "Success"
    finally:
        monitor.close()
    assert outputs.wait(lambda: outputs.got(marker)), "the monitor's score never reached SCADA"


# ------------------------------------------------------------------------------------ tests


def test_config_is_rendered_completely_and_listens_plain_on_loopback_only(edge):
    assert not PLACEHOLDER.search(edge.rendered)
    lines = [ln.split() for ln in edge.rendered.splitlines() if ln.strip() and not ln.startswith("#")]
    listeners = [ln[1:] for ln in lines if ln[0] == "listener"]
    assert listeners == [[str(edge.port), "127.0.0.1"], [str(edge.tls_port)]]
    settings = {ln[0]: ln[1:] for ln in lines}
    assert settings["allow_anonymous"] == ["false"]
    assert int(settings["max_queued_messages"][0]) >= 439_200  # 20 machines x 1 h
    # above the monitor's limits.max_payload_bytes (1 MiB) with room for topic and header
    assert int(settings["max_packet_size"][0]) >= (1 << 20) + 64 * 1024
    assert "message_size_limit" not in settings
    # The plain port is not reachable on another address of this host; the TLS one is.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.254", 9))  # no packet is sent: only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this host has no non-loopback address to check the plain listener against")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, edge.port), timeout=2).close()
    socket.create_connection((address, edge.tls_port), timeout=2).close()


def test_anonymous_and_wrong_passwords_are_refused(edge, tmp_path):
    for tls in (False, True):
        with pytest.raises(BrokerError, match="Not authorized"):
            connect(make_client(edge.settings(None, cid("anonymous"), tls=tls), clean_start=True))
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    settings = dataclasses.replace(edge.settings("scada", cid("scada-wrong")), password_file=wrong)
    with pytest.raises(BrokerError, match="Not authorized"):
        connect(make_client(settings, clean_start=True))
    # A machine's user exists only for the machines it was created for.
    with pytest.raises(BrokerError):
        connect(make_client(dataclasses.replace(settings, username="daq-mill-99"), clean_start=True))


DAQ_DENIED = (
    "mill-02/cut", "mill-02/signal/smcAC", "mill-01/alarm", "mill-02/alarm", "mill-01/score",
    "mill-01/summary", "mill-01/cmd", "_monitor/edge-1/status", "_monitor/edge-1/sync",
    # its own machine, but not one of its exact topics: the cut and one signal topic per channel
    "mill-01/signal", "mill-01/signal/smcAC/deeper", "mill-01/signal/not_a_channel", "mill-01/cut/extra",
)


def test_a_machine_writes_its_exact_topics_only(edge):
    """The generated block: the cut, the frame, and signal/<channel> for each of the monitor's channels."""
    acl = (edge.etc / "acl").read_text().split("\n\n")
    [block] = [b for b in acl if b.startswith("user daq-mill-01\n")]
    assert block.strip().splitlines()[1:] == [f"topic write {ROOT}/mill-01/cut", f"topic write {ROOT}/mill-01/frame"] + [
        f"topic write {ROOT}/mill-01/signal/{c}" for c in CHANNELS]


def test_a_machine_cannot_publish_for_another_machine_nor_any_alarm_mqtt5(edge, observers, everything):
    daq = Publisher5(edge.settings("daq-mill-01", cid("daq-mill-01")))
    try:
        for c in CHANNELS:
            assert daq.publish(f"{ROOT}/mill-01/signal/{c}", b'"own-signal-5"') == "Success", c
        for i, topic in enumerate(DAQ_DENIED):
            # retained: a topic the ACL let through would keep it for every later subscriber
            code = daq.publish(f"{ROOT}/{topic}", b'"denied-5-%d"' % i, retain=True)
            assert code == "Not authorized", topic
        assert daq.publish(f"{ROOT}/mill-01/cut", b'"sentinel-5"') == "Success"
    finally:
        daq.close()
    settle(observers, b'"sentinel-5"', edge.settings("edge-monitor-out", cid("monitor")))
    assert everything.wait(lambda: everything.got(b'"sentinel-5"'))
    inputs, outputs = observers
    assert inputs.got(b'"own-signal-5"') == [f"{ROOT}/mill-01/signal/{c}" for c in CHANNELS]
    for i in range(len(DAQ_DENIED)):
        assert inputs.got(b'"denied-5-%d"' % i) == outputs.got(b'"denied-5-%d"' % i) == []
        assert everything.got(b'"denied-5-%d"' % i) == []
    # SCADA never sees raw inputs, though it subscribed to everything.
    assert not [t for t, _, _ in outputs.messages if "/signal/" in t or t.endswith("/cut")]
    # No retained message was planted for a later subscriber either. (The broker sends a new
    # subscription's retained messages before anything published after it: the monitor's trick.)
    assert not [t for t, p in retained_under_root(edge) if p.startswith(b'"denied')]


def test_a_machine_cannot_publish_for_another_machine_nor_any_alarm_mqtt311(edge, observers):
    daq = mqtt311_client(edge, "daq-mill-01")
    try:
        for i, topic in enumerate(DAQ_DENIED):
            for qos in (0, 1):
                # Acknowledged as if delivered: MQTT 3.1.1 has no way to say "not authorised".
                info = daq.publish(f"{ROOT}/{topic}", b'"denied-3-%d-%d"' % (i, qos), qos=qos)
                info.wait_for_publish(10)
                assert info.rc == paho.MQTT_ERR_SUCCESS and info.is_published()
        daq.publish(f"{ROOT}/mill-01/cut", b'"sentinel-3"', qos=1).wait_for_publish(10)
    finally:
        daq.disconnect()
        daq.loop_stop()
    settle(observers, b'"sentinel-3"', edge.settings("edge-monitor-out", cid("monitor")))
    inputs, outputs = observers
    leaked = [t for t, p in inputs.raw + outputs.raw if p.startswith(b'"denied')]
    assert leaked == []


SCADA_DENIED = (
    "mill-01/signal/smcAC", "mill-01/cut", "mill-01/alarm", "mill-01/score", "mill-01/summary",
    "_monitor/edge-1/status",
    # `+/cmd` matches the monitor's own level and an empty machine level too: denied by name
    "_monitor/cmd", "/cmd",
)


@pytest.mark.parametrize("user", ["scada", "scada-operator"])  # the template's block and a generated one
def test_scada_may_send_commands_but_publish_nothing_else(edge, observers, everything, user):
    scada = Publisher5(edge.settings(user, cid(user), tls=True))
    try:
        for i, topic in enumerate(SCADA_DENIED):
            assert scada.publish(f"{ROOT}/{topic}", b'"scada-denied-%d"' % i) == "Not authorized", topic
        assert scada.publish(f"{ROOT}/mill-01/cmd", b'"scada-cmd-%s"' % user.encode()) == "Success"
    finally:
        scada.close()
    daq = Publisher5(edge.settings("daq-mill-01", cid("daq")))
    try:
        assert daq.publish(f"{ROOT}/mill-01/cut", b'"sentinel-scada"') == "Success"
    finally:
        daq.close()
    settle(observers, b'"sentinel-scada"', edge.settings("edge-monitor-out", cid("monitor")))
    assert everything.wait(lambda: everything.got(b'"sentinel-scada"'))
    inputs, outputs = observers
    assert inputs.got(b'"scada-cmd-%s"' % user.encode()) == [f"{ROOT}/mill-01/cmd"]
    leaked = [t for t, p in inputs.raw + outputs.raw + everything.raw if p.startswith(b'"scada-denied')]
    assert leaked == []


def test_scada_still_reads_the_monitors_status_and_errors(edge):
    """The dashboards' deny lines name the two command topics exactly: a deny of the monitor's
    whole level would hide its status and errors from them too (Mosquitto 2.0 checks denials
    first, for reading as well)."""
    dashboard = Observer(edge.settings("scada-observe", cid("status-reader"), tls=True),
                         [f"{ROOT}/_monitor/+/status", f"{ROOT}/_monitor/+/errors"])
    try:
        monitor = Publisher5(edge.settings("edge-monitor-out", cid("monitor")))
        try:
            for leaf in ("status", "errors"):
                assert monitor.publish(f"{ROOT}/_monitor/deny-test/{leaf}", b'"visible-%s"' % leaf.encode()) == "Success"
        finally:
            monitor.close()
        assert dashboard.wait(lambda: dashboard.got(b'"visible-status"') and dashboard.got(b'"visible-errors"'))
    finally:
        dashboard.close()


REPLAY_DENIED = (
    # an empty machine level, and the monitor's own level, for every kind of input
    "/cut", "/signal/smcAC", "/cmd", "_monitor/cut", "_monitor/signal/smcAC", "_monitor/cmd",
    # no topic but a machine's exact ones, and no output
    "mill-01/signal", "mill-01/signal/smcAC/deeper", "mill-01/signal/not_a_channel", "mill-01/alarm",
    "mill-01/score",
)


def test_the_demo_user_writes_every_machines_exact_topics_only(edge, observers, everything):
    replay = Publisher5(edge.settings("replay", cid("replay")))
    try:
        for c in CHANNELS:
            assert replay.publish(f"{ROOT}/mill-02/signal/{c}", b'"replay-ok"') == "Success", c
        assert replay.publish(f"{ROOT}/mill-02/cmd", b'"replay-cmd"') == "Success"
        for i, topic in enumerate(REPLAY_DENIED):
            code = replay.publish(f"{ROOT}/{topic}", b'"replay-denied-%d"' % i, retain=True)
            assert code == "Not authorized", topic
        assert replay.publish(f"{ROOT}/mill-01/cut", b'"sentinel-replay"') == "Success"
    finally:
        replay.close()
    settle(observers, b'"sentinel-replay"', edge.settings("edge-monitor-out", cid("monitor")))
    assert everything.wait(lambda: everything.got(b'"sentinel-replay"'))
    inputs, _ = observers
    assert len(inputs.got(b'"replay-ok"')) == len(CHANNELS) and inputs.got(b'"replay-cmd"')
    assert [t for t, p in everything.raw if p.startswith(b'"replay-denied')] == []
    assert not [t for t, p in retained_under_root(edge) if p.startswith(b'"replay-denied')]


def max_packet_size(edge) -> int:
    lines = [ln.split() for ln in edge.rendered.splitlines() if ln.strip() and not ln.startswith("#")]
    return int({ln[0]: ln[1:] for ln in lines}["max_packet_size"][0])


def test_an_oversized_payload_reaches_the_monitor_and_the_stream_goes_on(edge, observers):
    """Over the monitor's limits.max_payload_bytes but under the broker's max_packet_size: it
    reaches the monitor, which rejects it with a reason on its errors topic, and the publisher's
    stream does not stall behind it."""
    daq = Publisher5(edge.settings("daq-mill-01", cid("daq-big")))
    big = b'"big-%s"' % (b"x" * (1 << 20))
    assert Limits().max_payload_bytes < len(big) < max_packet_size(edge) - 1024
    try:
        assert daq.publish(f"{ROOT}/mill-01/signal/smcAC", big) == "Success"
        assert daq.publish(f"{ROOT}/mill-01/cut", b'"after-big"') == "Success"
    finally:
        daq.close()
    inputs, _ = observers
    assert inputs.wait(lambda: inputs.got(b'"after-big"'))
    assert inputs.got(big) == [f"{ROOT}/mill-01/signal/smcAC"]


def test_a_packet_over_the_bound_is_refused_and_everyone_else_goes_on(edge, observers, everything):
    """max_packet_size: the broker disconnects a publisher whose packet is over it, before reading
    it; nobody receives it, and the monitor (its observer here) and the other machines go on. paho
    2.2 does not refuse it locally, though an MQTT 5 CONNACK announces the bound, and sends it again
    on every reconnection: that one publisher's stream stalls (edge-monitor.conf says so)."""
    bound = max_packet_size(edge)
    inputs, _ = observers
    over = b'"over-%s"' % (b"x" * bound)
    for round_, protocol in enumerate((paho.MQTTv5, paho.MQTTv311)):
        events: list[tuple] = []
        changed = threading.Condition()

        def record(*event) -> None:
            with changed:
                events.append(event)
                changed.notify_all()

        big = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid("daq-over"), protocol=protocol)
        big.username_pw_set("daq-mill-01", edge.password_file("daq-mill-01").read_text().strip())
        big.reconnect_delay_set(1, 1)
        big.on_connect = lambda c, u, f, reason, props: record(
            "connack", str(reason), getattr(props, "MaximumPacketSize", None))
        big.on_disconnect = lambda c, u, f, reason, props: record("disconnect", str(reason))
        big.on_publish = lambda c, u, mid, reason, props: record("puback", str(reason))
        seen = len(edge.log.read_text())
        big.connect(edge.host, edge.port)
        big.loop_start()
        other = Publisher5(edge.settings("daq-mill-02", cid("daq-mill-02")))
        try:
            with changed:
                assert changed.wait_for(lambda: any(e[0] == "connack" for e in events), 10)
            info = big.publish(f"{ROOT}/mill-01/signal/smcAC", over, qos=1)
            assert info.rc == paho.MQTT_ERR_SUCCESS  # not refused locally
            with changed:
                assert changed.wait_for(lambda: any(e[0] == "disconnect" for e in events), 10), events
            # the other machine goes on, while the oversized publisher is disconnected
            assert other.publish(f"{ROOT}/mill-02/cut", b'"after-over-%d"' % round_) == "Success"
            # ... and again on its reconnection, with the same message
            deadline = time.monotonic() + 10
            while edge.log.read_text()[seen:].count("daq-mill-01 disconnected due to oversize packet") < 2:
                assert time.monotonic() < deadline, edge.log_tail()
                time.sleep(0.1)
        finally:
            big.disconnect()
            big.loop_stop()
            other.close()
        assert not [e for e in events if e[0] == "puback"], events
        connacks = [e for e in events if e[0] == "connack"]
        assert len(connacks) >= 2 and {e[1] for e in connacks} == {"Success"}, events
        if protocol == paho.MQTTv5:  # the bound, announced to MQTT 5 clients
            assert {e[2] for e in connacks} == {bound}, events
        assert inputs.wait(lambda: inputs.got(b'"after-over-%d"' % round_))
    assert inputs.client.is_connected() and everything.client.is_connected()
    assert [t for t, p in inputs.raw + everything.raw if p.startswith(b'"over-')] == []


def test_tls_needs_the_ca_and_carries_credentials(edge):
    client = make_client(edge.settings("scada", cid("tls-ok"), tls=True), clean_start=True)
    connect(client)
    disconnect(client)
    # The client certificate works too (the listener accepts but does not require one).
    with_cert = dataclasses.replace(edge.settings("scada", cid("tls-cert"), tls=True), tls=TlsSettings(
        ca=edge.certs / "ca.crt", cert=edge.certs / "client.crt", key=edge.certs / "client.key"))
    client = make_client(with_cert, clean_start=True)
    connect(client)
    disconnect(client)
    # Without the test CA, the client cannot verify the broker and refuses to go on.
    system_cas = dataclasses.replace(edge.settings("scada", cid("tls-no-ca"), tls=True), tls=TlsSettings())
    with pytest.raises(BrokerError, match="certificate verify failed"):
        connect(make_client(system_cas, clean_start=True))
    # Plain MQTT on the TLS port gets no answer.
    plain_on_tls = dataclasses.replace(edge.settings("scada", cid("plain-on-tls")), port=edge.tls_port)
    with pytest.raises(BrokerError):
        connect(make_client(plain_on_tls, clean_start=True), timeout=1.5)
    # TLS 1.1 is refused (tls_version tlsv1.2).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(edge.certs / "ca.crt")
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", edge.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_no_user_can_take_over_the_monitors_session(edge):
    """The broker takes every client's id from its user name: a dashboard that asks for the
    monitor's client id gets its own, and the monitor stays connected with its session."""
    monitor = make_client(edge.settings("edge-monitor", "edge-monitor-edge-1", session_expiry=600), clean_start=False)
    connect(monitor)
    try:
        intruder = Publisher5(edge.settings("scada", "edge-monitor-edge-1", tls=True))
        try:
            time.sleep(0.5)
            assert monitor.is_connected()
            log = edge.log.read_text()
            assert re.search(r"as scada \(", log) and not re.search(r"as edge-monitor-edge-1 ", log)
        finally:
            intruder.close()
        # a second connection of the monitor's own user takes the first one's place (one per user)
        second = make_client(edge.settings("edge-monitor", "anything", session_expiry=600), clean_start=False)
        assert connect(second).session_present  # the monitor's session, under its user name
        disconnect(second)
    finally:
        disconnect(monitor)


def test_the_monitor_session_keeps_more_than_the_default_1000_messages(edge):
    """Mosquitto's default queue (1000) would drop a third of these silently."""
    n = 1500
    settings = edge.settings("edge-monitor", cid("session"), session_expiry=600)
    received = []
    client = make_client(settings, clean_start=False)
    client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{ROOT}/mill-02/signal/#", 1)
    connect(client)
    time.sleep(0.2)
    disconnect(client)
    daq = make_client(edge.settings("daq-mill-02", cid("daq-mill-02")), clean_start=True)
    connect(daq)
    try:
        for i in range(n):
            daq.publish(f"{ROOT}/mill-02/signal/smcDC", b"%d" % i, qos=1)
        last = daq.publish(f"{ROOT}/mill-02/signal/smcDC", b"last", qos=1)
        last.wait_for_publish(20)
        assert last.is_published()
    finally:
        disconnect(daq)
    done = threading.Event()

    def on_message(c, u, m) -> None:
        received.append(m.payload)
        if m.payload == b"last":
            done.set()

    client = make_client(settings, clean_start=False)
    client.on_message = on_message
    assert connect(client).session_present
    try:
        assert done.wait(20)
    finally:
        disconnect(client)
    assert received == [b"%d" % i for i in range(n)] + [b"last"]


def test_bridge_forwards_outputs_out_and_commands_in_only(edge, central, observers):
    out = Observer(BrokerSettings("127.0.0.1", central.port, cid("central-dashboard")), ["edge/#"])
    m = "bridged"  # a machine of its own: its retained alarm must not reach the other tests
    try:
        state = f"edge/{BOX}/_bridge/state"
        assert out.wait(lambda: out.on(state)), f"the bridge never connected{edge.log_tail()}"
        monitor = Publisher5(edge.settings("edge-monitor-out", cid("monitor")))
        inputs_publisher = Publisher5(edge.settings("replay", cid("replay")))
        try:
            assert inputs_publisher.publish(f"{ROOT}/{m}/signal/smcAC", b'"raw-signal"') == "Success"
            assert inputs_publisher.publish(f"{ROOT}/{m}/cut", b'"raw-cut"') == "Success"
            alarm = {"machine": m, "state": "alarm", "since": 1.0, "cut": "c1", "score": 5.0,
                     "threshold": 4.0, "model": "bridge-test"}
            for kind, body, retain in (("summary", {"cut": "c1"}, False), ("score", {"cut": "c1"}, False),
                                       ("alarm", alarm, True)):
                assert monitor.publish(f"{ROOT}/{m}/{kind}", json.dumps(body).encode(), retain=retain) == "Success"
            assert monitor.publish(f"{ROOT}/_monitor/{BOX}/status", b'{"state": "online"}', retain=True) == "Success"
        finally:
            monitor.close()
            inputs_publisher.close()
        wanted = {f"{CENTRAL_PREFIX}/{m}/{k}" for k in ("summary", "score", "alarm")}
        wanted.add(f"{CENTRAL_PREFIX}/_monitor/{BOX}/status")
        assert out.wait(lambda: wanted <= {t for t, _, _ in out.messages}), out.messages
        assert not [t for t, _, _ in out.messages if "/signal/" in t or t.endswith("/cut")]
        # The alarm is retained on the central broker too: a dashboard that starts later sees it.
        late = Observer(BrokerSettings("127.0.0.1", central.port, cid("central-late")), [f"edge/+/{ROOT}/+/alarm"])
        try:
            assert late.wait(lambda: late.messages)
            assert late.messages[0] == (f"{CENTRAL_PREFIX}/{m}/alarm", alarm, True)
        finally:
            late.close()
        # A reset from the plant reaches the monitor; an alarm or a signal sent in does not.
        inputs, _ = observers
        plant = Publisher5(BrokerSettings("127.0.0.1", central.port, cid("plant")))
        try:
            plant.publish(f"{CENTRAL_PREFIX}/{m}/alarm", b'"injected-alarm"')
            plant.publish(f"{CENTRAL_PREFIX}/{m}/signal/smcAC", b'"injected-signal"')
            plant.publish(f"{CENTRAL_PREFIX}/{m}/cmd", b'{"cmd": "reset", "by": "plant"}')
        finally:
            plant.close()
        assert inputs.wait(lambda: inputs.on(f"/{m}/cmd")), "the reset never came in"
        assert inputs.on(f"/{m}/cmd")[-1][1] == {"cmd": "reset", "by": "plant"}
        assert not inputs.got(b'"injected-alarm"') and not inputs.got(b'"injected-signal"')
    finally:
        out.close()
        clear = Publisher5(edge.settings("edge-monitor-out", cid("clear")))  # an empty retained message
        try:
            for topic in (f"{ROOT}/{m}/alarm", f"{ROOT}/_monitor/{BOX}/status"):
                clear.publish(topic, b"", retain=True)
        finally:
            clear.close()


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def test_the_monitor_works_end_to_end_under_the_acl(edge, model, tmp_path):
    """The real daemon with the monitor's credentials on the loopback listener; the machines'
    data acquisition (mill-01's own user; the demo user for mill-02, with the reset of a new
    tool); a SCADA dashboard over TLS that sees scores, summaries, the alarm, and resets it."""
    scada = edge.settings("scada", cid("dashboard"), tls=True)
    dashboard = Observer(scada, [f"{ROOT}/+/score", f"{ROOT}/+/alarm", f"{ROOT}/+/summary",
                                 f"{ROOT}/_monitor/+/status"])
    instance = "edge-e2e"
    config = (
        "broker:\n  username: edge-monitor\n"
        f"  password_file: {edge.password_file('edge-monitor')}\n"
        "  output_username: edge-monitor-out\n"
        f"  output_password_file: {edge.password_file('edge-monitor-out')}\n"
        f"state_file: {tmp_path / 'state.json'}\nstatus_interval_s: 1\n"
    )
    daemon = Daemon(tmp_path, edge, model.bundle, ROOT, instance, config).start()
    try:
        daemon.wait_online(dashboard)
        cuts = {case: [c for c in model.archive.cuts if c.case == case] for case in (11, 13)}
        by_daq = replay_cuts(edge.settings("daq-mill-01", cid("daq-mill-01")), ROOT, "mill-01", cuts[11])
        by_replay = replay_cuts(edge.settings("replay", cid("replay")), ROOT, "mill-02", cuts[13], reset_first=True)
        assert by_daq.refused == by_replay.refused == 0
        n_cuts = len(cuts[11]) + len(cuts[13])
        if not dashboard.wait(lambda: len(dashboard.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"SCADA got {len(dashboard.on('/summary'))} of {n_cuts} summaries")
        scored = {t.split("/")[1] for t, _ in dashboard.on("/score")}
        assert scored == set(MACHINES)
        states = {m: [b["state"] for t, b in dashboard.on(f"/{m}/alarm")] for m in MACHINES}
        assert states["mill-01"] == [] and states["mill-02"][-1] == "alarm", states
        # The monitor read its retained alarms back through its private sync topic, and rejected
        # nothing: every topic it needs is open to it.
        assert daemon.events("retained_alarms_incomplete") == []
        assert daemon.events("rejected") == []

        # A dashboard that starts now gets the current state at once (retained).
        late = Observer(edge.settings("scada-late", cid("late-dashboard"), tls=True), [f"{ROOT}/+/alarm"])
        try:
            assert late.wait(lambda: late.messages)
            topic, body, retained = late.messages[0]
            assert (topic, body["state"], retained) == (f"{ROOT}/mill-02/alarm", "alarm", True)
        finally:
            late.close()

        # The shift lead changes the tool and resets from the dashboard, over TLS.
        operator = Publisher5(edge.settings("scada-operator", cid("operator"), tls=True))
        try:
            assert operator.publish(f"{ROOT}/mill-02/cmd", b'{"cmd": "reset", "by": "shift-lead"}') == "Success"
        finally:
            operator.close()
        reset = dashboard.wait(lambda: dashboard.on("/mill-02/alarm")[-1][1]["state"] == "normal")
        assert reset, "the reset did not clear the alarm"
        assert daemon.terminate() == 0
        status = f"/_monitor/{instance}/status"
        assert dashboard.wait(lambda: dashboard.on(status)[-1][1]["state"] == "offline")
    finally:
        daemon.kill()
        dashboard.close()


def test_results_the_acl_refuses_are_counted_and_named(model, tmp_path):
    """A monitor told to batch its scores (``outputs.scores: batch``) on a broker whose ACL is from
    before them (no ``scores`` line: an upgrade that kept the old ACL). The broker refuses every
    batch (MQTT 5: not authorized); the monitor counts them (``outputs_refused``), logs once what to
    fix, and goes on: the summaries and the status still arrive, and nothing else is refused."""
    broker = DeployBroker(tmp_path / "broker", MACHINES, root=ROOT, dashboards=("observe",))
    acl = broker.etc / "acl"
    text = acl.read_text()
    assert f"topic write {ROOT}/+/scores\n" in text and f"topic read {ROOT}/+/scores\n" in text
    acl.write_text(text.replace(f"topic write {ROOT}/+/scores\n", ""))
    broker.start()
    dashboard = None
    daemon = None
    try:
        dashboard = Observer(broker.settings("scada-observe", cid("dashboard"), tls=True),
                             [f"{ROOT}/+/scores", f"{ROOT}/+/summary", f"{ROOT}/_monitor/+/status"])
        config = (
            "broker:\n  username: edge-monitor\n"
            f"  password_file: {broker.password_file('edge-monitor')}\n"
            "  output_username: edge-monitor-out\n"
            f"  output_password_file: {broker.password_file('edge-monitor-out')}\n"
            f"state_file: {tmp_path / 'state.json'}\nstatus_interval_s: 1\noutputs: {{scores: batch}}\n"
        )
        (tmp_path / "daemon").mkdir()
        daemon = Daemon(tmp_path / "daemon", broker, model.bundle, ROOT, "edge-refused", config).start()
        daemon.wait_online(dashboard)
        cuts = [c for c in model.archive.cuts if c.case == 11][:2]
        assert replay_cuts(broker.settings("daq-mill-01", cid("daq-mill-01")), ROOT, "mill-01", cuts).refused == 0
        if not dashboard.wait(lambda: len(dashboard.on("/summary")) >= len(cuts), 60):
            daemon.fail(f"SCADA got {len(dashboard.on('/summary'))} of {len(cuts)} summaries")

        def refused() -> int:
            statuses = [b for _, b in dashboard.on("/status") if isinstance(b, dict) and "counters" in b]
            return statuses[-1]["counters"]["outputs_refused"] if statuses else 0

        assert dashboard.wait(lambda: refused() > 0, 10), "the refused batches were not counted"
        assert dashboard.on("/scores") == []  # the broker refused every one
        logged = daemon.events("output_refused")
        assert len(logged) == 1 and logged[0]["level"] == "error", logged  # once a minute at most
        assert "user edge-monitor-out" in logged[0]["detail"] and "make-users.sh" in logged[0]["detail"]
        assert "authorized" in logged[0]["reason"].lower()
        assert daemon.terminate() == 0
    finally:
        if daemon is not None:
            daemon.kill()
        if dashboard is not None:
            dashboard.close()
        broker.kill()
