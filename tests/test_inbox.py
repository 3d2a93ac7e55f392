"""The inbox against a real broker: inputs routed by subscription filter, unwatched machines refused
before their payload is decoded, the start-up read-back's own messages never taken for inputs."""

from __future__ import annotations

import json
import time

import pytest

from edge_monitor.archive.publisher import Publisher
from edge_monitor.core.inbound import DEFAULT_LIMITS, CutStart, SignalChunk
from edge_monitor.core.topics import Topics
from edge_monitor.service.inbox import Connected, Inbox, Received, Rejected
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client
from edge_monitor.service.state import read_retained_alarms

pytestmark = pytest.mark.timeout(60)


def unwatched(machine: str) -> str | None:
    return None if machine.startswith("mill-") else f"unknown machine {machine!r}"


def start_inbox(broker, root: str, instance: str):
    client = make_client(BrokerSettings(broker.host, broker.port, f"inbox-{instance}"), clean_start=True)
    topics = Topics(root, instance)
    inbox = Inbox(client, topics, DEFAULT_LIMITS, unwatched)
    client.on_connect = lambda c, u, flags, reason, p: inbox.subscribe(c, bool(flags.session_present))
    connect(client)
    return client, topics, inbox


def drain(inbox: Inbox, n: int, timeout: float = 10.0) -> list:
    items: list = []
    deadline = time.monotonic() + timeout
    while len(items) < n and time.monotonic() < deadline:
        more = inbox.take(0.1)
        inbox.done(more)
        items += more
    while more := inbox.take(0.3):  # anything beyond the n expected
        inbox.done(more)
        items += more
    return items


@pytest.mark.parametrize("instance", ["edge-1", "cut", "signal", "cmd"])
def test_inputs_are_routed_by_kind_and_unwatched_machines_are_not_decoded(broker, instance):
    client, topics, inbox = start_inbox(broker, "plant", instance)
    try:
        assert read_retained_alarms(client, topics, DEFAULT_LIMITS, lambda *a, **k: None) == {}
        pub = make_client(BrokerSettings(broker.host, broker.port, f"pub-{instance}"), clean_start=True)
        connect(pub)
        publisher = Publisher(pub)
        start = json.dumps({"event": "start", "cut": "c1", "ts": 1.0, "fs": 250.0}).encode()
        chunk = json.dumps({"cut": "c1", "offset": 0, "samples": [1.0, 2.0]}).encode()
        publisher.publish("plant/mill-01/cut", start)
        publisher.publish("plant/mill-01/signal/smcDC", chunk)
        publisher.publish("plant/lathe-1/signal/smcDC", b"not json at all")  # unwatched: not decoded
        publisher.publish("plant/mill-01/signal/smcDC", b"not json at all")
        publisher.publish("plant/mill-01/signal", chunk)  # wrong depth under a known kind
        assert publisher.wait_all(10)
        disconnect(pub)
        items = drain(inbox, 6)
    finally:
        disconnect(client)
    # the read-back's sync message (plant/_monitor/<instance>/sync) is never taken for an input,
    # even when the instance shares its name with an input kind
    assert isinstance(items[0], Connected)
    inputs = items[1:]
    assert [type(i) for i in inputs] == [Received, Received, Rejected, Rejected, Rejected]
    assert isinstance(inputs[0].message, CutStart) and inputs[0].where.kind == "cut"
    assert isinstance(inputs[1].message, SignalChunk) and inputs[1].where.channel == "smcDC"
    assert inputs[2].reason == "unknown machine 'lathe-1'"
    assert inputs[3].reason.startswith("payload is not JSON")
    assert "wrong topic depth for signal" in inputs[4].reason
    # where each was refused, and the subscription's kind: the labels of the metrics (service/metrics.py)
    assert [(i.stage, i.kind) for i in inputs[2:]] == [("unwatched_machine", "signal"), ("payload", "signal"),
                                                       ("topic", "signal")]


def test_the_errors_topic_echoes_a_bounded_part_of_a_bad_input(module_broker):
    from daemon_support import Collector

    from edge_monitor.service.config import ErrorsRate, OutputQos, Outputs
    from edge_monitor.service.outbox import MAX_REASON, MAX_TOPIC_ECHO, Outbox

    topics = Topics("t-clip", "i1")
    watcher = Collector(module_broker, [topics.errors], "collector-clip")
    sender = Collector(module_broker, [], "outbox-clip")
    try:
        outbox = Outbox(sender.client, topics, OutputQos(), ErrorsRate(), Outputs())
        assert outbox.error("t-clip/" + "x" * 60_000, "reason " + "y" * 5000)
        assert watcher.wait(lambda: watcher.on("/errors"), 5)
        body = watcher.on("/errors")[0][1]
        assert len(body["topic"]) == MAX_TOPIC_ECHO and body["topic"].endswith("…")
        assert len(body["reason"]) == MAX_REASON
        assert len(json.dumps(body)) < 1000
    finally:
        watcher.close()
        sender.close()


def test_scores_go_out_as_configured_and_a_reload_changes_how(module_broker):
    """``outputs.scores``: one message per window, a batch per machine, or none; the alarm goes out
    in every form, after the scores before it, with each form's QoS (``qos.score`` for both)."""
    from daemon_support import Collector

    from edge_monitor.core.outbound import AlarmMessage, ScoreMessage
    from edge_monitor.core.steps import Output
    from edge_monitor.service.config import ErrorsRate, OutputQos, Outputs
    from edge_monitor.service.outbox import Outbox

    topics = Topics("t-forms", "i1")
    watcher = Collector(module_broker, ["t-forms/#"], "collector-forms")  # subscribed at QoS 1
    qos: list[int] = []
    collect = watcher.client.on_message
    watcher.client.on_message = lambda c, u, m: (qos.append(m.qos), collect(c, u, m))
    sender = Collector(module_broker, [], "outbox-forms")
    scores = [Output("m1", ScoreMessage("c1", o, 1.0, 2.0, 1.0, {}, "normal", "mdl", 5.0)) for o in (0, 64, 128)]
    alarm = Output("m1", AlarmMessage("m1", "alarm", 1.0, "c1", 2.0, 1.5, "mdl"))
    try:
        outbox = Outbox(sender.client, topics, OutputQos(score=0), ErrorsRate(), Outputs("batch"))
        for form, expected in (("batch", ["scores", "alarm"]), ("off", ["alarm"]), ("window", ["score"] * 3 + ["alarm"])):
            if form != "batch":  # as a reload does
                outbox.configure(OutputQos(score=0), ErrorsRate(), Outputs(form))
            n = len(watcher.payloads)
            infos = outbox.publish([*scores, alarm])
            assert len(infos) == len(expected)
            assert watcher.wait(lambda: len(watcher.payloads) >= n + len(expected), 5), form
            assert [t.rsplit("/", 1)[-1] for t, _ in watcher.payloads[n:]] == expected, form
            assert qos[n:] == [0] * (len(expected) - 1) + [1], form  # qos.score for scores in either form
        batch = json.loads(watcher.payloads[0][1])
        assert [w["offset"] for w in batch["windows"]] == [0, 64, 128] and batch["cut"] == "c1"
    finally:
        watcher.close()
        sender.close()


# ------------------------------------------------------------------ backpressure, without a broker


def _chunk_message(offset: int):
    import paho.mqtt.client as paho

    message = paho.MQTTMessage(mid=offset + 1, topic=b"plant/mill-01/signal/smcDC")
    message.payload = json.dumps({"cut": "c1", "offset": offset, "samples": [1.0]}).encode()
    message.qos = 1
    return message


def _unconnected_inbox(max_queued: int):
    """An inbox on a client that never connects: its receivers are called as paho's thread would."""
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    inbox = Inbox(client, Topics("plant", "i1"), DEFAULT_LIMITS, unwatched, max_queued=max_queued)
    return client, inbox, inbox._receiver("signal")


def test_inputs_held_in_the_process_stay_within_the_bound_until_applied():
    """Room is given back when a batch is applied (done), not when it is taken: queued plus being
    applied never exceeds max_queued, and meanwhile input waits at the broker, which the lag shows."""
    import threading

    client, inbox, receive = _unconnected_inbox(max_queued=4)
    sent = threading.Event()

    def network_thread():
        for offset in range(20):
            receive(client, None, _chunk_message(offset))
        sent.set()

    threading.Thread(target=network_thread, daemon=True).start()
    got, lags = [], []
    while len(got) < 20:
        batch = inbox.take(1.0)
        time.sleep(0.05)  # applying is slower than the input comes: the producer waits
        assert len(batch) + inbox.qsize() <= 4
        lags.append(inbox.lag(time.monotonic()))
        inbox.done(batch)
        got += batch
    assert sent.wait(2)
    assert [i.message.offset for i in got] == list(range(20))  # in order, none lost
    # input waited for room all along: the lag grows across take/done cycles instead of restarting
    assert lags[-2] > lags[1] + 0.1, lags
    assert inbox.lag(time.monotonic()) == 0.0  # drained: caught up


def test_closing_releases_a_network_thread_waiting_for_room_without_queueing_its_input():
    import threading

    client, inbox, receive = _unconnected_inbox(max_queued=1)
    receive(client, None, _chunk_message(0))
    waiting = threading.Thread(target=receive, args=(client, None, _chunk_message(1)), daemon=True)
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive()  # no room
    inbox.close()
    waiting.join(1)
    assert not waiting.is_alive()
    assert [i.message.offset for i in inbox.take(0)] == [0]  # the second stays at the broker
