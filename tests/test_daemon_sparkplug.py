"""The daemon with Sparkplug B on, end to end against a real Mosquitto, read by a host application
decoding with Eclipse Tahu's codec: births before data, the alarm transitions and cut figures as
tags in the JSON topics' order, window scores batched, a restart in alarm, a reset by device
command, NDEATH on a clean stop. And the JSON outputs are the same bytes with Sparkplug off."""

from __future__ import annotations

import collections
import re

import pytest
from daemon_support import Collector, Daemon, machine_of, model_fixture, replay_cli
from sparkplug_host import Host, TahuCodec

ON, OFF = "t-spk-on", "t-spk-off"  # topic roots of the two runs
GROUP, INSTANCE = "t-spk", "s1"
# One window per inference call: a score's last bits depend on the batch it was computed in, which
# timing decides; so the two runs' scores can be compared byte for byte.
BASE = 'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\nbatching: {max_batch: 1}\n'
SPARKPLUG = f"""sparkplug:
  enabled: true
  group_id: {GROUP}
  device_reset: true
  window_scores_interval_s: 1
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def tahu():
    codec = TahuCodec()
    yield codec
    codec.close()


class Run:
    def __init__(self, broker, model, workdir, root: str, instance: str, config: str, host: Host | None) -> None:
        self.broker, self.model, self.workdir, self.root, self.config = broker, model, workdir, root, config
        self.instance = instance
        self.host = host
        self.collector = Collector(broker, [f"{root}/#"], f"collector-{root}")
        self.daemons: list[Daemon] = []

    def start(self) -> Daemon:
        daemon = Daemon(self.workdir, self.broker, self.model.bundle, self.root, self.instance, self.config).start()
        self.daemons.append(daemon)
        daemon.wait_online(self.collector)
        return daemon

    def replay(self) -> None:
        replay = replay_cli(self.broker, self.model.archive_path, self.root)
        assert replay.returncode == 0, replay.stderr
        n_cuts = len(self.model.archive.cuts)
        if not self.collector.wait(lambda: len(self.collector.on("/summary")) >= n_cuts, 60):
            self.daemons[-1].fail(f"expected {n_cuts} summaries, got {len(self.collector.on('/summary'))}")

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
        self.collector.close()


@pytest.fixture(scope="module")
def on(module_broker, model, tahu, tmp_path_factory):
    host = Host(module_broker, tahu, GROUP, client_id="host-daemon")
    run = Run(module_broker, model, tmp_path_factory.mktemp("spk-on"), ON, INSTANCE, BASE + SPARKPLUG, host)
    try:
        run.start()
        run.replay()
        n_scores = len(run.collector.on("/score"))
        assert host.wait(lambda: sum(len(host.named(r).get("Window/Score", [])) for r in host.of("DDATA")) >= n_scores,
                         10), "the window scores did not all come as Window/Score values"
        yield run
    finally:
        run.close()
        host.close()


@pytest.fixture(scope="module")
def off(module_broker, model, tmp_path_factory):
    run = Run(module_broker, model, tmp_path_factory.mktemp("spk-off"), OFF, "s2", BASE, None)  # its own client ids
    try:
        run.start()
        run.replay()
        yield run
    finally:
        run.close()


def by_machine(host: Host, kind: str) -> dict[str, list]:
    out = collections.defaultdict(list)
    for r in host.of(kind):
        out[r.device].append(r)
    return out


def values(host: Host, records, name: str) -> list:
    return [m for r in records for m in host.named(r).get(name, [])]


def test_births_come_first_and_seq_has_no_gap(on):
    host = on.host
    kinds = [(r.kind, r.device) for r in host.received]
    assert kinds[0] == ("NBIRTH", None) and host.received[0].seq == 0
    nbirth = host.received[0]
    assert (nbirth.topic, nbirth.qos, nbirth.retain) == (f"spBv1.0/{GROUP}/NBIRTH/{INSTANCE}", 0, False)
    assert nbirth.value("Monitor/State") == "online" and nbirth.value("Monitor/Model")
    assert nbirth.metrics()["Counters/windows_scored"]["type"] == "Int64"
    for machine in ("mill-01", "mill-02"):
        first = kinds.index(("DBIRTH", machine))
        assert all(k != ("DDATA", machine) for k in kinds[:first])
        assert host.of("DBIRTH", machine)[0].value("Alarm/State") == "normal"
    assert host.gaps == [] and host.rebirths_requested == 0 and host.of("NDEATH") == [] and host.problems == []
    assert all((r.qos, r.retain) == (0, False) for r in host.received)
    assert host.wait(lambda: host.of("NDATA"), 5), "the monitor's status as node data (status_interval_s: 1)"
    assert any("Counters/windows_scored" in host.named(r) for r in host.of("NDATA"))
    assert {r.topic.split("/")[3] for r in host.received} == {INSTANCE}


def changes(seq: list) -> list:
    """``seq`` without the items equal to the one before (the first is a change from null)."""
    return [x for i, x in enumerate(seq) if x is not None and (i == 0 or x != seq[i - 1])]


def test_alarm_transitions_and_cut_figures_follow_the_json_topics(on):
    host, collector = on.host, on.collector
    for machine, data in by_machine(host, "DDATA").items():
        json_alarms = [b for t, b in collector.on("/alarm") if machine_of(t, ON) == machine]
        tags = [(m["value"], c["value"]) for m, c in zip(values(host, data, "Alarm/State"), values(host, data, "Alarm/Cut"))]
        assert tags == [(a["state"], a["cut"]) for a in json_alarms], machine
        since = [int(m["value"]) for m in values(host, data, "Alarm/Since")]
        assert since == [round(a["since"] * 1000) for a in json_alarms]

        # a cut's figures are stamped with its last sample's time: its start's clock plus its length
        events = [b for t, b in collector.on("/cut") if machine_of(t, ON) == machine and isinstance(b, dict)]
        starts = {b["cut"]: b for b in events if b["event"] == "start"}
        ends = {b["cut"]: starts[b["cut"]]["ts"] + b["samples"] / starts[b["cut"]]["fs"]
                for b in events if b["event"] == "end"}
        summaries = [b for t, b in collector.on("/summary") if machine_of(t, ON) == machine]
        cuts = values(host, data, "Last Cut/Id")
        assert [m["value"] for m in cuts] == [s["cut"] for s in summaries]
        assert [int(m["timestamp"]) for m in cuts] == [round(ends[s["cut"]] * 1000) for s in summaries]
        windows = values(host, data, "Last Cut/Windows")  # a figure the same as the last cut's is not sent again
        assert [int(m["value"]) for m in windows] == changes([s["windows"] for s in summaries])
        judged = values(host, data, "Last Cut/Judged")
        assert [m["value"] for m in judged] == changes([s["judged"] for s in summaries])

        scores = [b for t, b in collector.on("/score") if machine_of(t, ON) == machine]
        window_scores = values(host, data, "Window/Score")
        assert [m["value"] for m in window_scores] == [s["score"] for s in scores]
        assert [int(m["timestamp"]) for m in window_scores] == [round(s["ts"] * 1000) for s in scores]
    assert [a["state"] for t, a in on.collector.on("/alarm") if machine_of(t, ON) == "mill-02"][-1] == "alarm"


MASK = re.compile(rb'"(ts|since)": ?[0-9.e+-]+')


def normalised(run: Run, leaves=("score", "alarm", "summary", "errors")) -> dict[str, list[bytes]]:
    """Each output topic's payloads in order, the root dropped and the times (the replay's clock)
    masked: everything else byte for byte."""
    out = collections.defaultdict(list)
    for topic, payload in run.collector.payloads:
        if topic.rsplit("/", 1)[-1] in leaves and "/_monitor/" not in topic:
            out[topic[len(run.root):]].append(MASK.sub(rb'"\1": 0', payload))
    return dict(out)


def test_json_outputs_are_the_same_bytes_with_sparkplug_off(on, off):
    with_sparkplug, without = normalised(on), normalised(off)
    assert set(with_sparkplug) == set(without) and "/mill-02/alarm" in without and len(without) == 5
    for topic in without:
        assert with_sparkplug[topic] == without[topic], topic
    assert sum(map(len, without.values())) > 100


def test_restart_in_alarm_reset_by_command_and_ndeath_on_stop(on):
    host, collector = on.host, on.collector
    bd_first = int(host.of("NBIRTH")[0].value("bdSeq"))
    assert on.daemons[-1].terminate() == 0
    assert host.wait(lambda: host.of("NDEATH"), 10)
    death = host.of("NDEATH")[0]
    assert (death.qos, death.retain) == (1, False) and int(death.value("bdSeq")) == bd_first

    n_births = len(host.received)
    daemon = on.start()  # mill-02 resumes in alarm: its first DBIRTH says so, before any input
    assert host.wait(lambda: len(host.of("DBIRTH")) >= 4, 20)
    nbirth = host.of("NBIRTH")[1]
    assert int(nbirth.value("bdSeq")) == (bd_first + 1) % 256 and nbirth.seq == 0
    births = {r.device: r for r in host.received[n_births:] if r.kind == "DBIRTH"}
    assert births["mill-02"].value("Alarm/State") == "alarm" and births["mill-02"].value("Alarm/Level") == 2
    assert births["mill-01"].value("Alarm/State") == "normal"
    assert births["mill-02"].metrics()["Device Control/Reset"]["value"] is False

    n_alarms = len(collector.on("/alarm"))
    host.command(INSTANCE, "mill-02", "Device Control/Reset")  # the JSON reset's path: rate limit, checkpoint
    assert collector.wait(lambda: len(collector.on("/alarm")) > n_alarms, 10)
    topic, cleared = collector.on("/alarm")[-1]
    assert machine_of(topic, ON) == "mill-02" and (cleared["state"], cleared["cut"]) == ("normal", None)
    assert host.wait(lambda: any(m["value"] == "normal" for m in values(host, host.of("DDATA", "mill-02")[-1:],
                                                                          "Alarm/State")), 10)
    host.command(INSTANCE, "mill-07", "Device Control/Reset")  # not a machine it knows
    assert collector.wait(lambda: any("mill-07" in b.get("topic", "") for _, b in collector.on("/errors")
                                      if isinstance(b, dict)), 10)

    assert daemon.terminate() == 0
    assert host.wait(lambda: len(host.of("NDEATH")) == 2, 10)
    assert int(host.of("NDEATH")[1].value("bdSeq")) == (bd_first + 1) % 256
    assert host.gaps == [] and host.problems == []
