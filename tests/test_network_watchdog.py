"""The main loop watches paho's network thread: when it dies, or stops delivering while connected
(the monitor's own ping does not come back), the monitor stops with NetworkStalled, which the
entry point turns into exit code 1 so that systemd restarts the service."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from daemon_support import Collector, model_fixture

from edge_monitor.service.config import load_config
from edge_monitor.service.liveness import NetworkStalled
from edge_monitor.service.monitor import Monitor


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def monitor_for(broker, model, instance: str) -> Monitor:
    from edge_monitor.model.meta import read_bundle_meta
    from edge_monitor.model.runtime import choose_runtime
    from edge_monitor.model.serving import load_serving

    meta = read_bundle_meta(model.bundle)
    config = load_config(None, {"broker": broker.address, "bundle": str(model.bundle), "root": "t-stall",
                                "instance": instance})
    config = replace(config, delivery=replace(config.delivery, stall_timeout_s=2.0, checkpoint_interval_ms=100),
                     metrics=replace(config.metrics, port=0))  # any free port: not the host's 8469
    monitor = Monitor(config, load_serving(model.bundle, choose_runtime("auto", "cpu", meta), meta), "cpu")
    monitor.start()
    return monitor


def test_a_stuck_network_thread_stops_the_monitor(broker, model):
    monitor = monitor_for(broker, model, "w1")
    release = threading.Event()
    try:
        # something on the network thread that never returns (a deadlock in a callback, say)
        monitor.client.message_callback_add("t-stall/block", lambda *args: release.wait())
        monitor.client.subscribe("t-stall/block", 0)
        time.sleep(0.3)
        pub = Collector(broker, [], "pub-stall")
        pub.client.publish("t-stall/block", b"x", qos=0).wait_for_publish(5)
        pub.close()
        started = time.monotonic()
        with pytest.raises(NetworkStalled, match="nothing has come in .* own ping: the MQTT network thread is stuck"):
            monitor.run()
        assert time.monotonic() - started < 10
    finally:
        release.set()
        for client in (monitor.client, monitor.out):
            client.disconnect()
            client.loop_stop()


def test_a_dead_network_thread_stops_the_monitor(broker, model):
    monitor = monitor_for(broker, model, "w2")
    monitor.client.loop_stop()  # the input connection's thread ends, as if it had died
    with pytest.raises(NetworkStalled, match="network thread is not running"):
        monitor.run()
    monitor.out.disconnect()
    monitor.out.loop_stop()
