"""The daemon end to end against a real Mosquitto: replay two machines through it, then check the
windows, the scores against the offline scorer, the alarms, the retained state, the status and
its will. One daemon run serves the whole module: on ONNX Runtime, in a process where TensorFlow
cannot be imported (the edge box's install); the compact-encoding run serves with TensorFlow."""

from __future__ import annotations

import collections
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from daemon_support import (
    REPO,
    Collector,
    Daemon,
    machine_of,
    model_fixture,
    replay_cli,
)

ROOT = "t-daemon"
INSTANCE = "d1"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def run(module_broker, model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("daemon")
    collector = Collector(module_broker, [f"{ROOT}/#"], "collector-daemon")
    daemon = Daemon(workdir, module_broker, model.bundle, ROOT, INSTANCE,
                    'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\n', without_tensorflow=True).start()
    try:
        daemon.wait_online(collector)
        replay = replay_cli(module_broker, model.archive_path, ROOT)
        assert replay.returncode == 0, replay.stderr
        n_cuts = len(model.archive.cuts)
        if not collector.wait(lambda: len(collector.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"expected {n_cuts} summaries, got {len(collector.on('/summary'))}")
        yield collector, daemon, replay
    finally:
        daemon.kill()
        collector.close()


def scores_by_window(collector: Collector) -> collections.Counter:
    return collections.Counter(
        (machine_of(t, ROOT), b["cut"], b["offset"]) for t, b in collector.on("/score")
    )


def test_every_stable_window_is_scored_exactly_once(run, model):
    collector, _, _ = run
    seen = scores_by_window(collector)
    assert max(seen.values()) == 1
    machine_of_cut = {c: "mill-01" for c in model.cuts_by_case[11]} | {c: "mill-02" for c in model.cuts_by_case[13]}
    expected = {(machine_of_cut[cut], cut, offset) for cut, offset in model.offline}
    assert set(seen) == expected
    summaries = {b["cut"]: b for _, b in collector.on("/summary")}
    per_cut = collections.Counter(cut for _, cut, _ in expected)
    assert {c: s["windows"] for c, s in summaries.items()} == dict(per_cut)
    assert all(s["skipped"] == 0 and s["stable"] is not None for s in summaries.values())


def test_scores_match_the_offline_scorer(run, model):
    collector, _, _ = run
    for _, body in collector.on("/score"):
        recon, kl, channels = model.offline[(body["cut"], body["offset"])]
        assert body["recon"] == pytest.approx(recon, rel=1e-4, abs=1e-6)
        assert body["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-5)
        assert body["score"] == body["recon"]  # the bundle alarms on recon
        got = np.array([body["channels"][c] for c in body["channels"]])
        np.testing.assert_allclose(got, channels, rtol=1e-4, atol=1e-6)
        assert body["model"] == run[1].events("bundle")[0]["model"]


def test_failing_tool_reaches_alarm_and_healthy_one_stays_normal(run, model):
    collector, _, _ = run
    alarms = [(machine_of(t, ROOT), b) for t, b in collector.on("/alarm")]
    assert all(m == "mill-02" for m, _ in alarms)  # mill-01 never left normal
    states = [b["state"] for _, b in alarms]
    assert states[-1] == "alarm" and states == sorted(states, key=["normal", "warning", "alarm"].index)
    last = alarms[-1][1]
    assert last["cut"] == model.alarm_cut  # the worn-out tool's cut that raised it offline
    assert last["threshold"] == pytest.approx(model.thresholds.alarm)
    assert last["score"] > model.thresholds.alarm
    levels = collections.defaultdict(list)
    for t, b in collector.on("/score"):
        levels[machine_of(t, ROOT)].append(b["level"])
    assert set(levels["mill-01"]) == {"normal"} and levels["mill-02"][-1] == "alarm"
    summaries = {b["cut"]: b for _, b in collector.on("/summary")}
    assert summaries[model.cuts_by_case[13][-1]]["level"] == "alarm"
    assert summaries[model.cuts_by_case[11][0]]["level"] == "normal"


def test_evaluate_tool_life_agrees_with_the_daemon(run, model):
    """evaluate's tool-life table replays each case through the daemon's own pipeline and alarm
    rule: the daemon's first warning and first alarm per machine, and each cut's level, match it."""
    from edge_monitor.core.alarm import AlarmPolicy
    from edge_monitor.core.channels import SAMPLE_RATE_HZ
    from edge_monitor.core.steps import PipelineSpec
    from edge_monitor.model.bundle import load_bundle
    from training.dataset import prepare_windows
    from training.toollife import replay_tools

    collector, _, _ = run
    bundle = load_bundle(model.bundle)
    meta, scorer = bundle.meta, bundle.scorer()
    ws = prepare_windows(model.archive, meta.window, meta.stable_region)
    spec = PipelineSpec(meta.window, meta.stable_region, SAMPLE_RATE_HZ, meta.thresholds, AlarmPolicy(), meta.model_id)
    tools = {t.case: t for t in replay_tools(model.archive, ws.cut_vb, ws.cut_class, spec,
                                             lambda b: scorer.score(b.data, b.regime))}
    summaries = {b["cut"]: b["level"] for _, b in collector.on("/summary")}
    for machine, case in (("mill-01", 11), ("mill-02", 13)):
        tool = tools[case]
        assert tool.cuts == model.cuts_by_case[case]
        raised = [b for t, b in collector.on("/alarm") if machine_of(t, ROOT) == machine and b["state"] != "normal"]
        first_warning = raised[0]["cut"] if raised else None
        first_alarm = next((b["cut"] for b in raised if b["state"] == "alarm"), None)
        assert first_warning == (None if tool.first_warning is None else tool.cuts[tool.first_warning])
        assert first_alarm == (None if tool.first_alarm is None else tool.cuts[tool.first_alarm])
        assert tool.levels == [summaries[c] for c in tool.cuts]
    assert tools[13].first_alarm is not None and tools[11].first_warning is None  # the outcomes differ


def test_a_late_subscriber_sees_the_retained_alarm(run, module_broker):
    late = Collector(module_broker, [f"{ROOT}/+/alarm"], "late-dashboard")
    try:
        assert late.wait(lambda: late.messages, 5)
        assert [(machine_of(t, ROOT), b["state"], retained) for t, b, retained in late.messages] == [
            ("mill-02", "alarm", True)
        ]
    finally:
        late.close()


def test_status_counts_and_logs(run, model):
    collector, daemon, _ = run
    topic = f"{ROOT}/_monitor/{INSTANCE}/status"
    n_windows = len(model.offline)
    assert collector.wait(
        lambda: collector.on(topic)[-1][1].get("counters", {}).get("windows_scored") == n_windows, 5
    )
    status = collector.on(topic)[-1][1]
    assert status["state"] == "online" and status["device"] == "cpu" and status["protocol"] == 1
    assert status["runtime"] == "onnxruntime"
    counters = status["counters"]
    assert counters["rejected"] == 0 and counters["gap_samples"] == 0
    published = int(re.search(r"(\d+) messages in", run[2].stdout).group(1))
    assert counters["messages_in"] == published
    device = daemon.events("device")[0]
    assert (device["device"], device["runtime"], device["requested_runtime"]) == ("cpu", "onnxruntime", "auto")
    assert "the bundle has scoring.onnx" in device["reason"]
    assert {e["event"] for e in daemon.events()} >= {"device", "bundle", "connected", "online", "summary", "alarm"}


def test_sigkill_turns_the_status_offline_through_the_will(run):
    collector, daemon, _ = run
    topic = f"{ROOT}/_monitor/{INSTANCE}/status"
    daemon.kill()
    assert collector.wait(lambda: collector.on(topic)[-1][1]["state"] == "offline", 10)
    assert "counters" not in collector.on(topic)[-1][1]  # the will, not a graceful goodbye


def test_start_up_errors_exit_2_without_traceback(tmp_path, module_broker, model):
    def start(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edge_monitor", "run", "--config", str(tmp_path / "c.yaml"),
               "--metrics", "127.0.0.1:0", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})

    (tmp_path / "c.yaml").write_text("batching:\n  max_bach: 3\n")
    r = start()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "batching.max_bach: unknown key (did you mean 'max_batch'?)" in r.stderr
    (tmp_path / "c.yaml").write_text("device: gpu\n")
    r = start("--bundle", str(model.bundle), "--broker", module_broker.address)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "gpu was requested" in r.stderr
    (tmp_path / "c.yaml").write_text("runtime: tensorflow\ndevice: gpu\n")
    r = start("--bundle", str(model.bundle), "--broker", module_broker.address)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "gpu was requested but TensorFlow" in r.stderr
    (tmp_path / "c.yaml").write_text("")
    r = start("--bundle", str(tmp_path / "nope"), "--broker", module_broker.address)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such directory" in r.stderr
    r = start("--bundle", str(model.bundle), "--broker", "127.0.0.1:1")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot reach broker 127.0.0.1:1" in r.stderr


def test_log_format_follows_the_terminal_and_the_service_manager(monkeypatch, tmp_path):
    from edge_monitor.service.logging import (
        configure_logging,
        get_logger,
        resolve_format,
    )

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert resolve_format("auto", Tty()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"
    monkeypatch.setenv("INVOCATION_ID", "abc")  # systemd
    assert resolve_format("auto", Tty()) == "json"
    with pytest.raises(ValueError, match="logging.format must be one of auto, json, console"):
        resolve_format("xml", io.StringIO())

    out = io.StringIO()
    try:
        assert configure_logging("auto", "info", out) == "json"
        get_logger().debug("hidden")
        get_logger().warning("rejected", topic="t", reason="why", value=np.float32(1.5))
        (line,) = out.getvalue().splitlines()
        record = json.loads(line)
        assert record["event"] == "rejected" and record["reason"] == "why" and record["value"] == 1.5
        assert record["level"] == "warning" and "timestamp" in record
    finally:
        configure_logging("console", "info", sys.stderr)


def test_compact_float32_chunks_are_scored_like_json_ones(module_broker, model, tmp_path):
    """The same cuts replayed with the compact encoding (docs/protocol.md): the same windows, and
    scores equal to the offline scorer's within float32's rounding of the samples. TensorFlow serves
    here (runtime: tensorflow), as it still can where it is installed."""
    root = "t-daemon-f32"
    collector = Collector(module_broker, [f"{root}/#"], "collector-daemon-f32")
    daemon = Daemon(tmp_path, module_broker, model.bundle, root, "d-f32",
                    'machines: "mill-*"\nstatus_interval_s: 1\nruntime: tensorflow\n').start()
    try:
        daemon.wait_online(collector)
        replay = replay_cli(module_broker, model.archive_path, root, "--encoding", "f32", "--chunk", "64")
        assert replay.returncode == 0, replay.stderr
        n_cuts = len(model.archive.cuts)
        if not collector.wait(lambda: len(collector.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"expected {n_cuts} summaries, got {len(collector.on('/summary'))}")
    finally:
        daemon.kill()
        collector.close()
    assert daemon.events("device")[0]["runtime"] == "tensorflow"
    seen = collections.Counter((b["cut"], b["offset"]) for _, b in collector.on("/score"))
    assert set(seen) == set(model.offline) and max(seen.values()) == 1
    assert not collector.on("/errors")
    for _, body in collector.on("/score"):
        recon, kl, _ = model.offline[(body["cut"], body["offset"])]
        assert body["recon"] == pytest.approx(recon, rel=1e-3, abs=1e-5)
        assert body["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-4)
