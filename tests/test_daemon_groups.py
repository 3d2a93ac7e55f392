"""Checkpoint groups in a running daemon (``delivery.checkpoint_groups``): a machine's group comes
round rarely, but a new machine, a cut's end and a machine leaving memory reach the state file with
the next checkpoint, and every input is acknowledged once its machine's snapshot is written."""

from __future__ import annotations

import time

import numpy as np
import pytest
from daemon_support import Collector, Daemon, model_fixture

from edge_monitor.archive.publisher import Publisher
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.inbound import CutEnd, CutStart, SignalChunk
from edge_monitor.core.outbound import encode
from edge_monitor.core.topics import cut_topic, signal_topic
from edge_monitor.service import state_format
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client

ROOT = "t-groups"
INSTANCE = "groups"
# 60 groups: without the exceptions, a machine would wait up to a minute for its turn
CONFIG = ("machines: 'g-*'\nstate_file: state.json\nstatus_interval_s: 1\n"
          "delivery: {checkpoint_groups: 60}\nlimits: {idle_machine_s: 2}\n")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def in_file(path) -> tuple[set[str], set[str]]:
    """The machines with an open-cut record, and those with an alarm state, in the state file."""
    try:
        contents = state_format.parse(path.read_bytes())
    except FileNotFoundError:
        return set(), set()
    return set(contents.streams), set((contents.head or {}).get("machines", {}))


def test_new_ended_and_leaving_machines_are_checkpointed_at_once(module_broker, model, tmp_path):
    collector = Collector(module_broker, [f"{ROOT}/#"], "collector-groups")
    daemon = Daemon(tmp_path, module_broker, model.bundle, ROOT, INSTANCE, CONFIG).start()
    client = make_client(BrokerSettings(module_broker.host, module_broker.port, client_id="pub-groups"),
                         clean_start=True)
    state = tmp_path / "state.json"
    rng = np.random.default_rng(5)
    sent = 0
    try:
        daemon.wait_online(collector)
        connect(client)
        publisher = Publisher(client)

        def send(machine: str, *messages) -> None:
            nonlocal sent
            for message in messages:
                if isinstance(message, tuple):
                    channel, message = message
                    publisher.publish(signal_topic(ROOT, machine, channel), encode(message))
                else:
                    publisher.publish(cut_topic(ROOT, machine), encode(message))
                sent += 1
            assert publisher.wait_all(10)

        def chunks(cut: str, offset: int, n: int = 64):
            return [(c, SignalChunk(cut, offset, rng.normal(size=n))) for c in CHANNELS]

        # g-00 first: the first checkpoint takes every machine, so it proves nothing about groups
        send("g-00", CutStart("a", time.time(), SAMPLE_RATE_HZ))
        assert collector.wait(lambda: "g-00" in in_file(state)[0], 10), "no first checkpoint"
        send("g-01", CutStart("b", time.time(), SAMPLE_RATE_HZ), *chunks("b", 0))
        assert collector.wait(lambda: "g-01" in in_file(state)[0], 5), "a new machine waited for its group"
        send("g-01", *chunks("b", 64), CutEnd("b", time.time(), 128))
        summary = f"{ROOT}/g-01/summary"
        assert collector.wait(lambda: collector.on(summary), 10), "no summary"
        # idle for limits.idle_machine_s: it leaves memory, and its open-cut record the file; its
        # alarm state stays
        assert collector.wait(lambda: "g-01" not in in_file(state)[0], 8), "a machine that left stayed in the file"
        assert "g-01" in in_file(state)[1]

        def acknowledged() -> int:
            statuses = collector.on(f"/_monitor/{INSTANCE}/status")
            return statuses[-1][1]["counters"]["inputs_acknowledged"] if statuses else -1

        # every input acknowledged: g-00's with the first checkpoint, g-01's with the snapshots
        # its new cut and its summary called for
        assert collector.wait(lambda: acknowledged() == sent, 10), (acknowledged(), sent)
    finally:
        disconnect(client)
        collector.close()
        daemon.terminate()
