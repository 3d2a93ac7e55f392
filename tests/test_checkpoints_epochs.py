"""The epochs of checkpoint-then-acknowledge, against a real broker: inputs are acknowledged only
after the results of their epoch are with the broker and the snapshot is written; a snapshot that
cannot be written holds every acknowledgement back; inputs of an earlier connection are forgotten;
with checkpoint groups a machine's inputs wait for its group's snapshot, and the state file keeps
every machine as of its own last one."""

from __future__ import annotations

import threading
import time

import numpy as np
from daemon_support import Collector

from edge_monitor.service.checkpoint import Checkpoints
from edge_monitor.service.inbox import Delivery


def test_acknowledged_after_results_and_snapshot(module_broker):
    collector = Collector(module_broker, [], "epochs-1")
    client = collector.client
    checkpoints = Checkpoints(client)
    sent = []
    client.ack = lambda mid, qos: sent.append(mid)  # which packet ids it acknowledges, and when
    checkpoints.applied(Delivery(11, 1, False, 1))
    checkpoints.applied(Delivery(0, 0, False, 1))  # QoS 0: nothing to acknowledge
    checkpoints.published([client.publish("t-epochs/a", b"x", qos=1) for _ in range(50)])
    checkpoints.close("snapshot-1")
    checkpoints.applied(Delivery(12, 1, True, 0))  # came on an earlier connection
    checkpoints.close("snapshot-2")
    written: list[str] = []

    def fail(text):
        raise OSError("disk full")

    deadline = time.monotonic() + 5
    while checkpoints.waiting and time.monotonic() < deadline:
        try:
            checkpoints.confirm(lambda: 1, threading.Lock(), fail)
        except OSError:
            break
        time.sleep(0.01)
    assert sent == [] and checkpoints.unacknowledged == 2  # nothing acknowledged without the file
    progress = checkpoints.confirm(lambda: 1, threading.Lock(), written.append)
    assert written == [["snapshot-1", "snapshot-2"]]  # every snapshot since the last write, in order
    assert checkpoints.idle
    assert sent == [11] and progress.acknowledged == 1 and progress.forgotten == 1
    assert checkpoints.unacknowledged == 0 and not checkpoints.waiting
    collector.close()


def test_the_writer_thread_writes_in_order_retries_a_failed_write_and_then_acknowledges(module_broker, tmp_path):
    from edge_monitor.service.checkpoint_writer import CheckpointWriter

    collector = Collector(module_broker, [], "epochs-writer")
    client = collector.client
    checkpoints = Checkpoints(client)
    sent, errors, progress = [], [], []
    client.ack = lambda mid, qos: sent.append(mid)
    attempts: list[list[str]] = []

    class Encoder:  # fails its first write, like a full disk that is then cleared
        def write(self, snapshots):
            attempts.append(list(snapshots))
            if len(attempts) == 1:
                raise OSError("disk full")

    writer = CheckpointWriter(checkpoints, Encoder(), lambda: 1, threading.Lock(), progress.append,
                              errors.append).start()
    try:
        checkpoints.applied(Delivery(21, 1, False, 1))
        checkpoints.published([client.publish("t-writer/a", b"x", qos=1)])
        checkpoints.close("s1")
        writer.wake()
        checkpoints.applied(Delivery(22, 1, False, 1))
        checkpoints.close("s2")
        writer.wake()
        assert writer.flush(time.monotonic() + 10)
    finally:
        writer.stop()
    assert [str(e) for e in errors] == ["disk full"] and sent == [21, 22]
    assert attempts[-1] == ["s1", "s2"]  # the failed snapshot again, then the newer one, in order
    assert sum(p.acknowledged for p in progress) == 2 and checkpoints.unacknowledged == 0
    assert writer.failure is None
    collector.close()


def test_with_checkpoint_groups_a_machines_inputs_wait_for_its_own_snapshot_and_go_in_order(module_broker):
    collector = Collector(module_broker, [], "epochs-groups")
    client = collector.client
    checkpoints = Checkpoints(client)
    sent = []
    client.ack = lambda mid, qos: sent.append(mid)

    def confirm():
        deadline = time.monotonic() + 5
        while checkpoints.waiting and time.monotonic() < deadline:
            checkpoints.confirm(lambda: 1, threading.Lock(), written.append)
            time.sleep(0.01)

    written: list = []
    checkpoints.applied(Delivery(30, 1, False, 1), "m1")
    checkpoints.applied(Delivery(31, 1, False, 1), "m2")
    checkpoints.applied(Delivery(32, 1, False, 1))  # refused before reaching a machine
    checkpoints.applied(Delivery(33, 1, False, 1), "m1")
    assert checkpoints.holding() and checkpoints.unacknowledged == 4
    checkpoints.close("group of m1", frozenset({"m1", "m3"}))
    confirm()
    # m1's first input goes; the rest waits behind m2's, which waits for m2's snapshot: MQTT wants
    # the acknowledgements in the order the inputs came
    assert written == [["group of m1"]] and sent == [30]
    assert checkpoints.holding() and checkpoints.unacknowledged == 3
    checkpoints.applied(Delivery(34, 1, False, 1), "m1")
    checkpoints.close("group of m2", frozenset({"m2"}))
    confirm()
    assert sent == [30, 31, 32, 33] and checkpoints.unacknowledged == 1  # m1's newest waits for m1
    checkpoints.applied(Delivery(35, 1, False, 1), "m2")
    checkpoints.close("every machine", None)
    confirm()
    assert sent == [30, 31, 32, 33, 34, 35] and not checkpoints.holding() and checkpoints.unacknowledged == 0
    collector.close()


def test_the_state_file_keeps_each_machine_as_of_its_groups_last_snapshot(tmp_path):
    from edge_monitor.service.checkpoint_writer import SnapshotEncoder, SnapshotJob
    from edge_monitor.service.state import StateFile

    state_file = StateFile(tmp_path / "state.json")
    encoder = SnapshotEncoder(state_file)

    def job(streams, live, alarms, group):
        return SnapshotJob({m: {"n": np.arange(n)} for m, n in streams.items()}, frozenset(live),
                           {m: {"state": s} for m, s in alarms.items()}, "model", None, "", None, group)

    def contents():
        saved = state_file.read("model")
        return {m: len(s["n"]) for m, s in saved.streams.items()}, {m: a["state"] for m, a in saved.alarms.items()}

    encoder.write([job({"a": 1, "b": 1, "c": 1}, "abc", {"a": "normal", "b": "normal", "c": "normal", "d": "alarm"}, None)])
    assert contents() == ({"a": 1, "b": 1, "c": 1}, {"a": "normal", "b": "normal", "c": "normal", "d": "alarm"})
    # a group of a and b: a changed, b's cut ended (no pipeline, its alarm state stays); c and d as they were
    encoder.write([job({"a": 2}, "ac", {"a": "warning", "b": "alarm"}, frozenset("ab"))])
    assert contents() == ({"a": 2, "c": 1}, {"a": "warning", "b": "alarm", "c": "normal", "d": "alarm"})
    # c's group: c left memory with its state forgotten (a pipeline discarded), though a is not live now either
    encoder.write([job({}, "", {}, frozenset("cd")), job({"a": 3}, "a", {"a": "alarm"}, frozenset("a"))])
    assert contents() == ({"a": 3}, {"a": "alarm", "b": "alarm"})


def test_checkpoint_groups_take_every_machine_first_then_each_group_in_turn():
    from edge_monitor.service.checkpoint import CheckpointGroups

    machines = [f"mill-{i:03d}" for i in range(300)]
    groups = CheckpointGroups(4, lambda: iter(machines))
    assert groups.next() is None  # the first: every machine (the state file must hold them all)
    turns = [groups.next() for _ in range(8)]
    assert turns[:4] == turns[4:] and set().union(*turns[:4]) == set(machines)
    assert all(not (a & b) for i, a in enumerate(turns[:4]) for b in turns[i + 1 : 4])
    assert all(50 <= len(t) <= 100 for t in turns[:4])  # spread about evenly: 75 each
    groups.whole()  # a reload
    assert groups.next() is None and groups.next() == turns[0]
    assert CheckpointGroups(1, lambda: iter(machines)).next() is None
