"""Several monitor instances on one topic root, each owning a partition of the machines, against a
real Mosquitto: every machine scored by exactly one, each instance's status and state file its own,
no errors about the other's machines; and ``check`` refusing partitions that overlap, whether
configured beside it or announced on the broker."""

from __future__ import annotations

import collections
import json

import pytest
from daemon_support import Collector, Daemon, machine_of, model_fixture, replay_cli

from edge_monitor.service.check import PROBE, run_check
from edge_monitor.service.state import StateFile

ROOT = "plant"
# A: machine ids, B: patterns. Each receives every machine's inputs and drops the other's, whose
# status names them.
PARTITIONS = {"edge-a": ["mill-01", "mill-02"], "edge-b": ["*-03", "*-04"]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def config(machines: list[str], extra: str = "") -> str:
    return (f"machines: {json.dumps(machines)}\nstate_file: state.json\nstatus_interval_s: 1\n"
            f"metrics: {{enabled: false}}\n{extra}")


def test_two_instances_partition_the_machines(broker, model, tmp_path):
    collector = Collector(broker, [f"{ROOT}/#"], "collector-partition")
    daemons = {}
    try:
        for instance, machines in PARTITIONS.items():  # A online (its status retained) before B starts
            (tmp_path / instance).mkdir()
            daemons[instance] = Daemon(tmp_path / instance, broker, model.bundle, ROOT, instance,
                                       config(machines, f"broker: {{client_id: monitor-{instance}}}\n")).start()
            daemons[instance].wait_online(collector)
        replay = replay_cli(broker, model.archive_path, ROOT, "--machines", "4")
        assert replay.returncode == 0, replay.stderr
        n_cuts = 2 * len(model.archive.cuts)  # 4 machines dealt the archive's cuts: each cut twice
        summaries = lambda: collector.on("/summary")  # noqa: E731
        if not collector.wait(lambda: len(summaries()) >= n_cuts, 90):
            daemons["edge-b"].fail(f"expected {n_cuts} summaries, got {len(summaries())}")

        statuses = {}
        for instance, daemon in daemons.items():
            assert collector.wait(lambda: _counters(collector, instance).get("messages_in", 0) > 0, 10)
            assert daemon.terminate() == 0
            statuses[instance] = _status(collector, instance)
        # A third instance claiming a machine of B's is refused by check, from B's retained status
        # (offline now: a stopped instance keeps its machines)
        third = tmp_path / "edge-c"
        third.mkdir()
        (third / "config.yaml").write_text(config(["mill-04", "mill-05"]))
        lines: list[str] = []
        code = run_check(third / "config.yaml", {"broker": broker.address, "root": ROOT, "instance": "edge-c",
                                                 "bundle": str(model.bundle)},
                         load_model=False, out=lines.append)
        clash = [line for line in lines if line.startswith("FAIL") and "partition" in line]
        assert code == 1 and len(clash) == 1, "\n".join(lines)  # (and the ACL lines: this broker has none)
        assert "instance edge-b" in clash[0] and "'mill-04'" in clash[0] and "mosquitto_pub -r -n" in clash[0]

    finally:
        for daemon in daemons.values():
            daemon.kill()
        collector.close()

    # every window scored once, by the instance owning its machine
    scores = collections.Counter()
    for topic, body in collector.on("/score"):
        if PROBE in topic:  # check's own probes
            continue
        scores[(machine_of(topic, ROOT), body["cut"], body["offset"])] += 1
    assert scores and max(scores.values()) == 1
    machines = {m for m, _, _ in scores}
    assert machines == {"mill-01", "mill-02", "mill-03", "mill-04"}
    a, b = (statuses[i]["counters"] for i in ("edge-a", "edge-b"))
    assert a["windows_scored"] + b["windows_scored"] == len(scores)
    assert a["windows_scored"] > 0 and b["windows_scored"] > 0
    # each status names its partition; no rejection, no error about the other's machines
    assert {i: s["machines"] for i, s in statuses.items()} == PARTITIONS
    assert a["rejected"] == b["rejected"] == 0
    assert [t for t, _ in collector.on("/errors") if PROBE not in t] == []
    assert a["inputs_other_instance"] > 0 and b["inputs_other_instance"] > 0  # the other's, dropped quietly
    # each state file holds its own machines' alarm states
    for instance, owned in (("edge-a", {"mill-01", "mill-02"}), ("edge-b", {"mill-03", "mill-04"})):
        alarms = StateFile(tmp_path / instance / "state.json").read("").alarms
        assert set(alarms) == owned, (instance, sorted(alarms))


def _status(collector: Collector, instance: str) -> dict:
    return collector.on(f"{ROOT}/_monitor/{instance}/status")[-1][1]


def _counters(collector: Collector, instance: str) -> dict:
    found = collector.on(f"{ROOT}/_monitor/{instance}/status")
    return (found[-1][1].get("counters") or {}) if found else {}


def test_check_refuses_instances_configured_beside_it_that_clash(tmp_path):
    """/etc/edge-monitor/<instance>.yaml for edge-monitor@<instance>: each checked against the others."""
    down = "127.0.0.1:9"  # no broker: only what the files say
    (tmp_path / "line1.yaml").write_text('instance: line1\nmachines: "line1-*"\nstate_file: line1.json\n'
                                         "broker: {host: 127.0.0.1, port: 9, client_id: mon-line1}\n"
                                         "metrics: {enabled: false}\n")
    (tmp_path / "notes.yaml").write_text("just: some other file\n")  # not a configuration: not an instance
    second = tmp_path / "line2.yaml"

    def check(text: str) -> list[str]:
        second.write_text(text)
        lines: list[str] = []
        run_check(second, {"broker": down}, load_model=False, broker_may_be_down=True, out=lines.append)
        return [line for line in lines if "partition" in line]

    apart = check('instance: line2\nmachines: ["line2-*", "press-4"]\nstate_file: line2.json\n'
                  "broker: {client_id: mon-line2}\nmetrics: {enabled: false}\n")
    assert len(apart) == 1 and apart[0].startswith("ok") and "line1.yaml (line1)" in apart[0], apart

    clash = check('instance: line1\nmachines: ["*-07"]\nstate_file: line1.json\n'
                  "broker: {client_id: mon-line1}\nmetrics: {enabled: false}\n")
    assert all(line.startswith("FAIL") for line in clash), clash
    text = "\n".join(clash)
    for expected in ("same instance name", "'line1-07'", "same state_file", "take each other over"):
        assert expected in text, (expected, text)
