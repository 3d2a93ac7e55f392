"""Every kind of bad input from the issue, sent while machines stream: each gets a reason on the
errors topic and in the log, the daemon stays up, and the machines' results equal those of
machines that streamed the same cuts cleanly at the same time."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from daemon_support import Collector, Daemon, machine_of, model_fixture

from edge_monitor.archive.publisher import Publisher
from edge_monitor.archive.replay import cut_messages
from edge_monitor.core.ratelimit import TokenBucket
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client

ROOT = "t-bad"
INSTANCE = "bad"
CLEAN, DIRTY = ("c1", "c2"), ("d1", "d2")
CHUNK = 200


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def bad_inputs(machine: str, open_cut: str) -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason) sent while ``open_cut`` streams on ``machine``."""
    r = f"{ROOT}/{machine}"
    sig = f"{r}/signal/smcAC"

    def chunk(**fields) -> bytes:
        return json.dumps({"cut": open_cut, "offset": 0, "samples": [1.0], **fields}).encode()

    big = b'{"cut": "%s", "offset": 0, "samples": [' % open_cut.encode() + b"0.0," * 300_000 + b"0.0]}"
    return [
        (sig, b"not json", "payload is not JSON"),
        (sig, b"\xff\xfe{}", "payload is not UTF-8"),
        (sig, b"[1, 2]", "payload must be a JSON object, got an array"),
        (sig, b"", "payload is empty"),
        (sig, chunk(cut=5), "cut must be a string, got a number"),
        (sig, chunk(offset="0"), "offset must be an integer, got a string"),
        (sig, b'{"cut": "%s", "offset": 0, "samples": [NaN]}' % open_cut.encode(), "payload holds NaN"),
        (sig, b'{"cut": "%s", "offset": 0, "samples": [1, Infinity]}' % open_cut.encode(), "payload holds Infinity"),
        (sig, b'{"cut": "%s", "offset": 0, "samples": [1e999]}' % open_cut.encode(),
         "samples[0] is not a finite number"),
        (sig, chunk(samples=[1.0, "x"]), "samples[1] is not a number (got a string)"),
        (sig, chunk(samples=[None]), "samples[0] is not a number (got null)"),
        (sig, chunk(samples=[]), "samples is empty"),
        (sig, chunk(samples=[0.5] * 5000), "samples has 5000 values, over the limit of 4096 per chunk"),
        (sig, chunk(offset=-1), "offset must not be negative, got -1"),
        (sig, chunk(offset=3.0), "offset must be an integer, got the fractional-typed number 3.0"),
        (sig, chunk(offset=2_000_000), "offset 2000000 is absurd"),
        (sig, chunk(cut="ghost"), "chunk for cut 'ghost', which never started"),
        (f"{r}/signal/smcXX", chunk(), "unknown channel 'smcXX'"),
        (f"{ROOT}/zz9/signal/smcAC", chunk(), "unknown machine 'zz9'"),
        (f"{r}/signal", chunk(), "wrong topic depth for signal"),
        (f"{r}/cut/extra", chunk(), "wrong topic depth for cut"),
        (f"{sig}/extra", chunk(), "wrong topic depth for signal"),
        (sig, big, f"payload of {len(big)} bytes is over the limit of 1048576 bytes"),
        (f"{r}/cut", b'{"event": "start", "cut": "has space", "ts": 1, "fs": 250.0}', "cut id 'has space' is not"),
        (f"{r}/cut", b'{"event": "start", "cut": "fast", "ts": 1, "fs": 500.0}', "has fs 500 Hz but the model"),
        (f"{r}/cut", b'{"event": "pause", "cut": "x", "ts": 1}', 'event must be "start" or "end"'),
        (f"{r}/cut", b'{"event": "end", "cut": "ghost", "ts": 1, "samples": 10}',
         "end for cut 'ghost', which never started"),
        (f"{r}/cmd", b'{"cmd": "explode", "by": "x"}', "unknown cmd 'explode'"),
    ]


def ended_chunk(machine: str, ended_cut: str) -> tuple[str, bytes, str]:
    payload = json.dumps({"cut": ended_cut, "offset": 9000, "samples": [1.0]}).encode()
    return f"{ROOT}/{machine}/signal/vib_table", payload, f"chunk for cut '{ended_cut}', which already ended"


@pytest.fixture(scope="module")
def run(module_broker, model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad-input")
    collector = Collector(module_broker, [f"{ROOT}/#"], "collector-bad")
    daemon = Daemon(
        workdir, module_broker, model.bundle, ROOT, INSTANCE,
        "machines: [c1, c2, d1, d2]\nstatus_interval_s: 1\nerrors:\n  max_per_second: 1000\n  burst: 1000\n",
    ).start()
    cuts = {c.cut_id: c for c in model.archive.cuts}
    plan = {0: ["c13-r01", "c13-r15"], 1: ["c11-r01", "c13-r06"]}
    rng = np.random.default_rng(0)
    streams, expected_errors = {}, []
    for i, (clean, dirty) in enumerate(zip(CLEAN, DIRTY)):
        first, second = plan[i]
        msgs = [cut_messages(ROOT, m, cuts[c], chunk=CHUNK, ts=1000.0 * (k + 1))
                for m in (clean, dirty) for k, c in enumerate((first, second))]
        streams[clean] = msgs[0] + msgs[1]
        a, b = msgs[2], msgs[3]
        bad = bad_inputs(dirty, first)
        # scattered through the first cut (after its start), one redelivered chunk as QoS 1 may do
        body = [(t, p) for t, p in a]
        for topic, payload, reason in bad:
            body.insert(int(rng.integers(1, len(body) - 1)), (topic, payload))
            expected_errors.append((topic, reason))
        body.insert(len(body) // 2, a[7])  # a duplicate: counted, not an error
        late = ended_chunk(dirty, first)
        expected_errors.append(late[:1] + late[2:])
        streams[dirty] = body + [late[:2]] + b
    client = make_client(BrokerSettings(module_broker.host, module_broker.port, client_id="pub-bad"), clean_start=True)
    try:
        daemon.wait_online(collector)
        connect(client)
        publisher = Publisher(client)
        queues = [collections.deque(s) for s in streams.values()]
        while any(queues):  # the four machines interleaved, one message each in turn
            for q in queues:
                if q:
                    publisher.publish(*q.popleft())
        assert publisher.wait_all(30)
        n_cuts = 8
        if not collector.wait(lambda: len(collector.on("/summary")) >= n_cuts, 60):
            daemon.fail(f"expected {n_cuts} summaries, got {len(collector.on('/summary'))}")
        errors_topic = f"{ROOT}/_monitor/{INSTANCE}/errors"
        collector.wait(lambda: len(collector.on(errors_topic)) >= len(expected_errors), 10)
        yield collector, daemon, expected_errors
    finally:
        disconnect(client)
        daemon.kill()
        collector.close()


def results(collector: Collector, machine: str, suffix: str) -> list[dict]:
    return [b for t, b in collector.on(suffix) if machine_of(t, ROOT) == machine]


def test_every_bad_input_is_reported_on_the_errors_topic(run):
    collector, _, expected = run
    got = [(b["topic"], b["reason"]) for _, b in collector.on(f"{ROOT}/_monitor/{INSTANCE}/errors")]
    assert len(got) == len(expected)
    unmatched = list(got)
    for topic, reason in expected:
        match = next((g for g in unmatched if g[0] == topic and reason in g[1]), None)
        assert match is not None, f"no error for {topic}: {reason!r}"
        unmatched.remove(match)


def test_every_bad_input_is_logged_with_its_reason(run):
    _, daemon, expected = run
    logged = daemon.events("rejected")
    assert len(logged) == len(expected)
    assert all(e["reason"] and e["topic"] and e["level"] == "warning" for e in logged)


def test_the_daemon_stays_up_and_counts(run):
    collector, daemon, expected = run
    assert daemon.running
    topic = f"{ROOT}/_monitor/{INSTANCE}/status"
    assert collector.wait(lambda: collector.on(topic)[-1][1].get("counters", {}).get("rejected") == len(expected), 5)
    status = collector.on(topic)[-1][1]
    assert status["state"] == "online"
    assert status["counters"]["duplicate_samples"] == 2 * CHUNK  # the redelivered chunk, once per dirty machine


@pytest.mark.parametrize("clean, dirty", list(zip(CLEAN, DIRTY)))
def test_results_equal_those_of_a_clean_run(run, clean, dirty):
    collector, _, _ = run
    want = {(b["cut"], b["offset"]): b for b in results(collector, clean, "/score")}
    got = {(b["cut"], b["offset"]): b for b in results(collector, dirty, "/score")}
    assert want and len(got) == len(results(collector, dirty, "/score"))  # none twice
    assert set(got) == set(want)
    for key, body in got.items():
        for name in ("recon", "kl", "score"):
            assert body[name] == pytest.approx(want[key][name], rel=1e-4, abs=1e-6)
        assert body["level"] == want[key]["level"]

    def summary(b: dict) -> tuple:
        return b["cut"], b["windows"], b["skipped"], b["stable"], b["level"]

    assert [summary(b) for b in results(collector, dirty, "/summary")] == [
        summary(b) for b in results(collector, clean, "/summary")
    ]
    assert [b["state"] for b in results(collector, dirty, "/alarm")] == [
        b["state"] for b in results(collector, clean, "/alarm")
    ]


def test_errors_topic_rate_limit():
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]  # the burst
    assert bucket.allow(0.4) is False and bucket.allow(0.5) is True  # then 2 per second
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]  # refills to the burst only


def test_the_number_of_machines_is_bounded(module_broker, model, tmp_path):
    """With ``machines: "*"`` a publisher inventing machine ids cannot make the monitor track
    (and hold memory for) ever more machines: past ``limits.max_machines`` inputs are rejected."""
    instance = "capped"
    collector = Collector(module_broker, [f"{ROOT}/_monitor/{instance}/#"], "collector-capped")
    daemon = Daemon(tmp_path, module_broker, model.bundle, ROOT, instance,
                    "machines: '*'\nlimits:\n  max_machines: 2\n").start()
    client = make_client(BrokerSettings(module_broker.host, module_broker.port, client_id="pub-capped"),
                         clean_start=True)
    try:
        daemon.wait_online(collector)
        connect(client)
        publisher = Publisher(client)
        start = {"event": "start", "cut": "k1", "ts": 1.0, "fs": 250.0}
        for machine in ("m1", "m2", "m3"):
            publisher.publish(f"{ROOT}/{machine}/cut", json.dumps(start).encode())
        assert publisher.wait_all(10)
        errors = f"{ROOT}/_monitor/{instance}/errors"
        assert collector.wait(lambda: collector.on(errors), 10), "no rejection reported"
        (topic, body), = collector.on(errors)
        assert topic == errors and body["topic"] == f"{ROOT}/m3/cut"
        assert "too many machines" in body["reason"] and "limits.max_machines" in body["reason"]
        assert daemon.running
    finally:
        disconnect(client)
        collector.close()
        daemon.terminate()
