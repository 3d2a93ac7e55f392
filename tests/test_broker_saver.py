"""``deploy/mosquitto/save-while-small`` against a real Mosquitto: while the database is small it
has the broker save every few seconds, so that a SIGKILL loses only those seconds (a retained
alarm set half a second before the kill comes back); a big database is left to the broker's own
``autosave_interval``; bad arguments are refused with the option named."""

from __future__ import annotations

import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from broker import Broker
from deploy_broker import DEPLOY

SAVER = DEPLOY / "save-while-small"


def saver(*args: str) -> list[str]:
    return [str(SAVER), *args]


def db_identity(broker: Broker):
    try:
        st = (broker.workdir / "mosquitto.db").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for_change(broker: Broker, before, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db_identity(broker) != before:
            return True
        time.sleep(0.01)
    return False


def publish_retained(broker: Broker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def read_retained(broker: Broker, topic: str, wait: float = 1.0) -> bytes | None:
    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, message: got.setdefault(message.topic, message.payload)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + wait
        while topic not in got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.loop_stop()
        client.disconnect()
    return got.get(topic)


def test_one_round_saves_a_small_database_and_leaves_a_big_one(tmp_path):
    with Broker(tmp_path) as broker:
        db = str(broker.workdir / "mosquitto.db")
        before = db_identity(broker)
        done = subprocess.run(saver("--once", "--pid", str(broker.pid), "--db", db), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert wait_for_change(broker, before, 5.0), "no save after the first round (a new box: no database yet)"

        saved = db_identity(broker)
        too_small_a_limit = str((broker.workdir / "mosquitto.db").stat().st_size - 1)
        done = subprocess.run(saver("--once", "--pid", str(broker.pid), "--db", db, "--max-bytes", too_small_a_limit),
                              capture_output=True, text=True)
        assert done.returncode == 1, done.stderr
        assert not wait_for_change(broker, saved, 1.0), "saved a database over --max-bytes"


def test_a_broker_killed_half_a_second_after_a_change_keeps_it(tmp_path):
    """Mosquitto alone (autosave every 30 min here) loses the retained alarm; with the saver every
    0.2 s it comes back."""
    topic = "mill/mill-01/alarm"
    for with_saver in (False, True):
        with Broker(tmp_path / f"saver-{with_saver}") as broker:
            publish_retained(broker, topic, b"normal")
            broker.save()
            loop = None
            if with_saver:
                loop = subprocess.Popen(saver("--every", "0.2", "--pid", str(broker.pid),
                                              "--db", str(broker.workdir / "mosquitto.db")))
            try:
                publish_retained(broker, topic, b"alarm")
                time.sleep(0.6)
                broker.kill()
            finally:
                if loop is not None:
                    loop.terminate()
                    loop.wait(5)
            broker.start()
            assert read_retained(broker, topic) == (b"alarm" if with_saver else b"normal"), f"saver: {with_saver}"


@pytest.mark.parametrize("args, named", [
    (("--every", "soon"), "--every 'soon'"),
    (("--max-bytes", "8M"), "--max-bytes '8M'"),
    (("--pid", "x"), "--pid 'x'"),
    (("--db", "/no/such/dir/mosquitto.db"), "--db /no/such/dir/mosquitto.db"),
    (("--frobnicate",), "unknown argument --frobnicate"),
])
def test_bad_arguments_are_refused_naming_the_option(args, named):
    done = subprocess.run(saver("--once", *args), capture_output=True, text=True, timeout=10)
    assert done.returncode == 2
    assert named in done.stderr
