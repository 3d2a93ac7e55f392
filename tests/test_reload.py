"""Reload (SIGHUP, ``systemctl reload``): a new configuration and model bundle without a restart.

The rules first, in the pure core (carrying alarm states over to a new model, a cut open across
the switch, what a reload applies and what waits for a restart), then the real daemon against a
real Mosquitto: a second bundle switched in mid-replay (no window lost or scored twice, the model
id switches at one window) and a broken one refused while the running model goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from daemon_support import (
    CASES,
    REPO,
    Collector,
    Daemon,
    machine_of,
    model_fixture,
    second_bundle,
)
from test_systemd import NotifyListener

from edge_monitor.core.alarm import (
    AlarmPolicy,
    AlarmTracker,
    Level,
    Thresholds,
    carried_over,
)
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.fleet import Fleet
from edge_monitor.core.inbound import CutEnd, CutStart, SignalChunk
from edge_monitor.core.outbound import AlarmMessage
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.steps import PipelineSpec
from edge_monitor.core.windowing import WindowSpec
from edge_monitor.service.config import Config
from edge_monitor.service.reload import restart_only_changes, windowing_change
from edge_monitor.service.state import restore_alarm_states

OLD = Thresholds(1.2, 1.5, "recon")
NEW = Thresholds(2.0, 3.0, "recon")
POLICY = AlarmPolicy(persist_cuts=2, reference_cuts=1, min_windows=1)


def spec(thresholds: Thresholds, model_id: str, **changes) -> PipelineSpec:
    fields = dict(window=WindowSpec(64, 64), stable=StableRegionSpec(), fs=SAMPLE_RATE_HZ, thresholds=thresholds,
                  policy=POLICY, model_id=model_id)
    fields.update(changes)
    return PipelineSpec(**fields)


def worn_tracker() -> AlarmTracker:
    """A tool judged twice above the old warning threshold: in warning, with a history."""
    tracker = AlarmTracker(POLICY, OLD)
    tracker.cut_ended(1.0, 50, "c0", 0.0)  # the reference
    tracker.cut_ended(1.3, 50, "c1", 1.0)
    assert tracker.cut_ended(1.3, 50, "c2", 2.0) is not None
    assert tracker.state == Level.WARNING
    return tracker


# ------------------------------------------------------------------------------ the rules


def test_a_new_model_keeps_the_state_and_forgets_the_old_figures():
    tracker = worn_tracker().for_model(POLICY, NEW)
    assert (tracker.state, tracker.since, tracker.cut) == (Level.WARNING, 2.0, "c2")  # not a transition
    assert tracker.threshold == NEW.warning  # the rule that holds it from now on
    snapshot = tracker.to_dict()
    assert snapshot["recent"] == [] and snapshot["references"] == {}
    # The next cut is the new model's reference; it is taken while raised, so it may raise but
    # never clears; one cut above the new alarm threshold is not enough, two are.
    assert tracker.cut_ended(1.0, 50, "c3", 3.0) is None and tracker.judged is None
    assert tracker.cut_ended(3.5, 50, "c4", 4.0) is None
    raised = tracker.cut_ended(3.5, 50, "c5", 5.0)
    assert raised is not None and raised.new == Level.ALARM and raised.threshold == NEW.alarm


def test_a_normal_state_carries_over_without_a_threshold():
    assert carried_over({"state": "normal", "since": 5.0, "threshold": 1.2, "recent": [1.1]}, NEW) == {
        "state": "normal", "since": 5.0, "cut": None, "score": None, "threshold": None}
    with pytest.raises(ValueError, match="alarm state"):
        carried_over({"state": "broken"}, NEW)


def real_cut() -> np.ndarray:
    from edge_monitor.archive.synthetic import synthesize

    record = synthesize(seed=0, cases=[13], max_runs=1).records[0]
    return np.stack([record[c] for c in CHANNELS], axis=1)


def feed(pipe, cut: str, signals: np.ndarray, start: int, stop: int) -> list:
    windows = []
    for c, name in enumerate(CHANNELS):
        windows += pipe.handle(SignalChunk(cut, start, signals[start:stop, c].copy()), channel=name).windows
    return windows


def scores(n: int, value: float) -> WindowScores:
    return WindowScores(np.full(n, value), np.full(n, value), np.full((n, len(CHANNELS)), value))


def test_the_cut_open_at_the_switch_is_judged_on_the_new_models_windows_only():
    signals = real_cut()
    half = signals.shape[0] // 2
    fleet = Fleet(spec(OLD, "old"), lambda m: True, ("*",))
    pipe = fleet.pipeline("m1")
    pipe.handle(CutStart("c1", 0.0, SAMPLE_RATE_HZ))
    windows = feed(pipe, "c1", signals, 0, half)
    assert windows, "the first half of the cut cuts windows"
    for batch in windows:  # the old model scores them (the monitor flushes before switching)
        pipe.scored(batch, scores(len(batch), 100.0))
    before = fleet.snapshots()["m1"]
    announced = fleet.switch_model(spec(NEW, "new"))
    assert [o.message.model for o in announced] == ["new"] and announced[0].message.state == before["state"]
    later = feed(pipe, "c1", signals, half, signals.shape[0])
    later += pipe.handle(CutEnd("c1", 30.0, signals.shape[0])).windows
    assert later
    outputs = []
    for batch in later:
        outputs += pipe.scored(batch, scores(len(batch), 1.0)).outputs
    summary = [o.message for o in outputs if o.message.leaf == "summary"][0]
    assert summary.score_median == 1.0  # the old model's 100s are not in it
    assert {o.message.model for o in outputs if o.message.leaf == "score"} == {"new"}


def test_a_switch_refuses_other_windows_and_outstanding_work():
    fleet = Fleet(spec(OLD, "old"), lambda m: True, ("*",))
    with pytest.raises(ValueError, match="window cuts as the running one"):
        fleet.switch_model(spec(NEW, "new", window=WindowSpec(128, 64)))
    pipe = fleet.pipeline("m1")
    pipe.handle(CutStart("c1", 0.0, SAMPLE_RATE_HZ))
    feed(pipe, "c1", real_cut(), 0, 4000)
    assert pipe.outstanding_windows
    with pytest.raises(RuntimeError, match="outstanding windows"):
        fleet.switch_model(spec(NEW, "new"))


def test_a_restart_with_another_model_carries_the_states_over_and_announces_them():
    saved = {"m1": worn_tracker().to_dict()}
    trackers, republish = restore_alarm_states(saved, {}, lambda m: True, POLICY, NEW, print,
                                               checkpoint=True, model="new", saved_model="old")
    assert trackers["m1"].state == Level.WARNING and trackers["m1"].threshold == NEW.warning
    assert trackers["m1"].to_dict()["recent"] == [] and republish == ["m1"]
    shown = {"m1": AlarmMessage("m1", "warning", 2.0, "c2", 1.3, OLD.warning, "old")}  # what dashboards see
    same, republish = restore_alarm_states(saved, shown, lambda m: True, POLICY, OLD, print,
                                           checkpoint=True, model="old", saved_model="old")
    assert same["m1"].to_dict() == saved["m1"] and republish == []  # same model: nothing changes


def test_what_a_reload_applies_and_what_waits_for_a_restart(tmp_path):
    running = Config()
    new = dataclasses.replace(
        running, status_interval_s=5.0, limits=dataclasses.replace(running.limits, max_machines=10),
        machines=("mill-*",),
        logging=dataclasses.replace(running.logging, format="console", level="debug"),
    )
    applied, waiting = restart_only_changes(running, new)
    assert waiting == ("machines", "limits", "logging.format")
    assert applied.status_interval_s == 5.0 and applied.logging.level == "debug"
    assert applied.limits == running.limits and applied.logging.format == running.logging.format

    class Meta:
        channels, window, stable_region = CHANNELS, WindowSpec(64, 64), StableRegionSpec()

    other = Meta()
    assert windowing_change(Meta(), other) is None
    other.window = WindowSpec(128, 64)
    assert "cuts windows differently (window:" in windowing_change(Meta(), other)


# ------------------------------------------------------------------------------ the daemon

ROOT = "t-reload"
INSTANCE = "r1"


def wait_event(daemon: Daemon, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = daemon.events(name)
        if found:
            return found[-1]
        if not daemon.running:
            daemon.fail(f"the daemon exited waiting for {name}")
        time.sleep(0.1)
    daemon.fail(f"no {name} event within {timeout} s")
    raise AssertionError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def run(module_broker, model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reload")
    bundle2, id2 = second_bundle(model, workdir / "bundle-2")
    broken = workdir / "bundle-broken"
    shutil.copytree(bundle2, broken)
    (broken / "model.keras").write_bytes(b"not a model")
    config = workdir / "config.yaml"
    base = 'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\n'
    listener = NotifyListener(f"@edge-monitor-reload-{secrets.token_hex(6)}")
    collector = Collector(module_broker, [f"{ROOT}/#"], "collector-reload")
    daemon = Daemon(workdir, module_broker, model.bundle, ROOT, INSTANCE, base + f"bundle: {model.bundle}\n")
    at = daemon.args.index("--bundle")
    del daemon.args[at:at + 2]  # the bundle comes from config.yaml, read again on reload
    replay = None
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("NOTIFY_SOCKET", listener.address)
            daemon.start()
        daemon.wait_online(collector, 90)
        id1 = daemon.events("bundle")[0]["model"]
        replay = subprocess.Popen(
            [sys.executable, "-m", "edge_monitor", "replay", "--archive", str(model.archive_path), "--broker",
             module_broker.address, "--machines", "2", "--cases", ",".join(map(str, CASES)), "--speed", "2",
             "--root", ROOT], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not collector.wait(lambda: len(collector.on("/score")) >= 30, 60):
            daemon.fail("no scores from the replay")
        # a reloadable change, a restart-only one, and the second bundle
        config.write_text(base.replace("status_interval_s: 1", "status_interval_s: 2")
                          + f"bundle: {bundle2}\nlimits:\n  max_machines: 100\n")
        daemon.process.send_signal(signal.SIGHUP)
        reloaded = wait_event(daemon, "reloaded", 60)
        scored_at_reload = len(collector.on("/score"))
        if not collector.wait(lambda: len(collector.on("/score")) >= scored_at_reload + 20, 60):
            daemon.fail("no scores after the reload")
        config.write_text(base + f"bundle: {broken}\n")
        daemon.process.send_signal(signal.SIGHUP)
        failed = wait_event(daemon, "reload_failed", 60)
        scored_at_failure = len(collector.on("/score"))
        assert replay.poll() is None, "the replay ended before the failed reload: the test needs a slower one"
        out, _ = replay.communicate(timeout=120)
        assert replay.returncode == 0, out
        n_cuts = len(model.archive.cuts)
        if not collector.wait(lambda: len(collector.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"expected {n_cuts} summaries, got {len(collector.on('/summary'))}")
        yield dict(collector=collector, daemon=daemon, listener=listener, id1=id1, id2=id2, reloaded=reloaded,
                   failed=failed, broken=broken, scored_at_failure=scored_at_failure)
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
        daemon.kill()
        collector.close()
        listener.close()


def test_no_window_is_lost_or_scored_twice_across_the_reloads(run, model):
    collector = run["collector"]
    seen = collections.Counter((machine_of(t, ROOT), b["cut"], b["offset"]) for t, b in collector.on("/score"))
    assert max(seen.values()) == 1
    machine_of_cut = {c: "mill-01" for c in model.cuts_by_case[11]} | {c: "mill-02" for c in model.cuts_by_case[13]}
    assert set(seen) == {(machine_of_cut[cut], cut, offset) for cut, offset in model.offline}
    for _, body in collector.on("/score"):  # the same network: the offline values, whoever scored
        recon, _, _ = model.offline[(body["cut"], body["offset"])]
        assert body["recon"] == pytest.approx(recon, rel=1e-4, abs=1e-6)


def test_the_model_id_switches_at_one_window(run):
    ids = [b["model"] for _, b in run["collector"].on("/score")]
    switch = ids.index(run["id2"])
    assert switch > 0 and set(ids[:switch]) == {run["id1"]} and set(ids[switch:]) == {run["id2"]}
    assert run["reloaded"]["previous_model"] == run["id1"] and run["reloaded"]["model"] == run["id2"]
    after = run["collector"].messages[[i for i, (t, b, _) in enumerate(run["collector"].messages)
                                       if t.endswith("/score") and b["model"] == run["id2"]][0]:]
    for topic, body, _ in after:  # everything after the first new score carries the new id
        if topic.endswith(("/alarm", "/status")) and isinstance(body, dict):
            assert body["model"] == run["id2"], (topic, body)
    alarms = {machine_of(t, ROOT) for t, b in run["collector"].on("/alarm") if b["model"] == run["id2"]}
    assert alarms == {"mill-01", "mill-02"}  # every known state announced again with the new id


def test_the_reload_applies_what_it_can_and_names_what_waits(run):
    assert run["reloaded"]["waiting_for_restart"] == ["limits"]
    assert run["daemon"].events("restart_needed")[0]["settings"] == ["limits"]
    ready = [n.lines for n in run["listener"].with_line("READY=1")]
    assert any(f"STATUS=reloaded: model {run['id2']}; limits changed" in line for lines in ready for line in lines)
    assert run["listener"].with_line("RELOADING=1")


def test_a_broken_bundle_leaves_the_running_model_and_says_why(run):
    failed = run["failed"]
    assert str(run["broken"]) in failed["reason"] and failed["model"] == run["id2"]
    errors = [b for t, b in run["collector"].on(f"_monitor/{INSTANCE}/errors")]
    assert any(e["topic"] == f"{ROOT}/_monitor/{INSTANCE}/reload" and f"model {run['id2']} runs on" in e["reason"]
               for e in errors), errors
    ready = [line for n in run["listener"].with_line("READY=1") for line in n.lines]
    assert any(line.startswith(f"STATUS=reload failed, model {run['id2']} runs on") for line in ready), ready
    later = [b["model"] for _, b in run["collector"].on("/score")][run["scored_at_failure"]:]
    assert later and set(later) == {run["id2"]}  # still scoring, with the second model
    assert run["daemon"].running


def test_open_cuts_survive_a_restart_with_another_model_that_windows_alike(tmp_path):
    """A crash right after a reload, before a checkpoint under the new model: the file's open cuts
    are the old model's, windowed as the new one windows, so they resume (their scores dropped)."""
    from edge_monitor.service.state import StateFile, resume
    from edge_monitor.service.state_format import encode_record

    signals = real_cut()
    old = Fleet(spec(OLD, "old"), lambda m: True, ("*",))
    pipe = old.pipeline("m1")
    pipe.handle(CutStart("c1", 0.0, SAMPLE_RATE_HZ))
    for batch in feed(pipe, "c1", signals, 0, signals.shape[0] // 2):
        pipe.scored(batch, scores(len(batch), 100.0))
    windowing = {"channels": list(CHANNELS), "window": {"length": 64, "stride": 64}, "stable_region": {}}
    streams = {m: encode_record(s) for m, s in old.streams(["m1"]).items()}
    path = tmp_path / "state.json"
    path.write_bytes(b"".join(StateFile.compose(old.snapshots(), streams, "old", windowing)))

    def restart(windows_alike: bool):
        new = Fleet(spec(NEW, "new"), lambda m: True, ("*",))
        saved = StateFile(path).read("new", windowing if windows_alike else {**windowing, "window": {"length": 128}})
        resume(new, saved, {}, lambda *a, **k: None)
        return new, saved

    new, saved = restart(windows_alike=True)
    assert saved.problems == [] and new["m1"].stream.is_open
    assert old["m1"].to_state()["scores"].size > 0
    assert new["m1"].to_state()["scores"].size == 0  # the old model's scores are not the new one's
    assert new["m1"].to_state()["emitted"] == old["m1"].to_state()["emitted"]
    new, saved = restart(windows_alike=False)
    assert "start afresh" in saved.problems[0] and "m1" not in new
