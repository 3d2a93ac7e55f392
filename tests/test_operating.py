"""The operating point: the trade-off counts what the daemon's tracker decides, the stated rule
picks its threshold, and a bundle's operating point moves without training."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.alarm import AlarmPolicy, AlarmTracker, Thresholds, persisted, raise_points
from training.operating import (
    HeldOutLife,
    OperatingRule,
    choose_operating_point,
    format_trade_off,
    rechoose,
    stored_trade_off,
    trade_off,
)
from training.toollife import decide_on_cut_medians, tool_totals

POLICY = AlarmPolicy()  # the daemon's default: 2 judged cuts in a row, over the first cut


def random_lives(seed: int, dealings: int = 3, tools: int = 8) -> list[HeldOutLife]:
    """Tool lives that wear (growth over the start) with noise, some reaching failure; the same
    tools in every dealing, scored a little differently (another fold model)."""
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(3, 12)), rng.uniform(0.3, 1.2), rng.uniform(0.5, 2.0)) for _ in range(tools)]
    lives = []
    for d in range(dealings):
        for case, (n, wear, level) in enumerate(shapes, 1):
            growth = np.cumprod(1 + rng.uniform(0, 0.15, n)) * level * rng.lognormal(0, 0.08, n)
            vb = np.linspace(0, wear, n)
            classes = np.where(vb >= 0.7, 2, np.where(vb >= 0.2, 1, 0))
            lives.append(HeldOutLife(d, case, list(range(1, n + 1)), classes.tolist(),
                                     {"kl": growth.tolist(), "recon": (growth * 2).tolist()},
                                     [int(w) for w in rng.integers(10, 40, n)], ["r"] * n))
    return lives


def test_the_trade_off_counts_what_the_tracker_decides():
    lives = random_lives(1)
    table = trade_off(lives, "kl", POLICY)
    assert np.all(np.diff(table.thresholds) > 0)
    for i in range(0, table.thresholds.size, 3):
        t = float(table.thresholds[i])
        for d in range(table.dealings):
            decided = [decide_on_cut_medians(life.case, [str(r) for r in life.runs], life.runs, [0.0] * len(life.runs),
                                             life.classes, life.medians["kl"], life.windows, life.regimes, POLICY,
                                             Thresholds(warning=t, alarm=t))
                       for life in lives if life.dealing == d]
            totals = tool_totals(decided)
            for key in ("failing_tools", "failing_caught_in_time", "failing_alarmed_late", "failing_missed",
                        "tools_alarmed_on_a_healthy_cut", "never_failed_tools_alarmed"):
                assert table.counts[key][i, d] == totals[key], (key, t, d)
    # one threshold asked for exactly gives the row of the table it falls in
    assert table.at(float(table.thresholds[5]))["failing_caught_in_time"] == table.row(5)["failing_caught_in_time"]


def test_raise_points_are_the_trackers_rule():
    figures = [None, 1.2, 1.5, 1.1, None, 2.0, 2.5]
    points = raise_points(figures, 2)
    assert points[:2] == [-np.inf, -np.inf] and points[2] == 1.2 and points[3] == 1.2
    assert points[5] == 1.2 and points[6] == 2.0
    assert persisted([1.0, 3.0, 2.0], 2) == 2.0 and persisted([1.0], 2) == -np.inf
    # the tracker raises a level exactly when its threshold is below the cut's raise point
    for threshold in (1.0, 1.19, 1.2, 1.9, 2.1):
        tracker = AlarmTracker(AlarmPolicy(persist_cuts=2, reference_cuts=0, min_windows=1),
                               Thresholds(warning=threshold, alarm=threshold))
        for i, (value, point) in enumerate(zip(figures, points)):
            tracker.cut_ended(value, 1 if value is not None else 0, f"c{i}", float(i))
            assert (tracker.state.label == "alarm") == (point > threshold)


def test_the_rule_picks_the_most_sensitive_threshold_within_the_stated_share():
    lives = random_lives(2, dealings=4, tools=10)
    table = trade_off(lives, "kl", POLICY)
    share = np.nanmean(table.share(), axis=1)
    chosen = {}
    for cap in (0.0, 0.1, 0.3):
        point = choose_operating_point(table, OperatingRule(cap, max(cap, 0.3)), POLICY)
        alarm = point.thresholds.alarm
        i = int(np.argmin(np.abs(table.thresholds - alarm)))
        assert share[i] <= cap + 1e-12  # within the stated share...
        below = np.flatnonzero((table.thresholds < alarm) & (table.thresholds >= 1.0))
        assert all(share[j] > cap for j in below)  # ...and nothing more sensitive is
        assert f"at most {cap:.0%}" in point.thresholds.rule
        assert point.thresholds.operating["rule"]["max_false_alarms"] == cap
        chosen[cap] = alarm
    assert chosen[0.0] >= chosen[0.1] >= chosen[0.3]  # a larger share buys a lower threshold
    text = format_trade_off(choose_operating_point(table, OperatingRule(), POLICY))
    assert "<- alarm" in text and "caught in time" in text


def test_a_warning_that_gives_no_earlier_notice_is_one_level_said_plainly():
    # Two tools, five cuts each: one healthy all its life, one failing abruptly (1 → 3 in one cut).
    healthy = HeldOutLife(0, 1, [1, 2, 3, 4, 5], [0] * 5, {"kl": [1.0, 1.05, 1.1, 1.0, 1.08]}, [20] * 5, ["r"] * 5)
    failing = HeldOutLife(0, 2, [1, 2, 3, 4, 5], [0, 0, 0, 2, 2], {"kl": [1.0, 1.02, 1.0, 3.0, 3.2]}, [20] * 5, ["r"] * 5)
    point = choose_operating_point(trade_off([healthy, failing], "kl", POLICY), OperatingRule(0.0, 0.5), POLICY)
    assert point.thresholds.warning == point.thresholds.alarm and point.thresholds.levels == 1
    assert point.warning is None and "One level" in point.thresholds.rule
    # A tool that creeps up gives a lower level earlier notice: two levels.
    creeping = HeldOutLife(0, 3, [1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 2, 2], {"kl": [1.0, 1.0, 1.2, 1.22, 1.4, 3.0]},
                           [20] * 6, ["r"] * 6)
    noisy = HeldOutLife(0, 4, [1, 2, 3, 4], [0] * 4, {"kl": [1.0, 1.25, 1.3, 1.0]}, [20] * 4, ["r"] * 4)
    point = choose_operating_point(trade_off([healthy, failing, creeping, noisy], "kl", POLICY),
                                   OperatingRule(0.0, 0.4), POLICY)
    assert point.thresholds.levels == 2 and point.thresholds.warning < point.thresholds.alarm
    assert "earlier notice" in point.thresholds.rule
    assert point.warning["failing_warned_early"]["mean"] > point.alarm["failing_warned_early"]["mean"]


def test_the_rule_is_checked():
    with pytest.raises(ValueError, match="max-false-alarms"):
        OperatingRule(1.0, 1.0)
    with pytest.raises(ValueError, match="must not be below"):
        OperatingRule(0.2, 0.1)


def test_a_bundles_operating_point_moves_on_its_stored_lives():
    lives = random_lives(3)
    point = choose_operating_point(trade_off(lives, "kl", POLICY), OperatingRule(), POLICY, "Alarms on kl, because.")
    stored = stored_trade_off(point)
    assert len(stored["lives"]) == len(lives) and stored["trade_off"]["rule"] == OperatingRule().to_dict()
    moved = rechoose(stored, point.thresholds, OperatingRule(0.3, 0.5), POLICY)
    assert moved.thresholds.alarm <= point.thresholds.alarm
    assert moved.thresholds.rule.startswith("Alarms on kl, because.")
    same = rechoose(stored, point.thresholds, OperatingRule(), POLICY)
    assert same.thresholds == point.thresholds  # nothing trained, nothing random: the same choice again
    with pytest.raises(ValueError, match="no held-out tool lives"):
        rechoose({}, point.thresholds, OperatingRule(), POLICY)
    broken = {"lives": [{**stored["lives"][0], "runs": [1]}]}
    with pytest.raises(ValueError, match="differ in length"):
        rechoose(broken, point.thresholds, OperatingRule(), POLICY)


# ------------------------------------------------------------------ moved thresholds in the daemon

MOVE_POLICY = AlarmPolicy(persist_cuts=2, reference_cuts=1, min_windows=1)
OLD, NEW = Thresholds(1.2, 1.5, "recon"), Thresholds(1.1, 1.3, "recon")  # the operating point moved


def warned_tracker() -> AlarmTracker:
    """A tool that grew by a quarter over its first cut, twice: in warning under ``OLD``."""
    tracker = AlarmTracker(MOVE_POLICY, OLD)
    for i, median in enumerate((1.0, 1.25, 1.25)):
        tracker.cut_ended(median, 50, f"c{i}", float(i))
    return tracker


def test_thresholds_moved_alone_keep_every_machines_history_and_reference():
    from edge_monitor.core.alarm import Level
    from edge_monitor.core.channels import SAMPLE_RATE_HZ
    from edge_monitor.core.fleet import Fleet
    from edge_monitor.core.stable_region import StableRegionSpec
    from edge_monitor.core.steps import PipelineSpec
    from edge_monitor.core.windowing import WindowSpec

    policy, new = MOVE_POLICY, NEW
    tracker = warned_tracker()
    assert tracker.state == Level.WARNING
    moved = tracker.for_model(policy, new, same_scores=True)
    assert moved.to_dict()["references"] == {"": [1.0]} and moved.to_dict()["recent"] == [1.25, 1.25]
    assert moved.threshold == new.warning  # the rule that holds it from now on
    # judged over the kept reference: 1.25 and 1.35 are not both above the new alarm level, 1.35 and 1.4 are
    assert moved.cut_ended(1.35, 50, "c3", 3.0) is None
    assert moved.cut_ended(1.4, 50, "c4", 4.0).new == Level.ALARM
    other = tracker.for_model(policy, new, same_scores=False)  # another model: other figures
    assert other.to_dict()["references"] == {} and other.to_dict()["recent"] == []
    # another way of judging cuts (more reference cuts) makes other figures too
    assert tracker.for_model(AlarmPolicy(reference_cuts=2), new, same_scores=True).to_dict()["references"] == {}

    def spec(thresholds, model_id, scoring_id):
        return PipelineSpec(WindowSpec(64, 64), StableRegionSpec(), SAMPLE_RATE_HZ, thresholds, policy, model_id,
                            scoring_id=scoring_id)

    fleet = Fleet(spec(OLD, "a", "s1"), lambda m: True, ("*",))
    fleet.restore({"m1": tracker.to_dict()})
    fleet.switch_model(spec(new, "b", "s1"))
    assert fleet.snapshots()["m1"]["references"] == {"": [1.0]}
    fleet.switch_model(spec(new, "c", "s2"))
    assert fleet.snapshots()["m1"].get("references", {}) == {}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from daemon_support import model_fixture

    return model_fixture(tmp_path_factory)


def test_a_bundles_thresholds_moved_by_the_command_reach_the_daemon_on_reload(module_broker, model, tmp_path):
    """`python -m training thresholds` on the bundle a daemon serves, then SIGHUP: the daemon
    shows the new operating point, with the new model id, and keeps the machines' histories."""
    import dataclasses
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from daemon_support import REPO, Collector, Daemon

    from edge_monitor.model.meta import read_bundle_meta, rewrite_meta

    bundle = tmp_path / "bundle"
    shutil.copytree(model.bundle, bundle)
    meta = read_bundle_meta(bundle)  # the fixture's bundle, with held-out lives to move on
    lives = [life.to_dict() for life in random_lives(5)]
    rewrite_meta(bundle, dataclasses.replace(meta, metrics={**meta.metrics, "out_of_fold": {"lives": lives}},
                                             training={**meta.training, "alarm_policy": AlarmPolicy().to_dict()}))
    before = read_bundle_meta(bundle)
    root, instance = "t-operating", "op1"
    status_topic = f"{root}/_monitor/{instance}/status"
    collector = Collector(module_broker, [f"{root}/#"], "collector-operating")
    daemon = Daemon(tmp_path, module_broker, bundle, root, instance, "status_interval_s: 1\n", without_tensorflow=True)
    try:
        daemon.start()
        status = daemon.wait_online(collector, 90)
        assert status["operating_point"]["alarm"] == before.thresholds.alarm
        assert "chosen" not in status["operating_point"]  # the fixture's thresholds came by no stated rule
        moved = subprocess.run([sys.executable, "-m", "training", "thresholds", "--bundle", str(bundle),
                                "--max-false-alarms", "30%"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "<- alarm" in moved.stdout and "keeping every machine's alarm history" in moved.stdout
        after = read_bundle_meta(bundle)
        assert after.model_id != before.model_id and after.thresholds.operating["rule"]["max_false_alarms"] == 0.3
        assert after.format == 4
        # what the bundle reports the thresholds achieve is the moved thresholds' outcome
        summary = after.metrics["out_of_fold"]["summary"]
        assert summary["failing_caught_in_time"]["mean"] == after.thresholds.operating["alarm"]["failing_caught_in_time"]
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while not daemon.events("reloaded") and time.monotonic() < deadline:
            time.sleep(0.1)
        reloaded = daemon.events("reloaded")
        assert reloaded, daemon.fail("no reload")
        assert reloaded[0]["model"] == after.model_id and reloaded[0]["kept_history"] is True
        assert "at most 30% of healthy tool lives alarmed" in reloaded[0]["operating_point"]

        def shows_new() -> bool:
            shown = [b for t, b, _ in collector.messages if t == status_topic and isinstance(b, dict)]
            return bool(shown) and shown[-1].get("model") == after.model_id
        assert collector.wait(shows_new, 30)
        point = [b for t, b, _ in collector.messages if t == status_topic][-1]["operating_point"]
        assert point["alarm"] == after.thresholds.alarm and point["warning"] == after.thresholds.warning
        assert point["chosen"]["rule"] == {"max_false_alarms": 0.3, "max_false_warnings": 0.5}
        assert point["levels"] == after.thresholds.levels
        # no stored lives: the command names what is missing, and changes nothing
        rewrite_meta(bundle, dataclasses.replace(after, metrics={}))
        kept = read_bundle_meta(bundle).model_id
        refused = subprocess.run([sys.executable, "-m", "training", "thresholds", "--bundle", str(bundle)],
                                 cwd=REPO, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "no held-out tool lives" in refused.stderr
        assert read_bundle_meta(bundle).model_id == kept
    finally:
        daemon.kill()
        collector.close()


def test_progress_says_which_model_its_epochs_and_what_is_left():
    from training.progress import Progress, _ModelProgress

    now = [0.0]
    lines: list[str] = []
    progress = Progress(3, 10, every=5.0, out=lines.append, clock=lambda: now[0])
    first = _ModelProgress(progress, 1, "the bundle's model")
    first.on_train_begin()
    assert lines[-1] == "model 1/3 (the bundle's model): training, at most 10 epochs"
    for epoch in range(4):  # 2 s an epoch; early stopping after 4
        now[0] += 2.0
        first.on_epoch_end(epoch, {"val_loss": 1.0 / (epoch + 1)})
    assert any("epoch 3/10, 2.0 s per epoch, best validation loss 0.33333" in line for line in lines)
    first.on_train_end()
    assert lines[-1].startswith("model 1/3 (the bundle's model): 4 epochs in 8 s; 1 of 3 models done")
    second = _ModelProgress(progress, 2, "fold 1 of 2")
    second.on_train_begin()
    # the finished model ran 4 epochs: about 2 models x 4 epochs x 2 s left, at most 2 x 10 x 2 s
    assert lines[-1] == "model 2/3 (fold 1 of 2): training, at most 10 epochs; about 16 s left in all (at most 40 s)"


def test_a_restart_with_thresholds_moved_alone_keeps_the_history_from_the_state_file():
    from edge_monitor.core.alarm import Level
    from edge_monitor.service.state import restore_alarm_states

    policy, new = MOVE_POLICY, NEW
    tracker = warned_tracker()
    saved = {"m1": tracker.to_dict()}
    kept, republish = restore_alarm_states(saved, {}, lambda m: True, policy, new, print, checkpoint=True,
                                           model="b", saved_model="a", same_scores=True)
    assert kept["m1"].state == Level.WARNING and kept["m1"].threshold == new.warning and republish == ["m1"]
    assert kept["m1"].to_dict()["references"] == {"": [1.0]} and kept["m1"].to_dict()["recent"] == [1.25, 1.25]
    other, _ = restore_alarm_states(saved, {}, lambda m: True, policy, new, print, checkpoint=True,
                                    model="b", saved_model="a", same_scores=False)
    assert other["m1"].to_dict()["references"] == {}  # another model's figures: taken again


def test_growth_of_one_is_a_threshold_the_rule_can_take():
    # a healthy tool never grows (0.9), one failing tool barely (1.02), one clearly (1.3): the
    # midpoints skip 1.0, but the rule may take it, and there it catches both with no false alarm
    policy = AlarmPolicy(persist_cuts=1, reference_cuts=0, min_windows=1)
    lives = [HeldOutLife(0, 1, [1, 2], [0, 0], {"kl": [0.9, 0.9]}, [5, 5], ["", ""]),
             HeldOutLife(0, 2, [1, 2], [0, 2], {"kl": [0.5, 1.02]}, [5, 5], ["", ""]),
             HeldOutLife(0, 3, [1, 2], [0, 2], {"kl": [0.5, 1.3]}, [5, 5], ["", ""])]
    point = choose_operating_point(trade_off(lives, "kl", policy), OperatingRule(), policy)
    assert point.thresholds.alarm == 1.0 and point.alarm["failing_caught_in_time"]["mean"] == 2
    assert point.thresholds.operating["alarm"]["threshold"] == 1.0
    # an overflowing score (the largest float) makes no infinite threshold: the bundle stays JSON
    big = HeldOutLife(0, 4, [1, 2], [0, 2], {"kl": [1.0, float(np.finfo(float).max)]}, [5, 5], ["", ""])
    assert np.isfinite(trade_off([*lives, big], "kl", policy).thresholds).all()


def test_the_state_file_says_what_made_the_scores_and_how_cuts_were_judged(tmp_path):
    from edge_monitor.service.state import StateFile

    state = StateFile(tmp_path / "state.json")
    state.write(StateFile.compose({"m1": warned_tracker().to_dict()}, {}, "a", None, "s1", MOVE_POLICY))
    saved = state.read("b")
    assert saved.scoring == "s1" and saved.judging == {"reference_cuts": 1, "min_windows": 1}
    state.write(StateFile.compose({"m1": warned_tracker().to_dict()}, {}, "a"))
    assert state.read("b").scoring is None  # not written: nothing kept on a restart with another model


def test_moved_thresholds_report_each_levels_own_outcomes():
    from training.rechoose import outcomes_at

    healthy = HeldOutLife(0, 1, [1, 2, 3, 4, 5], [0] * 5, {"kl": [1.0, 1.05, 1.1, 1.0, 1.08]}, [20] * 5, ["r"] * 5)
    failing = HeldOutLife(0, 2, [1, 2, 3, 4, 5], [0, 0, 0, 2, 2], {"kl": [1.0, 1.02, 1.0, 3.0, 3.2]}, [20] * 5, ["r"] * 5)
    creeping = HeldOutLife(0, 3, [1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 2, 2], {"kl": [1.0, 1.0, 1.2, 1.22, 1.4, 3.0]},
                           [20] * 6, ["r"] * 6)
    noisy = HeldOutLife(0, 4, [1, 2, 3, 4], [0] * 4, {"kl": [1.0, 1.25, 1.3, 1.0]}, [20] * 4, ["r"] * 4)
    point = choose_operating_point(trade_off([healthy, failing, creeping, noisy], "kl", POLICY),
                                   OperatingRule(0.0, 0.4), POLICY)
    assert point.thresholds.levels == 2
    totals = outcomes_at(point, {"dealings": [{"seed": 0}]})["dealings"][0]["tools"]["totals"]
    assert totals["tools_alarmed_on_a_healthy_cut"] == point.alarm["tools_alarmed_on_a_healthy_cut"]["mean"] == 0
    assert totals["tools_warned_on_a_healthy_cut"] == point.warning["tools_alarmed_on_a_healthy_cut"]["mean"] == 1
    assert totals["failing_caught_in_time"] == point.alarm["failing_caught_in_time"]["mean"]
