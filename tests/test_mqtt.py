"""The MQTT shell against a real Mosquitto: MQTT 5 connection, TCP_NODELAY, persistent sessions,
reconnection after a broker restart, the will, and clear errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time

import paho.mqtt.client as paho
import pytest
from broker import Subscriber, free_port

from edge_monitor.archive.publisher import Publisher
from edge_monitor.service.mqtt import (
    BrokerError,
    BrokerSettings,
    TlsSettings,
    connect,
    disconnect,
    make_client,
    parse_address,
    read_password,
)

pytestmark = pytest.mark.timeout(60)


def settings(broker, client_id: str, **kw) -> BrokerSettings:
    return BrokerSettings(broker.host, broker.port, client_id, **kw)


def publish(broker, topic: str, payloads: list[bytes]) -> None:
    client = make_client(settings(broker, "test-publisher"), clean_start=True)
    connect(client)
    publisher = Publisher(client)
    for payload in payloads:
        publisher.publish(topic, payload)
    assert publisher.wait_all(10)
    disconnect(client)


def test_connects_with_mqtt5_and_tcp_nodelay(broker):
    client = make_client(settings(broker, "nodelay"), clean_start=False)
    connected = connect(client)
    try:
        assert client.protocol == paho.MQTTv5
        assert connected.session_present is False  # a new persistent session
        sock = client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        disconnect(client)


def test_persistent_session_keeps_qos1_messages_published_while_away(broker):
    with Subscriber(broker, "t/persist/#", client_id="monitor-1", clean_start=False) as sub:
        assert sub.connected.session_present is False
    payloads = [b"%d" % i for i in range(200)]
    publish(broker, "t/persist/x", payloads)  # nobody connected: the broker queues them in the session

    with Subscriber(broker, "t/persist/#", client_id="monitor-1", clean_start=False) as sub:
        assert sub.connected.session_present is True
        assert sub.wait_for(lambda ms: len(ms) >= len(payloads), 10)
        assert [m.payload for m in sub.snapshot()] == payloads  # all of them, in order, once


def test_clean_start_drops_the_session(broker):
    with Subscriber(broker, "t/clean/#", client_id="monitor-2", clean_start=False):
        pass
    publish(broker, "t/clean/x", [b"old"])
    with Subscriber(broker, "t/clean/#", client_id="monitor-2", clean_start=True) as sub:
        assert sub.connected.session_present is False
        publish(broker, "t/clean/x", [b"new"])
        assert sub.wait_for(lambda ms: len(ms) >= 1, 10)
        assert [m.payload for m in sub.snapshot()] == [b"new"]


def test_reconnects_by_itself_after_a_broker_restart(broker):
    with Subscriber(broker, "t/restart/#", client_id="monitor-3", clean_start=False) as sub:
        publish(broker, "t/restart/x", [b"before"])
        assert sub.wait_for(lambda ms: len(ms) == 1, 10)
        broker.restart()  # graceful: the session is saved and restored
        publish(broker, "t/restart/x", [b"after"])  # may arrive before the subscriber is back
        assert sub.wait_for(lambda ms: any(m.payload == b"after" for m in ms), 15), broker.log_tail()
        received = sub.snapshot()
        # At least once: if the restart raced the PUBACK of "before", the broker saved it as
        # unacknowledged and delivers it again after the restart (seen in CI). Nothing else repeats.
        payloads = [m.payload for m in received]
        assert payloads in ([b"before", b"after"], [b"before", b"before", b"after"],
                            [b"before", b"after", b"before"]), payloads


def test_reconnect_polls_a_port_that_refuses_and_backs_off_from_one_that_answers(broker):
    """While nothing listens on the broker's port, an attempt every 0.25 s (back soon after the
    broker); once something answers there and hangs up (a broker refusing the client), the waits
    double instead of polling it."""
    client = make_client(settings(broker, "reconnect-policy"), clean_start=True)
    attempts: list[float] = []
    policy = client.on_pre_connect
    client.on_pre_connect = lambda c, u: (attempts.append(time.monotonic()), policy(c, u))
    connect(client)
    attempts.clear()
    listener = socket.socket()
    try:
        broker.kill()
        time.sleep(3.0)
        polled = len(attempts)
        # the first after reconnect_min_delay (0.5 s), then one every reconnect_poll_delay (0.25 s)
        assert 8 <= polled <= 13, f"{polled} attempts in 3 s while the port refused (wanted one every 0.25 s)"

        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((broker.host, broker.port))
        listener.listen(16)
        listener.settimeout(0.2)

        def hang_up() -> None:
            while listener.fileno() != -1:
                try:
                    listener.accept()[0].close()
                except OSError:
                    continue

        threading.Thread(target=hang_up, daemon=True).start()
        attempts.clear()
        time.sleep(4.0)
        # polling would make 16; backing off from 0.5 s: about 0.5, 1, 2 s apart
        assert 1 <= len(attempts) <= 5, f"{len(attempts)} attempts in 4 s against a port that hangs up"
    finally:
        listener.close()
        disconnect(client)


def test_will_is_published_when_the_client_dies(broker):
    script = textwrap.dedent(f"""
        import time
        from edge_monitor.service.mqtt import BrokerSettings, connect, make_client
        client = make_client(BrokerSettings("{broker.host}", {broker.port}, "doomed"),
                             will=("t/will/status", b"offline", 1, True), clean_start=True)
        connect(client)
        print("ready", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
        child.wait()
    finally:
        child.kill()
    with Subscriber(broker, "t/will/#") as sub:  # subscribes after the death: the will is retained
        assert sub.wait_for(lambda ms: len(ms) == 1, 10)
        message = sub.snapshot()[0]
        assert (message.topic, message.payload, message.retain) == ("t/will/status", b"offline", True)


def test_unreachable_broker_is_a_clear_error():
    port = free_port()  # nothing listens there
    client = make_client(BrokerSettings("127.0.0.1", port, "nobody"), clean_start=True)
    with pytest.raises(BrokerError, match=rf"cannot reach broker 127\.0\.0\.1:{port}: connection refused"):
        connect(client, timeout=2)
    client = make_client(BrokerSettings("no-such-host.invalid", 1883, "nobody"), clean_start=True)
    with pytest.raises(BrokerError, match="cannot reach broker no-such-host.invalid:1883: unknown host"):
        connect(client, timeout=2)


def test_password_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    assert read_password(tmp_path / "pw") == "s3cret"
    (tmp_path / "empty").write_text("")
    with pytest.raises(BrokerError, match="empty"):
        read_password(tmp_path / "empty")
    missing = tmp_path / "missing"
    with pytest.raises(BrokerError, match=f"broker password file {missing}: cannot read it"):
        make_client(BrokerSettings(username="u", password_file=missing), clean_start=True)
    with pytest.raises(BrokerError, match="broker TLS CA file .*nowhere.crt: no such file"):
        make_client(BrokerSettings(tls=TlsSettings(ca=tmp_path / "nowhere.crt")), clean_start=True)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("localhost:1883", ("localhost", 1883)),
        ("10.1.2.3:1884", ("10.1.2.3", 1884)),
        ("broker.lan", ("broker.lan", 1883)),
        ("[::1]:8883", ("::1", 8883)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:x", "a:b:c", "host:0", "host:65536", "with space:1"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_tls_files_that_are_not_certificates(tmp_path):
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(BrokerError, match=r"broker TLS files \(.*ca.crt\): cannot load them"):
        make_client(BrokerSettings(tls=TlsSettings(ca=tmp_path / "ca.crt")), clean_start=True)
