"""The per-machine alarm state machine: k of n, no healing, reset, auto-clear hysteresis, restart."""

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


def feed(tracker: AlarmTracker, scores, cut: str = "c1") -> list[tuple[int, Transition]]:
    """(window index, transition) for every transition the scores cause."""
    out = []
    for i, s in enumerate(scores):
        t = tracker.update(s, cut, 64 * i, 1000.0 + i)
        if t is not None:
            out.append((i, t))
    return out


def test_defaults():
    p = AlarmPolicy()
    assert (p.k, p.n, p.auto_clear) == (3, 5, False)


def test_k_of_n_raises_on_the_kth_exceedance():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    assert feed(t, [WARN, LOW, WARN, LOW, LOW, LOW, WARN, LOW, LOW, LOW]) == []  # never 3 in any 5
    assert t.state == Level.NORMAL
    events = feed(t, [WARN, LOW, WARN, LOW, WARN], cut="c2")  # 3 of the last 5
    assert len(events) == 1
    i, tr = events[0]
    assert i == 4
    assert tr == Transition(Level.NORMAL, Level.WARNING, 1004.0, "c2", 256, WARN, 1.0)
    assert tr.raised and t.state == Level.WARNING
    assert (t.since, t.cut, t.offset, t.score, t.threshold) == (1004.0, "c2", 256, WARN, 1.0)


def test_threshold_is_exceeded_strictly():
    t = AlarmTracker(AlarmPolicy(k=1, n=1), TH)
    assert t.update(1.0, "c", 0, 0.0) is None
    assert t.update(1.0000001, "c", 64, 1.0).new == Level.WARNING


def test_history_runs_across_cuts():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    assert feed(t, [LOW, LOW, HIGH, HIGH], cut="c1") == []
    [(i, tr)] = feed(t, [HIGH], cut="c2")
    assert tr.new == Level.ALARM and tr.cut == "c2"


def test_straight_to_alarm_is_one_transition():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    [(i, tr)] = feed(t, [HIGH, HIGH, HIGH])
    assert (i, tr.old, tr.new, tr.threshold) == (2, Level.NORMAL, Level.ALARM, 2.0)


def test_warning_then_alarm():
    t = AlarmTracker(AlarmPolicy(k=2, n=3), TH)
    events = feed(t, [WARN, WARN, HIGH, LOW, HIGH])
    assert [(i, tr.old, tr.new) for i, tr in events] == [
        (1, Level.NORMAL, Level.WARNING),
        (4, Level.WARNING, Level.ALARM),
    ]


def test_wear_does_not_heal_without_auto_clear():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    feed(t, [HIGH] * 3)
    assert feed(t, [0.0] * 1000) == []
    assert t.state == Level.ALARM and t.score == HIGH  # still announcing what raised it


def test_non_finite_scores_are_ignored():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    assert feed(t, [HIGH, float("nan"), HIGH, float("inf"), float("-inf")]) == []
    [(i, tr)] = feed(t, [HIGH])
    assert tr.new == Level.ALARM


def test_reset():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    feed(t, [HIGH] * 3)
    tr = t.reset("operator", 5000.0)
    assert tr == Transition(Level.ALARM, Level.NORMAL, 5000.0, None, None, None, None, "operator")
    assert not tr.raised
    assert (t.state, t.since, t.cut, t.score, t.threshold) == (Level.NORMAL, 5000.0, None, None, None)
    assert t.reset("operator", 5001.0) is None  # nothing to announce
    # The history went with the old tool: k fresh windows are needed to raise again.
    assert feed(t, [HIGH, HIGH]) == []
    assert feed(t, [HIGH])[0][1].new == Level.ALARM


def test_reset_while_normal_still_clears_history():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    feed(t, [HIGH, HIGH])
    assert t.reset("x", 1.0) is None
    assert feed(t, [HIGH, HIGH]) == []


def auto(m: int = 4, margin: float = 0.1) -> AlarmTracker:
    return AlarmTracker(AlarmPolicy(k=3, n=5, auto_clear=True, clear_windows=m, clear_margin=margin), TH)


def test_auto_clear_drops_one_level_after_m_windows_below_the_clear_level():
    t = auto(m=4)
    feed(t, [HIGH] * 3)
    # Alarm clear level = 2.0 - 0.1 * 2.0 = 1.8; warning-level scores count as below it.
    events = feed(t, [WARN] * 3)
    assert events == [] and t.state == Level.ALARM
    [(i, tr)] = feed(t, [WARN])
    assert (tr.old, tr.new, tr.score, tr.threshold) == (Level.ALARM, Level.WARNING, WARN, 2.0)
    # Still warning-level wear: stays warning (clear level 0.9), no flapping back to alarm.
    assert feed(t, [WARN] * 50) == [] and t.state == Level.WARNING
    [(i, tr)] = feed(t, [LOW] * 4)
    assert (i, tr.old, tr.new, tr.threshold) == (3, Level.WARNING, Level.NORMAL, 1.0)


def test_auto_clear_hysteresis_band():
    t = auto(m=4)
    feed(t, [HIGH] * 3)
    # 1.9 is below the alarm threshold but inside the margin: it neither raises nor clears,
    # and it breaks a run of clearing windows.
    assert feed(t, [1.0, 1.0, 1.0, 1.9, 1.0, 1.0, 1.0]) == []
    assert t.state == Level.ALARM
    assert feed(t, [1.0])[0][1].new == Level.WARNING


def test_auto_clear_then_raise_needs_k_fresh_windows():
    t = auto(m=2)
    feed(t, [HIGH] * 3)
    feed(t, [LOW, LOW])  # alarm -> warning, history emptied
    assert t.state == Level.WARNING
    assert feed(t, [HIGH, HIGH]) == []
    assert feed(t, [HIGH])[0][1].new == Level.ALARM


def test_auto_clear_margin_zero_and_negative_thresholds():
    t = AlarmTracker(AlarmPolicy(k=1, n=1, auto_clear=True, clear_windows=1, clear_margin=0.0),
                     Thresholds(-2.0, -1.0))
    assert t.update(-0.5, "c", 0, 0.0).new == Level.ALARM
    # clear level of a negative threshold still lies below it: -1 - 0 * 1
    assert t.update(-1.0, "c", 64, 1.0) is None
    assert t.update(-1.5, "c", 128, 2.0).new == Level.WARNING


# ------------------------------------------------------------------------------ persistence


def roundtrip(t: AlarmTracker, policy: AlarmPolicy | None = None) -> AlarmTracker:
    data = json.loads(json.dumps(t.to_dict()))  # what a state file holds
    return AlarmTracker.from_dict(policy or t.policy, t.thresholds, data)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("auto_clear", [False, True])
def test_restore_continues_exactly_like_an_uninterrupted_tracker(seed, auto_clear):
    rng = np.random.default_rng(seed)
    policy = AlarmPolicy(k=3, n=5, auto_clear=auto_clear, clear_windows=6)
    scores = rng.choice([LOW, WARN, HIGH, 1.9, 0.95], size=400, p=[0.5, 0.2, 0.1, 0.1, 0.1])
    a = AlarmTracker(policy, TH)
    b = AlarmTracker(policy, TH)
    for i, s in enumerate(scores):
        if i % 37 == 0:
            b = roundtrip(b)  # the daemon restarts
            assert b.state == a.state and b.since == a.since and b.cut == a.cut
        if i % 101 == 100:
            assert a.reset("op", float(i)) == b.reset("op", float(i))
        assert a.update(s, "c", i * 64, float(i)) == b.update(s, "c", i * 64, float(i))


def test_restoring_an_alarm_announces_nothing():
    t = AlarmTracker(AlarmPolicy(), TH)
    feed(t, [HIGH] * 3)
    r = roundtrip(t)
    assert r.state == Level.ALARM and (r.cut, r.offset, r.score, r.threshold) == ("c1", 128, HIGH, 2.0)
    # Neither more alarm-level windows nor healthy ones produce a transition.
    assert feed(r, [HIGH] * 10 + [LOW] * 100) == []
    assert r.state == Level.ALARM


def test_restore_from_the_retained_alarm_message():
    msg = AlarmMessage("m1", "warning", 1234.5, "c07-r03", 1.4, 1.0, "model-1")
    data = json.loads(encode(msg))  # the retained payload, machine and model keys included
    t = AlarmTracker.from_dict(AlarmPolicy(), TH, data)
    assert (t.state, t.since, t.cut, t.score, t.threshold) == (Level.WARNING, 1234.5, "c07-r03", 1.4, 1.0)
    assert feed(t, [WARN] * 10) == []  # warning again: no re-announcement
    assert feed(t, [HIGH] * 3)[0][1].old == Level.WARNING  # but it can still rise


def test_restore_with_a_smaller_window_keeps_the_latest_scores():
    t = AlarmTracker(AlarmPolicy(k=3, n=5), TH)
    feed(t, [HIGH, HIGH, LOW, LOW, LOW])
    r = roundtrip(t, AlarmPolicy(k=1, n=2))
    assert r.to_dict()["recent"] == [LOW, LOW] and r.state == Level.NORMAL


@pytest.mark.parametrize(
    "data, reason",
    [
        ({}, "alarm state must be one of"),
        ({"state": "ALARM"}, "alarm state must be one of"),
        ({"state": "panic"}, "alarm state must be one of"),
        ({"state": "alarm", "since": "yesterday"}, "since must be a finite number or null"),
        ({"state": "alarm", "score": float("nan")}, "score must be a finite number"),
        ({"state": "alarm", "cut": 5}, "cut must be a string or null"),
        ({"state": "alarm", "offset": -1}, "offset must be a non-negative integer"),
        ({"state": "alarm", "recent": [1, "x"]}, "recent must be a list of finite scores"),
        ({"state": "alarm", "below": 1.5}, "below must be a non-negative integer"),
    ],
)
def test_bad_snapshots(data, reason):
    with pytest.raises(ValueError, match=reason):
        AlarmTracker.from_dict(AlarmPolicy(), TH, data)


def test_policy_and_threshold_validation():
    assert AlarmPolicy.from_dict({"k": 2, "n": 4, "auto_clear": True}) == AlarmPolicy(2, 4, True)
    assert AlarmPolicy.from_dict(AlarmPolicy().to_dict()) == AlarmPolicy()
    for bad, reason in [
        ({"k": 6, "n": 5}, "alarm.k: must not exceed alarm.n \\(5\\), got 6"),
        ({"k": 0}, "alarm.k: must be a positive integer"),
        ({"n": 2.0}, "alarm.n: must be a positive integer"),
        ({"k": True}, "alarm.k: must be a positive integer"),
        ({"auto_clear": "yes"}, "alarm.auto_clear: must be true or false"),
        ({"clear_windows": 0}, "alarm.clear_windows"),
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
