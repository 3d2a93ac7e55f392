"""The per-machine alarm state machine, decided per cut: persistence over consecutive cuts, cuts
without evidence, no healing, reset, auto-clear hysteresis, restart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_monitor.core.alarm import (
    AlarmPolicy,
    AlarmTracker,
    Level,
    Thresholds,
    Transition,
)
from edge_monitor.core.outbound import AlarmMessage, encode

TH = Thresholds(warning=1.0, alarm=2.0)
LOW, WARN, HIGH = 0.5, 1.5, 3.0
W = 50  # windows of an ordinary cut: enough evidence


def absolute(**settings) -> AlarmPolicy:
    """A policy judging each cut's median itself (no fresh-tool reference): the state machine's
    mechanics, with figures that are the medians fed."""
    return AlarmPolicy(reference_cuts=0, **settings)


def feed(tracker: AlarmTracker, medians, windows: int = W, first: int = 0) -> list[tuple[int, Transition]]:
    """(cut index, transition) for every transition the cuts' median scores cause."""
    out = []
    for i, m in enumerate(medians, start=first):
        t = tracker.cut_ended(m, windows, f"c{i}", 1000.0 + i)
        if t is not None:
            out.append((i, t))
    return out


def test_defaults():
    p = AlarmPolicy()
    assert (p.persist_cuts, p.reference_cuts, p.min_windows, p.auto_clear, p.clear_cuts) == (2, 1, 16, False, 3)


def test_one_odd_cut_raises_nothing_and_the_next_one_decides():
    t = AlarmTracker(absolute(persist_cuts=2), TH)
    assert feed(t, [WARN, LOW, HIGH, LOW, WARN, LOW]) == []  # never two consecutive cuts above 1.0
    assert t.state == Level.NORMAL
    events = feed(t, [WARN, WARN], first=6)
    assert len(events) == 1
    i, tr = events[0]
    assert i == 7
    assert tr == Transition(Level.NORMAL, Level.WARNING, 1007.0, "c7", WARN, 1.0)
    assert tr.raised and t.state == Level.WARNING
    assert (t.since, t.cut, t.score, t.threshold) == (1007.0, "c7", WARN, 1.0)


def test_threshold_is_exceeded_strictly():
    t = AlarmTracker(absolute(persist_cuts=1), TH)
    assert t.cut_ended(1.0, W, "c", 0.0) is None
    assert t.cut_ended(1.0000001, W, "c", 1.0).new == Level.WARNING


def test_the_level_is_what_every_recent_cut_exceeded():
    t = AlarmTracker(absolute(persist_cuts=3), TH)
    [(i, tr)] = feed(t, [HIGH, WARN, HIGH])  # all three above warning, not all above alarm
    assert (i, tr.new) == (2, Level.WARNING)
    [(i, tr)] = feed(t, [HIGH, HIGH], first=3)
    assert (i, tr.old, tr.new, tr.threshold) == (4, Level.WARNING, Level.ALARM, 2.0)


def test_straight_to_alarm_is_one_transition():
    t = AlarmTracker(absolute(persist_cuts=2), TH)
    [(i, tr)] = feed(t, [HIGH, HIGH])
    assert (i, tr.old, tr.new, tr.threshold) == (1, Level.NORMAL, Level.ALARM, 2.0)


def test_cuts_without_evidence_neither_raise_nor_break_a_run():
    t = AlarmTracker(absolute(persist_cuts=2, min_windows=16), TH)
    assert feed(t, [HIGH]) == []
    assert t.cut_ended(HIGH, 15, "short", 1.0) is None  # too few windows: no evidence
    assert t.cut_ended(None, 0, "air", 2.0) is None  # no stable region at all
    assert t.cut_ended(float("nan"), W, "nan", 3.0) is None
    assert t.to_dict()["recent"] == [HIGH]  # the run of cuts is intact
    assert t.cut_ended(HIGH, 16, "c9", 4.0).new == Level.ALARM


def test_wear_does_not_heal_without_auto_clear():
    t = AlarmTracker(absolute(), TH)
    feed(t, [HIGH] * 2)
    assert feed(t, [0.0] * 100, first=2) == []
    assert t.state == Level.ALARM and t.score == HIGH  # still announcing what raised it


def test_reset():
    t = AlarmTracker(absolute(), TH)
    feed(t, [HIGH] * 2)
    tr = t.reset("operator", 5000.0)
    assert tr == Transition(Level.ALARM, Level.NORMAL, 5000.0, None, None, None, "operator")
    assert not tr.raised
    assert (t.state, t.since, t.cut, t.score, t.threshold) == (Level.NORMAL, 5000.0, None, None, None)
    assert t.reset("operator", 5001.0) is None  # nothing to announce
    # The history went with the old tool: fresh cuts are needed to raise again.
    assert feed(t, [HIGH]) == []
    assert feed(t, [HIGH], first=1)[0][1].new == Level.ALARM


def test_reset_while_normal_still_clears_history():
    t = AlarmTracker(absolute(), TH)
    feed(t, [HIGH])
    assert t.reset("x", 1.0) is None
    assert feed(t, [HIGH]) == []


def auto(m: int = 3, margin: float = 0.1) -> AlarmTracker:
    return AlarmTracker(absolute(persist_cuts=2, auto_clear=True, clear_cuts=m, clear_margin=margin), TH)


def test_auto_clear_drops_one_level_after_m_cuts_below_the_clear_level():
    t = auto(m=3)
    feed(t, [HIGH] * 2)
    # Alarm clear level = 2.0 - 0.1 * 2.0 = 1.8; warning-level cuts count as below it.
    assert feed(t, [WARN] * 2, first=2) == [] and t.state == Level.ALARM
    [(i, tr)] = feed(t, [WARN], first=4)
    assert (tr.old, tr.new, tr.score, tr.threshold) == (Level.ALARM, Level.WARNING, WARN, 2.0)
    # Still warning-level wear: stays warning (clear level 0.9), no flapping back to alarm.
    assert feed(t, [WARN] * 20, first=5) == [] and t.state == Level.WARNING
    [(i, tr)] = feed(t, [LOW] * 3, first=25)
    assert (i, tr.old, tr.new, tr.threshold) == (27, Level.WARNING, Level.NORMAL, 1.0)


def test_auto_clear_hysteresis_band():
    t = auto(m=3)
    feed(t, [HIGH] * 2)
    # 1.9 is below the alarm threshold but inside the margin: it neither raises nor clears,
    # and it breaks a run of clearing cuts.
    assert feed(t, [1.0, 1.0, 1.9, 1.0, 1.0], first=2) == []
    assert t.state == Level.ALARM
    assert feed(t, [1.0], first=7)[0][1].new == Level.WARNING


def test_auto_clear_then_raise_needs_fresh_cuts():
    t = auto(m=2)
    feed(t, [HIGH] * 2)
    feed(t, [LOW, LOW], first=2)  # alarm -> warning, history emptied
    assert t.state == Level.WARNING
    assert feed(t, [HIGH], first=4) == []
    assert feed(t, [HIGH], first=5)[0][1].new == Level.ALARM


def test_auto_clear_margin_zero_and_negative_thresholds():
    t = AlarmTracker(absolute(persist_cuts=1, auto_clear=True, clear_cuts=1, clear_margin=0.0),
                     Thresholds(-2.0, -1.0))
    assert t.cut_ended(-0.5, W, "c", 0.0).new == Level.ALARM
    # clear level of a negative threshold still lies below it: -1 - 0 * 1
    assert t.cut_ended(-1.0, W, "c", 1.0) is None
    assert t.cut_ended(-1.5, W, "c", 2.0).new == Level.WARNING


# ------------------------------------------------------------------------------ persistence


def roundtrip(t: AlarmTracker, policy: AlarmPolicy | None = None) -> AlarmTracker:
    data = json.loads(json.dumps(t.to_dict()))  # what a state file holds
    return AlarmTracker.from_dict(policy or t.policy, t.thresholds, data)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("auto_clear", [False, True])
@pytest.mark.parametrize("reference_cuts", [0, 1, 2])
def test_restore_continues_exactly_like_an_uninterrupted_tracker(seed, auto_clear, reference_cuts):
    rng = np.random.default_rng(seed)
    policy = AlarmPolicy(persist_cuts=2, reference_cuts=reference_cuts, auto_clear=auto_clear, clear_cuts=3)
    scores = rng.choice([LOW, WARN, HIGH, 1.9, 0.95, 0.01], size=400, p=[0.45, 0.2, 0.1, 0.1, 0.1, 0.05])
    windows = rng.choice([W, 5], size=400, p=[0.9, 0.1])  # some cuts too short to count
    regimes = rng.choice(["light", "heavy"], size=400, p=[0.8, 0.2])
    a = AlarmTracker(policy, TH)
    b = AlarmTracker(policy, TH)
    for i, s in enumerate(scores):
        if i % 37 == 0:
            b = roundtrip(b)  # the daemon restarts
            assert b.state == a.state and b.since == a.since and b.cut == a.cut
        if i % 101 == 100:
            assert a.reset("op", float(i)) == b.reset("op", float(i))
        args = (s, windows[i], f"c{i}", float(i), regimes[i])
        assert a.cut_ended(*args) == b.cut_ended(*args) and a.judged == b.judged


def test_restoring_an_alarm_announces_nothing():
    t = AlarmTracker(absolute(), TH)
    feed(t, [HIGH] * 2)
    r = roundtrip(t)
    assert r.state == Level.ALARM and (r.cut, r.score, r.threshold) == ("c1", HIGH, 2.0)
    # Neither more alarm-level cuts nor healthy ones produce a transition.
    assert feed(r, [HIGH] * 10 + [LOW] * 100) == []
    assert r.state == Level.ALARM


def test_restore_from_the_retained_alarm_message():
    msg = AlarmMessage("m1", "warning", 1234.5, "c07-r03", 1.4, 1.0, "model-1")
    data = json.loads(encode(msg))  # the retained payload, machine and model keys included
    t = AlarmTracker.from_dict(absolute(), TH, data)
    assert (t.state, t.since, t.cut, t.score, t.threshold) == (Level.WARNING, 1234.5, "c07-r03", 1.4, 1.0)
    assert feed(t, [WARN] * 10) == []  # warning again: no re-announcement
    assert feed(t, [HIGH] * 2)[0][1].old == Level.WARNING  # but it can still rise


def test_restore_with_a_shorter_persistence_keeps_the_latest_cuts():
    t = AlarmTracker(absolute(persist_cuts=4), TH)
    feed(t, [HIGH, LOW, WARN, LOW])
    r = roundtrip(t, absolute(persist_cuts=2))
    assert r.to_dict()["recent"] == [WARN, LOW] and r.state == Level.NORMAL


@pytest.mark.parametrize(
    "data, reason",
    [
        ({}, "alarm state must be one of"),
        ({"state": "ALARM"}, "alarm state must be one of"),
        ({"state": "panic"}, "alarm state must be one of"),
        ({"state": "alarm", "since": "yesterday"}, "since must be a finite number or null"),
        ({"state": "alarm", "score": float("nan")}, "score must be a finite number"),
        ({"state": "alarm", "cut": 5}, "cut must be a string or null"),
        ({"state": "alarm", "recent": [1, "x"]}, "recent must be a list of finite scores"),
        ({"state": "alarm", "below": 1.5}, "below must be a non-negative integer"),
    ],
)
def test_bad_snapshots(data, reason):
    with pytest.raises(ValueError, match=reason):
        AlarmTracker.from_dict(absolute(), TH, data)


def test_policy_and_threshold_validation():
    assert AlarmPolicy.from_dict({"persist_cuts": 3, "min_windows": 8, "auto_clear": True}) == AlarmPolicy(
        persist_cuts=3, min_windows=8, auto_clear=True)
    assert AlarmPolicy.from_dict(AlarmPolicy().to_dict()) == AlarmPolicy()
    for bad, reason in [
        ({"persist_cuts": 0}, "alarm.persist_cuts: must be an integer 1-100, got 0"),
        ({"persist_cuts": 101}, "alarm.persist_cuts: must be an integer 1-100"),
        ({"min_windows": 2.0}, "alarm.min_windows: must be a positive integer"),
        ({"persist_cuts": True}, "alarm.persist_cuts: must be an integer"),
        ({"auto_clear": "yes"}, "alarm.auto_clear: must be true or false"),
        ({"clear_cuts": 0}, "alarm.clear_cuts"),
        ({"k": 3}, "alarm.k: is no longer a setting: alarms are decided per cut now; use persist_cuts"),
        ({"clear_margin": 1.0}, "alarm.clear_margin: must be a number in \\[0, 1\\)"),
        ({"clear_margin": -0.1}, "alarm.clear_margin"),
        ({"windows": 5}, "alarm.windows: unknown key"),
    ]:
        with pytest.raises(ValueError, match=reason):
            AlarmPolicy.from_dict(bad)
    with pytest.raises(ValueError, match=r"thresholds.warning: must not exceed thresholds.alarm \(1.0\), got 2.0"):
        Thresholds(2.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        Thresholds(float("nan"), 1.0)
    assert TH.of(Level.ALARM) == 2.0 and TH.of(Level.WARNING) == 1.0
    with pytest.raises(ValueError):
        TH.of(Level.NORMAL)


def test_levels():
    assert [lv.label for lv in Level] == ["normal", "warning", "alarm"]
    assert Level.parse("warning") == Level.WARNING
    assert Level.NORMAL < Level.WARNING < Level.ALARM


def test_thresholds_round_trip_and_validate():
    th = Thresholds(np.float32(1.5), 3, score="recon", rule="why")
    assert type(th.warning) is float and type(th.alarm) is float  # plain floats for JSON
    assert Thresholds.from_dict(json.loads(json.dumps(th.to_dict()))) == th
    assert Thresholds(1.0, 2.0).score == "kl"
    with pytest.raises(ValueError, match="thresholds.score: must be one of recon | kl, got 'mse'"):
        Thresholds(1.0, 2.0, "mse")
    with pytest.raises(ValueError, match="thresholds.warning: must be a finite number, got True"):
        Thresholds(True, 2.0)
    with pytest.raises(ValueError, match="thresholds: lacks key\\(s\\) score, rule"):
        Thresholds.from_dict({"warning": 1.0, "alarm": 2.0})


# --- the fresh tool's own reference ------------------------------------------------------------


def feed_in(tracker: AlarmTracker, cuts, first: int = 0) -> list[tuple[int, Transition]]:
    """Like :func:`feed`, for (median, regime) pairs."""
    out = []
    for i, (m, regime) in enumerate(cuts, start=first):
        t = tracker.cut_ended(m, W, f"c{i}", 1000.0 + i, regime)
        if t is not None:
            out.append((i, t))
    return out


def test_a_tool_that_scores_high_from_its_first_cut_is_not_wearing():
    medians = [4.0, 3.8, 4.2, 3.9, 4.1]  # all above the alarm threshold (2.0) as they are
    assert [e.new for _, e in feed(AlarmTracker(absolute(), TH), medians)] == [Level.ALARM]
    t = AlarmTracker(AlarmPolicy(persist_cuts=2, reference_cuts=1), TH)
    assert feed(t, medians) == []  # 0.95, 1.05, 0.975, 1.025 of the first cut: never twice above 1.0
    assert t.judged == pytest.approx(4.1 / 4.0)


def test_the_reference_cut_decides_nothing_and_growth_raises():
    t = AlarmTracker(AlarmPolicy(persist_cuts=2, reference_cuts=1), TH)
    assert t.cut_ended(10.0, W, "c0", 0.0) is None and t.judged is None  # the reference
    assert t.cut_ended(90.0, 3, "c1", 1.0) is None and t.judged is None  # too few windows: no evidence
    assert feed(t, [9.0, 9.5, 8.0], first=2) == []  # 0.9, 0.95, 0.8 of the reference
    events = feed(t, [25.0, 30.0], first=5)  # 2.5 and 3 times the reference: alarm on the second
    assert [(i, e.new) for i, e in events] == [(6, Level.ALARM)]
    assert events[0][1].score == pytest.approx(3.0) and events[0][1].threshold == TH.alarm


def test_references_are_per_regime_and_forgotten_on_reset():
    t = AlarmTracker(AlarmPolicy(persist_cuts=1, reference_cuts=2), TH)
    assert feed_in(t, [(1.0, "light"), (3.0, "light"), (10.0, "heavy"), (10.0, "heavy")]) == []
    t.cut_ended(2.2, W, "c4", 4.0, "light")
    assert t.judged == pytest.approx(1.1)  # over the median of the two light reference cuts (2.0)
    t.cut_ended(12.0, W, "c5", 5.0, "heavy")
    assert t.judged == pytest.approx(1.2)
    assert t.state == Level.WARNING
    restored = AlarmTracker.from_dict(t.policy, TH, json.loads(json.dumps(t.to_dict())))
    assert restored.evidence.references == {"light": [1.0, 3.0], "heavy": [10.0, 10.0]}
    t.reset("operator", 6.0)
    assert t.evidence.references == {}
    t.cut_ended(50.0, W, "c7", 7.0, "light")
    assert t.judged is None  # the new tool's first cut: its reference


def test_a_bad_reference_snapshot_is_refused_naming_the_regime():
    data = {"state": "normal", "references": {"light": ["x"]}}
    with pytest.raises(ValueError, match="references of regime 'light'"):
        AlarmTracker.from_dict(AlarmPolicy(), TH, data)


def test_a_cut_that_is_not_cutting_is_no_reference():
    t = AlarmTracker(AlarmPolicy(persist_cuts=1, reference_cuts=1), TH)
    assert feed(t, [0.001, 0.001]) == [] and t.evidence.references == {"": []}  # air: neither judged nor reference
    assert feed(t, [1.0, 1.5], first=2)[0][1].new == Level.WARNING  # the first real cut is the reference


def test_a_snapshot_without_references_keeps_only_the_state():
    # A state file from before references held window scores and window counts: not judged figures.
    old = {"state": "warning", "since": 5.0, "cut": "c3", "score": 1.2, "threshold": 1.0,
           "recent": [3.3, 3.3], "below": 45}
    t = AlarmTracker.from_dict(AlarmPolicy(persist_cuts=2, reference_cuts=1), TH, old)
    assert t.state == Level.WARNING and t.to_dict()["recent"] == [] and t.to_dict()["below"] == 0
    assert feed(t, [1.0, 5.0]) == []  # the reference, then one cut: two judged cuts are needed


def test_a_reference_taken_after_the_alarm_never_clears_it():
    # Restored from the retained alarm alone: the worn tool's next cut becomes its reference, and
    # its growth over that says nothing about wear already there.
    policy = AlarmPolicy(persist_cuts=1, reference_cuts=1, auto_clear=True, clear_cuts=1, clear_margin=0.0)
    t = AlarmTracker.from_dict(policy, TH, {"state": "alarm", "since": 1.0, "cut": "c0"})
    assert feed(t, [5.0] * 20) == [] and t.state == Level.ALARM
    assert t.to_dict()["late_reference"] is True
    t.reset("op", 2.0)
    events = feed(t, [1.0, 3.0, 1.0])  # a new tool: its reference, an alarm, and a clear one level down
    assert [e.new for _, e in events] == [Level.ALARM, Level.WARNING]


def test_the_monitor_says_when_its_rule_is_not_the_one_the_thresholds_were_chosen_for():
    from edge_monitor.core.alarm import policy_mismatch

    chosen = AlarmPolicy().to_dict()
    assert policy_mismatch(chosen, AlarmPolicy()) is None
    assert policy_mismatch(None, AlarmPolicy(persist_cuts=1)) is None  # an older bundle does not say
    assert policy_mismatch(chosen, AlarmPolicy(auto_clear=True)) is None  # clearing is the site's choice
    text = policy_mismatch(chosen, AlarmPolicy(persist_cuts=1, reference_cuts=0))
    assert "alarm.persist_cuts: 1 (chosen for 2)" in text and "alarm.reference_cuts: 0 (chosen for 1)" in text
