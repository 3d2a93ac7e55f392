"""The epochs of checkpoint-then-acknowledge, against a real broker: inputs are acknowledged only
after the results of their epoch are with the broker and the snapshot is written; a snapshot that
cannot be written holds every acknowledgement back; inputs of an earlier connection are forgotten."""

from __future__ import annotations

import threading
import time

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
