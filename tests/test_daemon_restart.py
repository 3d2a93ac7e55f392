"""Restarts: the alarm state survives a daemon restart (state file and retained topic) without
being announced again or cleared; a reset clears it; the broker restarting mid-replay loses no
window published after the daemon reconnected by itself."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from datetime import datetime

import pytest
from broker import Broker
from daemon_support import (
    CASES,
    REPO,
    Collector,
    Daemon,
    machine_of,
    model_fixture,
    replay_cli,
)

from edge_monitor.archive.replay import replay_cuts
from edge_monitor.core.inbound import Command
from edge_monitor.core.outbound import AlarmMessage, encode
from edge_monitor.core.topics import cmd_topic, machine_topic
from edge_monitor.service.mqtt import BrokerSettings
from edge_monitor.service.state import SavedState, StateFile, choose_alarm_state
from edge_monitor.service.state_format import encode_record


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


# ------------------------------------------------------------------------------ pure: which state


def alarm(state: str, since: float | None) -> AlarmMessage:
    return AlarmMessage("m1", state, since, "c", 1.0, 0.5, "model")


def test_choose_alarm_state():
    saved = {"state": "alarm", "since": 10.0, "recent": [1.0, 2.0]}
    assert choose_alarm_state(None, None) == (None, False)
    assert choose_alarm_state(saved, None) == (saved, True)  # retained lost: publish it again
    assert choose_alarm_state(saved, alarm("alarm", 10.0)) == (saved, False)  # agree: the file has history
    assert choose_alarm_state(saved, alarm("alarm", 5.0)) == (saved, False)
    # a reset the retained topic never got: the file is newer, dashboards must be told
    reset = {"state": "normal", "since": 20.0}
    assert choose_alarm_state(reset, alarm("alarm", 10.0)) == (reset, True)
    # a newer transition on the retained topic (the file write was lost): take it, publish nothing
    chosen, republish = choose_alarm_state({"state": "warning", "since": 5.0}, alarm("alarm", 10.0))
    assert chosen["state"] == "alarm" and chosen["since"] == 10.0 and not republish
    chosen, republish = choose_alarm_state(None, alarm("warning", 3.0))
    assert chosen["state"] == "warning" and not republish
    assert choose_alarm_state({"state": "normal", "since": None}, None) == ({"state": "normal", "since": None}, False)


# ------------------------------------------------------------------------------ daemon restarts


def test_alarm_survives_restart_and_reset_clears_it(broker, model, tmp_path):
    root, instance = "t-restart", "r1"
    config = 'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\n'
    status = f"{root}/_monitor/{instance}/status"
    collector = Collector(broker, [f"{root}/#"], "collector-restart")
    settings = BrokerSettings(broker.host, broker.port, client_id="pub-restart")
    healthy = [c for c in model.archive.cuts if c.case == CASES[0]]
    started: list[Daemon] = []
    pub = Collector(broker, [], "pub-restart-cmd")

    def start() -> Daemon:
        daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
        started.append(daemon)
        daemon.wait_online(collector)
        return daemon

    try:
        # 1. replay: mill-02's tool fails; a graceful stop publishes offline with counters
        first = start()
        assert replay_cli(broker, model.archive_path, root).returncode == 0
        assert collector.wait(lambda: len(collector.on("/summary")) >= len(model.archive.cuts), 60)
        assert first.terminate() == 0
        assert collector.on(status)[-1][1]["state"] == "offline" and "counters" in collector.on(status)[-1][1]
        saved = StateFile(tmp_path / "state.json").read("")
        assert saved.alarms["mill-02"]["state"] == "alarm"
        announced = collector.on("/alarm")[-1][1]

        # 2. the broker lost the retained alarm (say, restarted without persistence): the state
        #    file restores the alarm, and the daemon puts the same message back for dashboards
        pub.client.publish(machine_topic(root, "mill-02", "alarm"), b"", qos=1, retain=True).wait_for_publish(5)
        # count only once the collector has its copy of the clearing message too
        assert collector.wait(lambda: collector.on("/alarm")[-1][1] == b"", 5)
        n_alarms = len(collector.on("/alarm"))
        second = start()
        restored = {e["machine"]: e["state"] for e in second.events("alarm_state_restored")}
        assert restored == {"mill-01": "normal", "mill-02": "alarm"}
        assert collector.wait(lambda: len(collector.on("/alarm")) == n_alarms + 1, 5)
        assert collector.on("/alarm")[-1][1] == announced
        assert second.terminate() == 0

        # 3. restart without the state file: the retained alarm alone restores it; a healthy cut
        #    on the failed machine neither clears nor re-announces the alarm
        (tmp_path / "state.json").unlink()
        n_alarms = len(collector.on("/alarm"))
        third = start()
        restored = {e["machine"]: e["state"] for e in third.events("alarm_state_restored")}
        assert restored == {"mill-02": "alarm"}  # mill-01 never had an alarm message
        n_scores = len(collector.on("/score"))
        again = dataclasses.replace(healthy[0], run=healthy[0].run + 50)  # a new cut id: ids are unique
        replay_cuts(settings, root, "mill-02", [again])
        assert collector.wait(lambda: any(b["cut"] == again.cut_id for _, b in collector.on("/summary")), 30)
        new = [b for t, b in collector.on("/score")[n_scores:] if machine_of(t, root) == "mill-02"]
        assert new and {b["level"] for b in new} == {"alarm"}
        assert len(collector.on("/alarm")) == n_alarms  # nothing announced again

        # 4. a reset clears it (after the windows already in flight), and the file follows
        pub.client.publish(cmd_topic(root, "mill-02"), encode(Command("reset", "test")), qos=1)
        assert collector.wait(lambda: len(collector.on("/alarm")) > n_alarms, 10)
        cleared = collector.on("/alarm")[-1][1]
        assert (cleared["state"], cleared["cut"], cleared["score"]) == ("normal", None, None)
        assert third.terminate() == 0
        assert StateFile(tmp_path / "state.json").read("").alarms["mill-02"]["state"] == "normal"

        # 5. restarting again publishes no alarm at all: file and retained agree on normal
        n_alarms = len(collector.on("/alarm"))
        fourth = start()
        time.sleep(0.5)
        assert len(collector.on("/alarm")) == n_alarms
        assert fourth.terminate() == 0
    finally:
        for daemon in started:
            daemon.kill()
        pub.close()
        collector.close()


def reconnected_after(daemon: Daemon, back: float, timeout: float = 10.0) -> float:
    """Seconds from the broker's return (``back``, wall clock) to the daemon's input subscription
    on the new connection; fails the test when it does not come within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in daemon.events("subscribed")]
        later = [t for t in times if t >= back - 0.05]  # log timestamps are rounded to the millisecond
        if later:
            return min(later) - back
        time.sleep(0.05)
    daemon.fail(f"the daemon did not subscribe again within {timeout} s of the broker's return")
    raise AssertionError  # not reached


def last_alarm_states(messages) -> dict[str, str]:
    """Each machine's last alarm state in ``(topic, body)`` pairs of alarm messages."""
    return {t.split("/")[-2]: b["state"] for t, b in messages if isinstance(b, dict)}


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_broker_restart_mid_replay_loses_no_window(tmp_path_factory, model, tmp_path, how):
    """The broker stops mid-replay, for 1 s, gracefully (SIGTERM: it saves its database on the way
    out) or by a crash (SIGKILL: it comes back from the database saved when the monitor came
    online). No input is lost, every cut is summarised, every machine's alarm state is right for a
    dashboard that subscribes afterwards, and the monitor is back within a second of the broker."""
    broker = Broker(tmp_path_factory.mktemp(f"mosquitto-{how}")).start()
    root, instance = "t-broker", "b1"
    config = 'machines: "mill-*"\nstatus_interval_s: 1\n'  # the default QoS: scores at 1
    status = f"{root}/_monitor/{instance}/status"
    # a persistent dashboard session, so that what is published while it reconnects waits for it
    collector = Collector(broker, [f"{root}/#"], "collector-broker", persistent=True)
    daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
    try:
        daemon.wait_online(collector)
        broker.save()  # the sessions as they are now; the crash restores this
        args = [sys.executable, "-m", "edge_monitor", "replay", "--archive", str(model.archive_path),
                "--broker", broker.address, "--machines", "2", "--cases", ",".join(map(str, CASES)),
                "--speed", "12", "--root", root]
        replay = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert collector.wait(lambda: len(collector.on("/score")) >= 10, 30)
        assert replay.poll() is None  # mid-replay
        broker.stop() if how == "sigterm" else broker.kill()
        time.sleep(1.0)
        broker.start()
        back = time.time()
        delay = reconnected_after(daemon, back)
        out, err = replay.communicate(timeout=120)
        assert replay.returncode == 0, err

        # the monitor's own account: every cut summarised with nothing skipped, every window scored once
        n_cuts = len(model.archive.cuts)
        deadline = time.monotonic() + 60
        while len(daemon.events("summary")) < n_cuts and time.monotonic() < deadline:
            time.sleep(0.2)
        summaries = daemon.events("summary")
        assert sorted(s["cut"] for s in summaries) == sorted(c.cut_id for c in model.archive.cuts)
        assert all(s["skipped"] == 0 for s in summaries), [s for s in summaries if s["skipped"]]
        assert daemon.running
        assert daemon.events("broker_disconnected") and len(daemon.events("subscribed")) >= 2
        assert collector.wait(lambda: collector.on(status)[-1][1]["state"] == "online", 10)
        machine_of_cut = {c: f"mill-0{i + 1}" for i, case in enumerate(CASES) for c in model.cuts_by_case[case]}
        expected = {(machine_of_cut[cut], cut, offset) for cut, offset in model.offline}
        assert collector.wait(
            lambda: collector.on(status)[-1][1].get("counters", {}).get("windows_scored") == len(expected), 5
        )  # each scored exactly once (QoS 1 may deliver a score message twice; the daemon scored it once)
        counters = collector.on(status)[-1][1]["counters"]
        assert (counters["gap_samples"], counters["rejected"]) == (0, 0), counters
        seen = {(machine_of(t, root), b["cut"], b["offset"]) for t, b in collector.on("/score")}
        if how == "sigterm":
            assert seen == expected  # every window reached the dashboard, also those published after the reconnect
        else:
            # A crash loses what the broker had taken but not yet written to a subscriber's socket:
            # QoS 1 between broker and subscriber holds only while the broker lives.
            assert seen <= expected and len(seen) >= len(expected) - 20

        # a dashboard that subscribes now gets every machine's state as the monitor has it
        states = {e["machine"]: e["state"] for e in daemon.events("alarm")}
        assert states.get("mill-02") == "alarm"
        late = Collector(broker, [f"{root}/+/alarm"], f"collector-late-{how}")
        try:
            assert late.wait(lambda: states.items() <= last_alarm_states(late.on("/alarm")).items(), 5), \
                (states, late.on("/alarm"))
        finally:
            late.close()
        print(f"{how}: the monitor subscribed again {delay:.2f} s after the broker was back")
        assert delay <= 1.0, f"the monitor came back {delay:.2f} s after the broker (wanted <= 1 s)"
    finally:
        daemon.kill()
        collector.close()
        broker.kill()


def test_state_file_round_trip_and_problems(tmp_path):
    state = StateFile(tmp_path / "sub" / "state.json")
    assert state.read("model") == SavedState()  # no file yet: no problem
    alarms = {"m1": {"state": "alarm", "since": 1.0, "recent": [2.0]}}
    state.write(StateFile.compose(alarms, {"m1": encode_record({"x": 1})}, "model"))
    saved = state.read("model")
    assert (saved.alarms, saved.streams, saved.checkpoint, saved.problems) == (alarms, {"m1": {"x": 1}}, True, [])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["state.json"]  # no temporary left
    other = state.read("another-model")  # open cuts were windowed for the model that wrote them
    assert other.alarms == alarms and other.streams == {} and "start afresh" in other.problems[0]
    (tmp_path / "sub" / "state.json").write_text("{not json")
    saved = state.read("model")
    assert saved.alarms == {} and "not JSON" in saved.problems[0] and "ignored; using the retained alarms" in saved.problems[0]
    assert StateFile(None).read("model") == SavedState()


def test_a_broker_that_lost_everything_gets_the_alarms_back_on_reconnect(tmp_path_factory, model, tmp_path):
    """A broker without persistence restarts: sessions and retained messages are gone. The monitor
    reconnects by itself and puts every machine's alarm state back within 5 s of reconnecting."""
    broker = Broker(tmp_path_factory.mktemp("mosquitto-volatile"), persistence=False).start()
    root, instance = "t-volatile", "v1"
    collector = Collector(broker, [f"{root}/#"], "collector-volatile")
    daemon = Daemon(tmp_path, broker, model.bundle, root, instance, 'machines: "mill-*"\nstatus_interval_s: 1\n')
    daemon.start()
    try:
        daemon.wait_online(collector)
        assert replay_cli(broker, model.archive_path, root).returncode == 0
        assert collector.wait(lambda: len(collector.on("/summary")) >= len(model.archive.cuts), 60)
        announced = collector.on("mill-02/alarm")[-1][1]
        assert announced["state"] == "alarm"
        collector.close()
        broker.restart()
        back = time.time()
        late = Collector(broker, [f"{root}/+/alarm"], "collector-volatile-2")  # a dashboard after the restart
        try:
            assert late.wait(lambda: len(late.on("mill-02/alarm")) > 0, 20), "the alarm did not come back"
            got = time.time()
            assert late.on("mill-02/alarm")[-1][1] == announced
            # the alarms go back on the output connection; the input connection says what was lost
            reconnected = back + reconnected_after(daemon, back)
            assert got - reconnected < 5.0
            deadline = time.monotonic() + 5
            while not daemon.events("session_lost") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert daemon.events("session_lost"), "the daemon did not notice the broker lost its session"
        finally:
            late.close()
    finally:
        daemon.kill()
        broker.kill()


def test_a_broker_restored_from_an_older_database_gets_the_alarm_states_back(tmp_path_factory, model, tmp_path):
    """The broker saved its database, then an alarm was raised; the broker dies (SIGKILL: a power
    cut, the OOM killer) and comes back from that database, with the monitor's session and the
    retained alarm topics as they were before the alarm. The monitor's session is there, yet a
    dashboard that subscribes afterwards gets the alarm within a second of the monitor's
    reconnection. Then the same for a reset made after a save."""
    broker = Broker(tmp_path_factory.mktemp("mosquitto-crash")).start()
    root, instance = "t-crash", "k1"
    collector = Collector(broker, [f"{root}/#"], "collector-crash")
    daemon = Daemon(tmp_path, broker, model.bundle, root, instance, 'machines: "mill-*"\nstatus_interval_s: 1\n')
    daemon.start()
    topic = machine_topic(root, "mill-02", "alarm")

    def crash_and_watch(expected: dict) -> None:
        """Kill and restart the broker; a dashboard subscribes at once and must end with ``expected``
        as mill-02's alarm within a second of the monitor's reconnection."""
        collector.close()
        broker.kill()
        broker.start()
        back = time.time()
        late = Collector(broker, [f"{root}/+/alarm"], f"collector-crash-late-{time.monotonic_ns()}")
        try:
            assert late.wait(lambda: late.on("mill-02/alarm") and late.on("mill-02/alarm")[-1][1] == expected, 10), \
                f"mill-02's alarm did not come back as {expected}: {late.on('mill-02/alarm')}"
            got = time.time()
            assert daemon.events("alarms_announced_again")
            reconnected = back + reconnected_after(daemon, back)
            assert got - reconnected <= 1.0, f"the alarm came {got - reconnected:.2f} s after the monitor reconnected"
            assert not daemon.events("session_lost")  # the session was in the database
        finally:
            late.close()

    try:
        daemon.wait_online(collector)
        broker.save()  # the monitor's session; no alarm yet
        assert replay_cli(broker, model.archive_path, root).returncode == 0
        assert collector.wait(lambda: len(collector.on("/summary")) >= len(model.archive.cuts), 60)
        assert collector.wait(lambda: collector.on("mill-02/alarm"), 5)
        raised = collector.on("mill-02/alarm")[-1][1]
        assert raised["state"] == "alarm"
        crash_and_watch(raised)

        # a reset after the broker saved the alarm: the restored database says alarm, the monitor normal
        collector = Collector(broker, [f"{root}/#"], "collector-crash-2")
        broker.save()
        collector.client.publish(cmd_topic(root, "mill-02"), encode(Command("reset", "test", id="r1")), qos=1)
        assert collector.wait(lambda: collector.on("mill-02/alarm")[-1][1]["state"] == "normal", 10)
        cleared = collector.on("mill-02/alarm")[-1][1]
        crash_and_watch(cleared)
        assert daemon.running
    finally:
        daemon.kill()
        collector.close()
        broker.kill()


def test_a_retained_sensor_fault_is_not_a_wear_state():
    """The monitor resumes in the machine's wear state and shows it again; a fault that lasts is
    detected again from the windows."""
    from edge_monitor.core.alarm import AlarmPolicy, Thresholds
    from edge_monitor.service.state import restore_alarm_states

    fault = {"m1": AlarmMessage("m1", "sensor_fault", 9.0, "c", None, None, "model")}
    args = (lambda m: True, AlarmPolicy(), Thresholds(1.0, 2.0), lambda *a, **k: None)
    trackers, republish = restore_alarm_states({}, fault, *args)
    assert trackers["m1"].state.label == "normal" and republish == ["m1"]
    trackers, republish = restore_alarm_states({"m1": {"state": "alarm", "since": 5.0}}, fault, *args, checkpoint=True)
    assert trackers["m1"].state.label == "alarm" and republish == ["m1"]
    # no state file: the message carries the wear state underneath, and an alarm stays an alarm
    worn = {"m1": AlarmMessage("m1", "sensor_fault", 9.0, "c", None, None, "model", wear="alarm")}
    trackers, republish = restore_alarm_states({}, worn, *args)
    assert trackers["m1"].state.label == "alarm" and republish == ["m1"]
