"""The Sparkplug B edge node's session against a real Mosquitto, read by a host application that
decodes with Eclipse Tahu's codec (``tests/sparkplug_host.py``): topics, QoS and retain, the will
and bdSeq across a killed connection and a restart, seq wrapping, a rebirth after a gap, the
primary host's state, and device commands. The daemon end to end: ``test_daemon_sparkplug.py``."""

from __future__ import annotations

import socket
import time

import pytest
import structlog
from sparkplug_host import Host, TahuCodec, publish_state

from edge_monitor.core.alarm import Thresholds
from edge_monitor.core.outbound import AlarmMessage, SummaryMessage
from edge_monitor.core.steps import Output
from edge_monitor.service.mqtt import BrokerSettings
from edge_monitor.service.sparkplug import Refused, Reset, SparkplugEdge, SparkplugSettings

THRESHOLDS = Thresholds(1.0, 2.0, "recon", "test")


@pytest.fixture(scope="module")
def tahu():
    codec = TahuCodec()
    yield codec
    codec.close()


def alarm(machine: str, state: str = "normal", cut: str | None = None) -> AlarmMessage:
    return AlarmMessage(machine, state, 1_700_000_000.0 if state != "normal" else None, cut, None, None, "model-1")


class Edge:
    """A :class:`SparkplugEdge` and the main loop's turns, as the monitor runs them. ``broker``: a
    test broker (anonymous) or the monitor's :class:`BrokerSettings`."""

    def __init__(self, broker, tmp_path, group: str, **settings) -> None:
        if isinstance(broker, BrokerSettings):
            self.broker = broker
        else:
            self.broker = BrokerSettings(host=broker.host, port=broker.port, reconnect_max_delay=2,
                                         client_id=f"edge-{group}-{settings.get('edge_node_id')}")
        self.settings = SparkplugSettings(enabled=True, group_id=group, **settings)
        self.commands: list = []
        self.edge = SparkplugEdge(self.settings, self.broker, "box-1", tmp_path / "bdseq", THRESHOLDS,
                                  lambda m: alarm(m), structlog.get_logger("test"))

    def run_until(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.commands += self.edge.turn()
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def summaries(self, machine: str, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            summary = SummaryMessage(f"c{i}", 3, 0, (10, 90), 0.1, 0.2, "normal", judged=float(i), ended=1_700_000_000 + i)
            self.edge.outputs([Output(machine, summary)])


def bd_seq(got) -> int:
    return int(got.value("bdSeq"))


def test_births_will_and_bdseq_across_a_killed_connection_and_a_restart(broker, tmp_path, tahu):
    host = Host(broker, tahu, "g-will")
    edge = Edge(broker, tmp_path, "g-will")
    try:
        edge.edge.machines([alarm("mill-01", "alarm", "c9"), alarm("mill-02")])
        edge.edge.start()
        assert edge.run_until(lambda: len(host.of("DBIRTH")) == 2), host.received
        first = host.of("NBIRTH")[0]
        assert first.topic == "spBv1.0/g-will/NBIRTH/box-1" and (first.qos, first.retain, first.seq) == (0, False, 0)
        assert bd_seq(first) == 0 and first.metrics()["bdSeq"]["type"] == "Int64"
        assert first.value("Node Control/Rebirth") is False and first.metrics()["Node Control/Rebirth"]["alias"] is None
        births = [(r.kind, r.device, r.seq) for r in host.received]
        assert births == [("NBIRTH", None, 0), ("DBIRTH", "mill-01", 1), ("DBIRTH", "mill-02", 2)]
        mill_01 = host.of("DBIRTH", "mill-01")[0]
        assert mill_01.topic == "spBv1.0/g-will/DBIRTH/box-1/mill-01" and (mill_01.qos, mill_01.retain) == (0, False)
        assert mill_01.value("Alarm/State") == "alarm" and mill_01.value("Alarm/Level") == 2  # never "normal" first
        assert mill_01.value("Alarm/Cut") == "c9" and mill_01.value("Thresholds/Alarm") == 2.0
        assert mill_01.metrics()["Last Cut/Id"]["value"] is None  # every tag named, null until a cut ends

        edge.summaries("mill-01", 1)
        assert edge.run_until(lambda: host.of("DDATA"))
        data = host.of("DDATA")[0]
        assert data.topic.endswith("/DDATA/box-1/mill-01") and (data.qos, data.retain, data.seq) == (0, False, 3)
        named = host.named(data)
        assert named["Last Cut/Id"][0]["value"] == "c0" and named["Last Cut/Judged"][0]["timestamp"] == "1700000000000"
        assert "Alarm/State" not in named  # only what changed

        # The connection dies without a DISCONNECT: the broker sends the will, the NDEATH of bdSeq 0;
        # paho reconnects with the next bdSeq, and the births carry it.
        edge.edge.client.socket().shutdown(socket.SHUT_RDWR)
        assert edge.run_until(lambda: len(host.of("NBIRTH")) == 2 and len(host.of("DBIRTH")) == 4), host.received
        [death] = host.of("NDEATH")
        assert death.topic == "spBv1.0/g-will/NDEATH/box-1" and (death.qos, death.retain) == (1, False)
        assert bd_seq(death) == 0 and death.seq is None and [m["name"] for m in death.body["metrics"]] == ["bdSeq"]
        second = host.of("NBIRTH")[1]
        assert bd_seq(second) == 1 and second.seq == 0
        assert host.of("DBIRTH", "mill-01")[1].value("Last Cut/Id") == "c0"  # the birth carries the present state
        assert host.received.index(death) < host.received.index(second)

        edge.edge.stop()  # a deliberate stop: disconnect with the will, the NDEATH of the will in force
        assert host.wait(lambda: len(host.of("NDEATH")) == 2)
        assert bd_seq(host.of("NDEATH")[1]) == 1
        time.sleep(0.5)
        assert len(host.of("NDEATH")) == 2  # and no will after it

        restarted = Edge(broker, tmp_path, "g-will")  # the same bdSeq file: a restart goes on from it
        restarted.edge.start()
        assert restarted.run_until(lambda: len(host.of("NBIRTH")) == 3)
        assert bd_seq(host.of("NBIRTH")[2]) == 2 and (tmp_path / "bdseq").read_text() == "2\n"
        restarted.edge.stop()
        assert host.problems == []
    finally:
        edge.edge.stop()
        host.close()


def test_seq_wraps_and_a_host_that_missed_a_message_gets_a_rebirth(broker, tmp_path, tahu):
    host = Host(broker, tahu, "g-seq")
    edge = Edge(broker, tmp_path, "g-seq")
    try:
        edge.edge.machines([alarm("mill-01"), alarm("mill-02")])
        edge.edge.start()
        assert edge.run_until(lambda: len(host.of("DBIRTH")) == 2)
        edge.summaries("mill-01", 150)
        edge.summaries("mill-02", 150)
        assert edge.run_until(lambda: len(host.of("DDATA")) == 300), len(host.of("DDATA"))
        seqs = [r.seq for r in host.received]
        assert seqs == [k % 256 for k in range(303)] and host.gaps == []  # wire order is seq order, 255 → 0

        host.drop_next_ddata = True  # one DDATA lost on the way: the host sees a gap and asks for a rebirth
        edge.summaries("mill-01", 3, start=150)
        assert edge.run_until(lambda: len(host.of("NBIRTH")) == 2 and len(host.of("DBIRTH")) == 4), host.gaps
        assert host.gaps == [(47, 48)] and host.rebirths_requested == 1 and len(host.dropped) == 1
        rebirth = host.of("NBIRTH")[1]
        assert rebirth.seq == 0 and bd_seq(rebirth) == bd_seq(host.of("NBIRTH")[0])  # same session, same bdSeq
        after = host.received[host.received.index(rebirth):]
        assert [(r.kind, r.device, r.seq) for r in after[:3]] == [("NBIRTH", None, 0), ("DBIRTH", "mill-01", 1),
                                                                 ("DBIRTH", "mill-02", 2)]
        assert host.of("NDEATH") == []  # answered without disconnecting
        assert host.of("DBIRTH", "mill-01")[1].value("Last Cut/Id") == "c152"
        edge.summaries("mill-02", 1, start=150)
        assert edge.run_until(lambda: host.of("DDATA")[-1].seq == 3 and host.of("DDATA")[-1].device == "mill-02")
        assert len(host.gaps) == 1
        assert host.problems == []
    finally:
        edge.edge.stop()
        host.close()


def test_births_wait_for_the_primary_host_and_its_going_offline_starts_over(broker, tmp_path, tahu):
    host = Host(broker, tahu, "g-primary")
    edge = Edge(broker, tmp_path, "g-primary", primary_host_id="scada-1")
    try:
        publish_state(broker, "scada-1", online=False)
        edge.edge.machines([alarm("mill-01")])
        edge.edge.start()
        assert not edge.run_until(lambda: host.of("NBIRTH"), timeout=1.5)  # connected, waiting for the host
        edge.summaries("mill-01", 1)
        assert edge.edge.unsent == 0  # nothing was due: the birth will carry it
        publish_state(broker, "scada-1", online=True)
        assert edge.run_until(lambda: len(host.of("DBIRTH")) == 1)
        assert bd_seq(host.of("NBIRTH")[0]) == 0 and host.of("DBIRTH")[0].value("Last Cut/Id") == "c0"

        publish_state(broker, "scada-1", online=False)  # the host went away: NDEATH, disconnect, start over
        assert edge.run_until(lambda: host.of("NDEATH"))
        assert bd_seq(host.of("NDEATH")[0]) == 0
        assert not edge.run_until(lambda: len(host.of("NBIRTH")) == 2, timeout=1.5)
        publish_state(broker, "scada-1", online=True)
        assert edge.run_until(lambda: len(host.of("NBIRTH")) == 2)
        assert bd_seq(host.of("NBIRTH")[1]) == 1 and len(host.of("NDEATH")) == 1  # a new session, one NDEATH
        assert host.problems == []
    finally:
        edge.edge.stop()
        host.close()
        publish_state(broker, "scada-1", online=False)


def test_device_commands_are_refused_unless_resets_are_on_and_carried_out_when_they_are(broker, tmp_path, tahu):
    host = Host(broker, tahu, "g-cmd")
    refusing = Edge(broker, tmp_path / "a", "g-cmd")
    resetting = Edge(broker, tmp_path / "b", "g-cmd", edge_node_id="box-2", device_reset=True)
    try:
        for edge in (refusing, resetting):
            edge.edge.machines([alarm("mill-01", "alarm", "c1")])
            edge.edge.start()
        assert refusing.run_until(lambda: resetting.run_until(lambda: len(host.of("DBIRTH")) == 2, 0.1))
        births = {r.topic.split("/")[3]: r for r in host.of("DBIRTH")}
        assert "Device Control/Reset" not in births["box-1"].metrics()
        assert births["box-2"].metrics()["Device Control/Reset"]["value"] is False

        host.command("box-1", "mill-01", "Device Control/Reset")
        assert refusing.run_until(lambda: refusing.commands)
        [refused] = refusing.commands
        assert isinstance(refused, Refused) and "sparkplug.device_reset" in refused.reason

        host.command("box-2", "mill-01", "Device Control/Reset", value=False)  # only true resets
        host.command("box-2", "mill-01", "Device Control/Reset")
        assert resetting.run_until(lambda: len(resetting.commands) == 2)
        assert isinstance(resetting.commands[0], Refused) and "Device Control/Reset = true" in resetting.commands[0].reason
        assert resetting.commands[1] == Reset("mill-01", "spBv1.0/g-cmd/DCMD/box-2/mill-01")

        host.client.publish("spBv1.0/g-cmd/NCMD/box-2", b"\xff\xff", qos=0)  # not a payload at all
        assert resetting.run_until(lambda: len(resetting.commands) == 3)
        assert "not a Sparkplug B command" in resetting.commands[2].reason
        assert host.problems == []
    finally:
        refusing.edge.stop()
        resetting.edge.stop()
        host.close()


def test_on_the_deployed_broker_the_node_and_a_scada_host_have_the_rights_they_need(tmp_path, tahu):
    """make-users.sh's users and ACL: the node logs in as edge-monitor-sparkplug beside the
    monitor's two connections; the dashboard user scada is a Sparkplug host (reads everything,
    publishes its STATE and rebirth requests)."""
    from deploy_broker import DeployBroker

    broker = DeployBroker(tmp_path / "broker", ("mill-01",)).start()
    try:
        monitor = broker.settings("edge-monitor", "edge-monitor-edge-1")
        inputs = Host(monitor, tahu, "plant")  # the monitor's inputs connection stands for itself
        publish_state(broker.settings("scada", "any"), "scada-primary", online=True)  # (scada's one connection)
        edge = Edge(monitor, tmp_path, "plant", primary_host_id="scada-primary", username="edge-monitor-sparkplug",
                    password_file=broker.password_file("edge-monitor-sparkplug"))
        host = Host(broker.settings("scada", "any"), tahu, "plant")
        edge.edge.machines([alarm("mill-01", "warning", "c1")])
        edge.edge.start()
        assert edge.run_until(lambda: host.of("DBIRTH")), broker.log_tail()
        assert host.of("DBIRTH")[0].value("Alarm/State") == "warning"
        host.request_rebirth("box-1")
        assert edge.run_until(lambda: len(host.of("NBIRTH")) == 2), broker.log_tail()
        assert inputs.client.is_connected()  # a user of its own: it took over nobody's connection
        edge.edge.stop()
        assert host.wait(lambda: host.of("NDEATH"))
        assert host.problems == []
        host.close()
        inputs.close()
    finally:
        broker.kill()


def test_after_a_lost_connection_births_wait_for_the_primary_host_again(broker, tmp_path, tahu):
    host = Host(broker, tahu, "g-again")
    edge = Edge(broker, tmp_path, "g-again", primary_host_id="scada-2")
    try:
        publish_state(broker, "scada-2", online=True)
        edge.edge.machines([alarm("mill-01")])
        edge.edge.start()
        assert edge.run_until(lambda: host.of("DBIRTH"))
        # The connection dies and, while the node is away, the host goes offline: back, the node
        # must wait for the host again rather than birth on the state it saw before.
        edge.edge.client.loop_stop()
        edge.edge.client.socket().shutdown(socket.SHUT_RDWR)
        assert host.wait(lambda: host.of("NDEATH"))
        publish_state(broker, "scada-2", online=False)
        edge.edge.client.loop_start()
        assert not edge.run_until(lambda: len(host.of("NBIRTH")) == 2, timeout=2.0)
        publish_state(broker, "scada-2", online=True)
        assert edge.run_until(lambda: len(host.of("NBIRTH")) == 2)
        assert bd_seq(host.of("NBIRTH")[1]) == 1 and bd_seq(host.of("NDEATH")[0]) == 0
        # and this session's will carries this session's bdSeq
        edge.edge.client.socket().shutdown(socket.SHUT_RDWR)
        assert host.wait(lambda: len(host.of("NDEATH")) == 2) and bd_seq(host.of("NDEATH")[1]) == 1
        assert host.problems == []
    finally:
        edge.edge.stop()
        host.close()
        publish_state(broker, "scada-2", online=False)


def test_a_failure_inside_sparkplug_is_contained_and_answered_with_a_birth(broker, tmp_path, tahu):
    host = Host(broker, tahu, "g-contain")
    edge = Edge(broker, tmp_path, "g-contain")
    try:
        edge.edge.machines([alarm("mill-01", "warning", "c0")])
        edge.edge.start()
        assert edge.run_until(lambda: host.of("DBIRTH"))
        # a data acquisition whose clock sends nanoseconds: no time rather than a wrong one
        edge.edge.outputs([Output("mill-01", AlarmMessage("mill-01", "alarm", 1.7e18, "c1", 3.0, 2.0, "model-1"))])
        assert edge.run_until(lambda: host.of("DDATA"))
        since = host.named(host.of("DDATA")[0])["Alarm/Since"][0]
        assert since["value"] is None and not since["absent"] and edge.edge.failures == 0
        # a state no tag knows (a bug, say): logged and counted, the monitor goes on, a new birth
        # puts the host back in step
        edge.edge.outputs([Output("mill-01", AlarmMessage("mill-01", "bogus", 1.0, "c2", 3.0, 2.0, "model-1"))])
        assert edge.edge.failures == 1
        assert edge.run_until(lambda: len(host.of("DBIRTH")) == 2)
        assert bd_seq(host.of("NBIRTH")[1]) == bd_seq(host.of("NBIRTH")[0]) and host.of("NDEATH") == []
        assert host.of("DBIRTH")[1].value("Alarm/State") == "alarm"
        assert host.problems == []
    finally:
        edge.edge.stop()
        host.close()
