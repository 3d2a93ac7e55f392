"""Which machines a monitor tracks, and the alarm states they resume in after a restart."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

import numpy as np
import pytest

from edge_monitor.core.alarm import AlarmPolicy, Level, Thresholds
from edge_monitor.core.channels import SAMPLE_RATE_HZ
from edge_monitor.core.fleet import Fleet
from edge_monitor.core.inbound import Limits
from edge_monitor.core.outbound import AlarmMessage
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.steps import PipelineSpec
from edge_monitor.core.windowing import WindowSpec
from edge_monitor.service.state import restore_alarm_states

SPEC = PipelineSpec(WindowSpec(), StableRegionSpec(), SAMPLE_RATE_HZ, Thresholds(1.0, 2.0), AlarmPolicy(), "m0",
                    Limits(max_machines=8))


def watches(patterns):
    return lambda machine: any(fnmatch.fnmatchcase(machine, p) for p in patterns)


def test_unwatched_machines_are_refused_with_the_key_to_change():
    fleet = Fleet(SPEC, watches(("mill-*",)), ("mill-*",))
    assert fleet.unwatched("mill-1") is None
    reason = fleet.unwatched("lathe-1")
    assert "unknown machine 'lathe-1'" in reason and "mill-*" in reason and "configuration key machines" in reason
    assert len(fleet) == 0  # asking creates nothing


def test_the_number_of_machines_is_bounded():
    fleet = Fleet(replace(SPEC, limits=Limits(max_machines=2)), watches(("*",)), ("*",))
    a, b = fleet.pipeline("a"), fleet.pipeline("b")
    assert fleet.pipeline("a") is a and fleet["b"] is b and len(fleet) == 2
    assert fleet.over_limit("a") is None  # tracked machines keep going
    reason = fleet.over_limit("c")
    assert "too many machines" in reason and "limits.max_machines" in reason and "'c'" in reason


def test_restored_states_wait_for_their_machine_and_are_not_lost():
    fleet = Fleet(SPEC, watches(("*",)), ("*",))
    fleet.restore({"a": {"state": "alarm", "since": 5.0}})
    assert fleet.states() == {"a": "alarm"} and len(fleet) == 0
    assert fleet.snapshots()["a"]["since"] == 5.0
    assert fleet.pipeline("a").state == Level.ALARM  # restored when its first input arrives
    assert fleet.pipeline("b").state == Level.NORMAL
    assert fleet.states() == {"a": "alarm", "b": "normal"}
    with pytest.raises(RuntimeError, match="before the first input"):
        fleet.restore({})


def test_restore_skips_what_it_cannot_use_and_names_stale_retained_alarms():
    warnings = []
    saved = {
        "a": {"state": "normal", "since": 9.0},  # a reset the broker never got
        "b/c": {"state": "alarm"},  # no topic can carry this machine id
        "lathe": {"state": "alarm"},  # not watched any more
        "d": {"state": "alarm", "since": "yesterday"},  # malformed
    }
    retained = {"a": AlarmMessage("a", "alarm", 5.0, "c1", 3.0, 2.0, "m0"),
                "e": AlarmMessage("e", "warning", 1.0, "c2", 1.5, 1.0, "m0")}
    trackers, stale = restore_alarm_states(saved, retained, watches(("a", "b*", "d", "e")), SPEC.policy,
                                           SPEC.thresholds, lambda event, **fields: warnings.append((event, fields)))
    assert sorted(trackers) == ["a", "e"]
    assert trackers["a"].state == Level.NORMAL and trackers["e"].state == Level.WARNING
    assert stale == ["a"]  # the retained alarm of "a" disagrees with the state it resumes in
    assert [(e, f["machine"]) for e, f in warnings] == [("alarm_state_ignored", "b/c"), ("alarm_state_ignored", "d")]


def test_only_a_cut_start_or_a_known_machine_makes_a_pipeline():
    from edge_monitor.core.inbound import Command, CutEnd, CutStart, SignalChunk

    fleet = Fleet(SPEC, watches(("*",)), ("*",))
    fleet.restore({"known": {"state": "alarm", "since": 5.0}})
    assert "never started" in fleet.refuse("bogus", SignalChunk("c", 0, np.ones(3)))
    assert "never started" in fleet.refuse("bogus", CutEnd("c", 1.0, 3))
    assert "has sent no cut yet" in fleet.refuse("bogus", Command("reset", "x"))
    assert fleet.refuse("known", Command("reset", "x")) is None  # a reset of a restored alarm state
    assert fleet.refuse("new", CutStart("c", 1.0, SAMPLE_RATE_HZ)) is None
    assert len(fleet) == 0  # asking creates nothing
    # a first input that did not open a cut leaves nothing behind; a known machine stays known
    fleet.pipeline("new")
    fleet.discard("new")
    fleet.pipeline("known")
    fleet.discard("known")
    assert len(fleet) == 0 and fleet.states() == {"known": "alarm"}


def test_silent_cuts_are_closed_and_idle_machines_leave_memory():
    from edge_monitor.core.inbound import CutStart, SignalChunk
    from edge_monitor.core.outbound import SummaryMessage

    limits = Limits(max_machines=8, cut_timeout_s=60, idle_machine_s=600)
    fleet = Fleet(replace(SPEC, limits=limits), watches(("*",)), ("*",))
    pipe = fleet.pipeline("a")
    pipe.handle(CutStart("c1", 0.0, SAMPLE_RATE_HZ), now=1000.0)
    pipe.handle(SignalChunk("c1", 0, np.ones(640)), channel="smcAC", now=1010.0)
    assert fleet.expire(1060.0) == []  # 50 s quiet
    [(machine, step)] = fleet.expire(1071.0)
    assert machine == "a" and not pipe.stream.is_open
    summaries = [o.message for o in step.outputs if isinstance(o.message, SummaryMessage)]
    assert [s.cut for s in summaries] == ["c1"]
    assert any(e.name == "cut_timeout" and "limits.cut_timeout_s" in e.fields["reason"] for e in step.events)
    assert fleet.expire(1500.0) == [] and "a" in fleet
    assert fleet.expire(1700.0) == [] and "a" not in fleet  # idle 690 s: gone, its state kept
    assert fleet.states() == {"a": "normal"} and fleet.refuse("a", SignalChunk("c2", 0, np.ones(3))) is None
