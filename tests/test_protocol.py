"""Wire protocol v1: topics, strict inbound parsing (every bad input of issue 3 with its reason),
outbound encoding."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from paho.mqtt.client import topic_matches_sub

from edge_monitor.core import inbound, outbound, topics
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.topics import ProtocolError

ROOT = "mill"


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def chunk(**over) -> bytes:
    msg = {"cut": "c01-r01", "offset": 0, "samples": [1.0, 2.5, -3]}
    msg.update(over)
    return js(msg)


def start(**over) -> bytes:
    msg = {"event": "start", "cut": "c01-r01", "ts": 1700000000.5, "fs": 250.0,
           "params": {"doc": 1.5, "feed": 0.5, "material": "cast_iron"}}
    msg.update(over)
    return js(msg)


def end(**over) -> bytes:
    msg = {"event": "end", "cut": "c01-r01", "ts": 1700000036, "samples": 9000}
    msg.update(over)
    return js(msg)


def rejects(fn, payload, reason: str, **kw) -> None:
    with pytest.raises(ProtocolError) as info:
        fn(payload, **kw)
    assert reason in info.value.reason, info.value.reason
    assert info.value.reason == str(info.value)
    assert len(info.value.reason) < 160  # short enough for a log line and the errors topic


# ------------------------------------------------------------------------------------ topics


def test_parse_topic_kinds():
    assert topics.parse_topic(ROOT, "mill/m1/cut") == topics.InboundTopic("m1", "cut")
    assert topics.parse_topic(ROOT, "mill/m1/cmd") == topics.InboundTopic("m1", "cmd")
    for ch in CHANNELS:
        assert topics.parse_topic(ROOT, f"mill/Lathe_2-b/signal/{ch}") == topics.InboundTopic("Lathe_2-b", "signal", ch)
    assert topics.parse_topic("plant1/mill", "plant1/mill/m1/cut").machine == "m1"


@pytest.mark.parametrize(
    "topic, reason",
    [
        ("other/m1/cut", "not under the root 'mill'"),
        ("millx/m1/cut", "not under the root"),
        ("mill", "not under the root"),
        ("mill/m1", "nothing after the machine id"),
        ("mill/m1/signal", "wrong topic depth for signal: expected R/<machine>/signal/<channel>"),
        ("mill/m1/signal/smcAC/extra", "wrong topic depth for signal"),
        ("mill/m1/cut/extra", "wrong topic depth for cut: expected R/<machine>/cut"),
        ("mill/m1/cmd/x/y", "wrong topic depth for cmd"),
        ("mill/m1/score", "unknown topic kind 'score'"),
        ("mill/m1/", "unknown topic kind ''"),
        ("mill/m1/signal/smcXX", "unknown channel 'smcXX'; expected one of smcAC, smcDC"),
        ("mill/m1/signal/", "unknown channel ''"),
        ("mill/bad id/cut", "machine id 'bad id' is not 1-64 characters"),
        ("mill//cut", "machine id '' is not"),
        ("mill/" + "m" * 65 + "/cut", "is not 1-64 characters"),
        ("mill/mäschine/cut", "is not 1-64 characters"),
        ("mill/m.1/cut", "is not 1-64 characters"),
        ("mill/_monitor/cut", "reserved for the monitor's own topics"),
    ],
)
def test_parse_topic_rejects(topic, reason):
    with pytest.raises(ProtocolError) as info:
        topics.parse_topic(ROOT, topic)
    assert reason in info.value.reason


def test_machine_id_limits():
    assert topics.parse_topic(ROOT, "mill/" + "m" * 64 + "/cut").machine == "m" * 64
    # Reasons echo what was sent, cut short.
    with pytest.raises(ProtocolError) as info:
        topics.parse_topic(ROOT, "mill/" + "x y" * 500 + "/cut")
    assert len(info.value.reason) < 120


def test_topic_builders():
    assert topics.cut_topic(ROOT, "m1") == "mill/m1/cut"
    assert topics.signal_topic(ROOT, "m1", "AE_table") == "mill/m1/signal/AE_table"
    assert topics.cmd_topic(ROOT, "m1") == "mill/m1/cmd"
    assert topics.frame_topic(ROOT, "m1") == "mill/m1/frame"
    assert topics.machine_topic(ROOT, "m1", "score") == "mill/m1/score"
    assert topics.monitor_topic(ROOT, "edge-1", "status") == "mill/_monitor/edge-1/status"
    assert topics.alarm_filter(ROOT) == "mill/+/alarm"
    mine = topics.Topics(ROOT, "edge-1")
    assert (mine.status, mine.errors, mine.sync) == tuple(f"mill/_monitor/edge-1/{leaf}" for leaf in ("status", "errors", "sync"))
    assert mine.machine("m1", "summary") == "mill/m1/summary" and mine.alarms == "mill/+/alarm"
    assert mine.inputs == {"cut": "mill/+/cut/#", "signal": "mill/+/signal/#", "frame": "mill/+/frame/#",
                           "cmd": "mill/+/cmd/#"}
    assert mine.statuses == "mill/_monitor/+/status"
    for bad in (lambda: topics.cut_topic(ROOT, "a/b"), lambda: topics.signal_topic(ROOT, "m1", "x"),
                lambda: topics.machine_topic(ROOT, "_monitor", "score"), lambda: topics.Topics(ROOT, "a b"),
                lambda: topics.Topics(ROOT, "_monitor"), lambda: topics.monitor_topic(ROOT, "a/b", "status"),
                lambda: topics.cut_topic("mill/", "m1"), lambda: topics.cut_topic("mill/+", "m1"),
                lambda: topics.cut_topic("", "m1")):
        with pytest.raises(ValueError):
            bad()


def test_inbound_filters_catch_inputs_and_wrong_depths_but_not_outputs():
    filters = topics.inbound_filters(ROOT)

    def caught(topic):
        return any(topic_matches_sub(f, topic) for f in filters)

    for topic in ("mill/m1/cut", "mill/m1/cmd", "mill/m1/signal/smcAC",
                  "mill/m1/signal", "mill/m1/signal/a/b", "mill/m1/cut/x"):
        assert caught(topic), topic
    for topic in ("mill/m1/score", "mill/m1/alarm", "mill/m1/summary",
                  topics.Topics(ROOT, "i").status, topics.Topics(ROOT, "i").errors, "other/m1/cut"):
        assert not caught(topic), topic


# ---------------------------------------------------------------------------- good payloads


def test_parse_cut_start_and_end():
    s = inbound.parse_cut_event(start())
    assert s == inbound.CutStart("c01-r01", 1700000000.5, 250.0, inbound.CutParams(1.5, 0.5, "cast_iron"))
    assert inbound.parse_cut_event(start(params=None)).params is None
    no_params = json.loads(start())
    del no_params["params"]
    assert inbound.parse_cut_event(js(no_params)).params is None
    e = inbound.parse_cut_event(end())
    assert e == inbound.CutEnd("c01-r01", 1700000036.0, 9000)
    assert inbound.parse_cut_event(end(samples=0)).samples == 0


def test_unknown_keys_are_ignored_for_forward_compatibility():
    s = inbound.parse_cut_event(start(operator="ann", params={"doc": 1, "feed": 0.25, "material": "steel", "tool": "T7"}))
    assert s.params == inbound.CutParams(1.0, 0.25, "steel")
    c = inbound.parse_signal(chunk(unit="A", seq=17))
    assert c.samples.tolist() == [1.0, 2.5, -3.0]
    assert inbound.parse_command(js({"cmd": "reset", "by": "ann", "note": "insert 3 chipped"})) == inbound.Command("reset", "ann")


def test_parse_signal_types():
    c = inbound.parse_signal(chunk(offset=4096, samples=[1, 2, 3.25, -1e300]))
    assert c.offset == 4096 and type(c.offset) is int
    assert c.samples.dtype == np.float64 and c.samples.tolist() == [1.0, 2.0, 3.25, -1e300]
    assert not c.samples.flags.writeable
    assert inbound.parse_signal(chunk(samples=[0.0] * 4096)).samples.size == 4096


def test_cut_id_alphabet():
    for good in ("c01-r01", "a", "x" * 64, "2024-05-01T10:00:00+02:00", "job.42_op:3",
                 "550e8400-e29b-41d4-a716-446655440000"):
        assert inbound.parse_signal(chunk(cut=good)).cut == good


def parse_message(topic: str, payload: bytes):
    """What the monitor's inbox does with one input: the topic, then its kind's payload parser."""
    where = topics.parse_topic(ROOT, topic)
    return where, inbound.PAYLOAD_PARSERS[where.kind](payload)


def test_each_input_kind_has_its_payload_parser():
    assert set(inbound.PAYLOAD_PARSERS) == set(topics.INBOUND_KINDS)
    where, message = parse_message("mill/m1/signal/smcDC", chunk())
    assert where.channel == "smcDC" and isinstance(message, inbound.SignalChunk)
    assert isinstance(parse_message("mill/m1/cut", end())[1], inbound.CutEnd)
    assert isinstance(parse_message("mill/m1/cmd", js({"cmd": "reset", "by": "x"}))[1], inbound.Command)
    with pytest.raises(ProtocolError, match="missing key 'event'"):
        parse_message("mill/m1/cut", chunk())  # a chunk sent to the cut topic
    with pytest.raises(ProtocolError, match="unknown channel"):
        parse_message("mill/m1/signal/nope", chunk())


def test_inbound_round_trip_is_exact():
    rng = np.random.default_rng(1)
    x = rng.normal(size=4096) * 1e3
    c = inbound.parse_signal(outbound.encode(inbound.SignalChunk("c", 123, x)))
    assert c.offset == 123 and np.array_equal(c.samples, x)  # bit for bit: windows match training
    s = inbound.CutStart("c", 1.5, 250.0, inbound.CutParams(0.75, 0.25, "steel"))
    assert inbound.parse_cut_event(outbound.encode(s)) == s
    e = inbound.CutEnd("c", 2.0, 9000)
    assert inbound.parse_cut_event(outbound.encode(e)) == e
    cmd = inbound.Command("reset", "operator 7")
    assert inbound.parse_command(outbound.encode(cmd)) == cmd
    with_id = inbound.Command("reset", "ann", "job-17-tool-3")
    assert inbound.parse_command(outbound.encode(with_id)) == with_id


# ------------------------------------------------------------------- bad input, one by one


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "payload is empty"),
        (b"not json", "payload is not JSON: Expecting value at line 1 column 1"),
        (b'{"cut": "a", ', "payload is not JSON"),
        (b'{"cut": "a"} x', "payload is not JSON: Extra data"),
        (b"\xff\xfe{}", "payload is not UTF-8 (bad byte at position 0)"),
        ('{"cut": "é"}'.encode("latin-1"), "payload is not UTF-8"),
        ('{"cut": "a"}'.encode("utf-16"), "payload is not UTF-8"),
        (b"\xef\xbb\xbf{}", "payload is not JSON: Unexpected UTF-8 BOM"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"offset": ' + b"9" * 5000 + b"}", "a number has too many digits"),
        (b"[1, 2]", "payload must be a JSON object, got an array"),
        (b'"chunk"', "payload must be a JSON object, got a string"),
        (b"42", "payload must be a JSON object, got a number"),
        (b"null", "payload must be a JSON object, got null"),
        (b'{"cut": "a", "cut": "b", "offset": 0, "samples": [1]}', "key 'cut' appears twice"),
    ],
)
def test_not_json_or_not_an_object(payload, reason):
    rejects(inbound.parse_signal, payload, reason)


def test_size_limit_is_checked_before_decoding():
    big = js({"cut": "a", "offset": 0, "samples": [0.5] * 300_000})
    assert len(big) > 1 << 20
    rejects(inbound.parse_signal, big, f"payload of {len(big)} bytes is over the limit of 1048576 bytes")
    # Even garbage that would fail to decode gets the size reason: nothing was decoded.
    rejects(inbound.parse_signal, b"\xff" * ((1 << 20) + 1), "over the limit of 1048576 bytes")
    rejects(inbound.parse_cut_event, b" " * ((1 << 20) + 1), "over the limit")
    small = inbound.Limits(max_payload_bytes=64)
    rejects(inbound.parse_signal, chunk(samples=[1.0] * 20), "over the limit of 64 bytes", limits=small)
    assert inbound.parse_signal(bytearray(chunk())).cut == "c01-r01"  # bytes-like payloads are fine
    with pytest.raises(TypeError):
        inbound.parse_signal('{"cut": "a"}')  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "samples, reason",
    [
        ("NaN", "payload holds NaN, which is not valid JSON"),
        ("[1.0, NaN]", "payload holds NaN"),
        ("[Infinity]", "payload holds Infinity"),
        ("[1, -Infinity]", "payload holds -Infinity"),
        ("[1.0, 2.0, 1e999]", "samples[2] is not a finite number"),
        ("[-1e400]", "samples[0] is not a finite number"),
        ("[1, " + "9" * 400 + "]", "samples[1] is not a finite number"),
        ('[1.0, "2.0"]', "samples[1] is not a number (got a string)"),
        ("[null]", "samples[0] is not a number (got null)"),
        ("[1, true]", "samples[1] is not a number (got a boolean)"),
        ("[false]", "samples[0] is not a number (got a boolean)"),
        ("[1, [2]]", "samples[1] is not a number (got an array)"),
        ("[{}]", "samples[0] is not a number (got an object)"),
        ("[]", "samples is empty"),
        ('"1,2,3"', "samples must be an array of numbers, got a string"),
        ('{"0": 1}', "samples must be an array of numbers, got an object"),
        ("null", "samples must be an array of numbers, got null"),
        ("3.5", "samples must be an array of numbers, got a number"),
    ],
)
def test_bad_samples(samples, reason):
    payload = ('{"cut": "c1", "offset": 0, "samples": %s}' % samples).encode()
    rejects(inbound.parse_signal, payload, reason)


def test_oversized_sample_arrays():
    rejects(inbound.parse_signal, chunk(samples=[0.0] * 4097), "samples has 4097 values, over the limit of 4096 per chunk")
    limits = inbound.Limits(max_chunk=10)
    rejects(inbound.parse_signal, chunk(samples=[0.0] * 11), "over the limit of 10 per chunk", limits=limits)
    assert inbound.parse_signal(chunk(samples=[0.0] * 10), limits=limits).samples.size == 10


@pytest.mark.parametrize(
    "offset, reason",
    [
        (-1, "offset must not be negative, got -1"),
        (3.0, "offset must be an integer, got the fractional-typed number 3.0"),
        (3.5, "offset must be an integer, got the fractional-typed number 3.5"),
        (1e3, "fractional-typed"),
        ("3", "offset must be an integer, got a string"),
        (True, "offset must be an integer, got a boolean"),
        (None, "offset must be an integer, got null"),
        ([3], "offset must be an integer, got an array"),
        (10**12, "offset 1000000000000 is absurd"),
        (999_999, "offset 999999 is absurd: the chunk would end past the limit of 1000000"),
    ],
)
def test_bad_offsets(offset, reason):
    rejects(inbound.parse_signal, chunk(offset=offset), reason)


def test_offset_limit_is_configurable():
    assert inbound.parse_signal(chunk(offset=999_997)).offset == 999_997  # ends exactly at the limit
    rejects(inbound.parse_signal, chunk(offset=98), "is absurd", limits=inbound.Limits(max_cut_samples=100))


@pytest.mark.parametrize(
    "cut, reason",
    [
        ("", "cut id '' is not 1-64 characters of A-Z a-z 0-9 _ . : + -"),
        ("x" * 65, "is not 1-64 characters"),
        ("has space", "cut id 'has space' is not"),
        ("a/b", "is not 1-64"),
        ("a#", "is not 1-64"),
        ("naïve", "is not 1-64"),
        ("tab\t", "is not 1-64"),
        ("nl\n", "is not 1-64"),
        (17, "cut must be a string, got a number"),
        (None, "cut must be a string, got null"),
        (["c1"], "cut must be a string, got an array"),
    ],
)
def test_bad_cut_ids(cut, reason):
    rejects(inbound.parse_cut_event, start(cut=cut), reason)  # a cut start with a bad id
    rejects(inbound.parse_cut_event, end(cut=cut), reason)
    rejects(inbound.parse_signal, chunk(cut=cut), reason)


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"event": "begin"}, "event must be \"start\" or \"end\", got 'begin'"),
        ({"event": None}, "event must be"),
        ({"ts": "now"}, "ts must be a number, got a string"),
        ({"ts": True}, "ts must be a number, got a boolean"),
        ({"ts": -5}, "ts must be unix seconds (not negative)"),
        ({"fs": 0}, "fs must be positive, got 0"),
        ({"fs": -250.0}, "fs must be positive"),
        ({"fs": "250"}, "fs must be a number, got a string"),
        ({"fs": False}, "fs must be a number, got a boolean"),
        ({"params": [1.5, 0.5]}, "params must be an object, got an array"),
        ({"params": {"doc": 1.5, "feed": 0.5}}, "missing key params.'material'"),
        ({"params": {"doc": 1.5, "material": "steel"}}, "missing key params.'feed'"),
        ({"params": {"doc": 0, "feed": 0.5, "material": "steel"}}, "params.doc must be positive"),
        ({"params": {"doc": 1, "feed": -0.5, "material": "steel"}}, "params.feed must be positive"),
        ({"params": {"doc": True, "feed": 0.5, "material": "steel"}}, "params.doc must be a number, got a boolean"),
        ({"params": {"doc": 1, "feed": 0.5, "material": "wood"}},
         "params.material must be one of cast_iron, steel, got 'wood'"),
        ({"params": {"doc": 1, "feed": 0.5, "material": 1}}, "params.material must be one of"),
    ],
)
def test_bad_cut_start(over, reason):
    rejects(inbound.parse_cut_event, start(**over), reason)


def test_overflowing_numbers_are_not_finite():
    rejects(inbound.parse_cut_event, start().replace(b'"ts": 1700000000.5', b'"ts": 1e999'), "ts is not a finite number")
    rejects(inbound.parse_cut_event, start().replace(b'"fs": 250.0', b'"fs": ' + b"9" * 400), "fs is not a finite number")


def test_missing_keys():
    for key, make, fn in (("cut", start, inbound.parse_cut_event), ("ts", start, inbound.parse_cut_event),
                          ("fs", start, inbound.parse_cut_event), ("samples", end, inbound.parse_cut_event),
                          ("offset", chunk, inbound.parse_signal), ("samples", chunk, inbound.parse_signal),
                          ("cut", chunk, inbound.parse_signal)):
        obj = json.loads(make())
        del obj[key]
        rejects(fn, js(obj), f"missing key '{key}'")


@pytest.mark.parametrize(
    "samples, reason",
    [
        (-1, "samples must not be negative"),
        (9000.0, "samples must be an integer, got the fractional-typed number 9000.0"),
        ("9000", "samples must be an integer, got a string"),
        (10**7, "samples 10000000 is absurd"),
    ],
)
def test_bad_cut_end(samples, reason):
    rejects(inbound.parse_cut_event, end(samples=samples), reason)


@pytest.mark.parametrize(
    "msg, reason",
    [
        ({"cmd": "stop", "by": "x"}, "unknown cmd 'stop'; expected \"reset\""),
        ({"by": "x"}, "missing key 'cmd'"),
        ({"cmd": "reset"}, "missing key 'by'"),
        ({"cmd": "reset", "by": ""}, "by must be a string of 1-64 printable characters"),
        ({"cmd": "reset", "by": 7}, "by must be a string"),
        ({"cmd": "reset", "by": "a\nb"}, "printable"),
        ({"cmd": "reset", "by": "x" * 65}, "1-64"),
        ({"cmd": "reset", "by": "x", "id": 5}, "id must be a string of 1-64 printable characters"),
        ({"cmd": "reset", "by": "x", "id": ""}, "id must be a string"),
    ],
)
def test_bad_commands(msg, reason):
    rejects(inbound.parse_command, js(msg), reason)


def test_limits_validate():
    for bad in ({"max_chunk": 0}, {"max_payload_bytes": -1}, {"max_cut_samples": 1.5}, {"max_chunk": True}):
        with pytest.raises(ValueError, match="limits."):
            inbound.Limits(**bad)


def test_parsing_a_full_chunk_is_fast():
    rng = np.random.default_rng(0)
    payload = outbound.encode(inbound.SignalChunk("c01-r01", 0, rng.normal(size=4096)))  # 17 significant digits
    times = []
    for _ in range(50):
        t = time.perf_counter()
        inbound.parse_signal(payload)
        times.append(time.perf_counter() - t)
    # About 1 ms here (mostly json.loads); the bound is loose for a busy shared machine.
    assert np.median(times) < 0.01


# ----------------------------------------------------------------------------------- outbound


def test_encode_score_is_compact_and_finite():
    msg = outbound.ScoreMessage(
        cut="c1", offset=np.int64(640), recon=np.float32(0.25), kl=1.5, score=float("nan"),
        channels={c: i / 10 for i, c in enumerate(reversed(CHANNELS))}, level="warning", model="abc", ts=1.0,
    )
    raw = outbound.encode(msg)
    assert b" " not in raw
    obj = json.loads(raw)
    assert obj == {"cut": "c1", "offset": 640, "recon": 0.25, "kl": 1.5, "score": None,
                   "channels": {c: (5 - i) / 10 for i, c in enumerate(CHANNELS)},
                   "level": "warning", "model": "abc", "ts": 1.0}
    assert list(obj["channels"]) == list(CHANNELS)
    with pytest.raises(ValueError, match="level must be one of"):
        outbound.encode(outbound.ScoreMessage("c", 0, 0, 0, 0, {}, "bad", "m", 0))


def test_score_batches_group_a_machines_windows_and_keep_the_other_messages_in_place():
    from edge_monitor.core.steps import Output, score_batches

    def score(cut: str, offset: int, model: str = "m") -> outbound.ScoreMessage:
        return outbound.ScoreMessage(cut, offset, 0.1, 0.2, 0.3, {"smcAC": 0.5}, "normal", model, 10.0 + offset)

    alarm = outbound.AlarmMessage("a", "alarm", 1.0, "c1", 2.0, 1.5, "m")
    outputs = [Output("a", score("c1", 0)), Output("a", score("c1", 64)), Output("a", alarm),
               Output("a", score("c1", 128)), Output("b", score("c1", 0)), Output("b", score("c2", 0)),
               Output("b", score("c2", 64, model="n"))]
    grouped = score_batches(outputs)
    assert [(o.machine, type(o.message).__name__, [w.offset for w in getattr(o.message, "windows", ())])
            for o in grouped] == [("a", "ScoreBatchMessage", [0, 64]), ("a", "AlarmMessage", []),
                                  ("a", "ScoreBatchMessage", [128]), ("b", "ScoreBatchMessage", [0]),
                                  ("b", "ScoreBatchMessage", [0]), ("b", "ScoreBatchMessage", [64])]
    body = json.loads(outbound.encode(grouped[0].message))
    single = [json.loads(outbound.encode(o.message)) for o in outputs[:2]]
    assert body == {"cut": "c1", "model": "m", "windows": [
        {k: v for k, v in s.items() if k not in ("cut", "model")} for s in single]}
    assert grouped[0].message.leaf == "scores" and grouped[0].message.qos_key == "score"
    assert score_batches([]) == []


def test_encode_alarm_and_parse_it_back():
    msg = outbound.AlarmMessage("m1", "alarm", 1700000000.25, "c13-r09", 0.91, 0.8, "model-1")
    obj = json.loads(outbound.encode(msg))
    assert obj == {"machine": "m1", "state": "alarm", "since": 1700000000.25, "cut": "c13-r09",
                   "score": 0.91, "threshold": 0.8, "model": "model-1"}
    assert inbound.parse_alarm(outbound.encode(msg)) == msg
    after_reset = outbound.AlarmMessage("m1", "normal", 5.0, None, None, None, "model-1")
    assert json.loads(outbound.encode(after_reset))["cut"] is None
    assert inbound.parse_alarm(outbound.encode(after_reset)) == after_reset
    with pytest.raises(ProtocolError, match="alarm state must be one of"):
        inbound.parse_alarm(js({"machine": "m1", "state": "panic"}))
    with pytest.raises(ProtocolError, match="not a machine id"):
        inbound.parse_alarm(js({"machine": "a b", "state": "alarm"}))


def test_encode_summary_status_error():
    s = outbound.SummaryMessage("c1", 70, 128, (2560, 7295), 0.12, math.inf, "normal", judged=1.25)
    assert json.loads(outbound.encode(s)) == {"cut": "c1", "windows": 70, "skipped": 128, "stable": [2560, 7295],
                                       "score_median": 0.12, "score_max": None, "judged": 1.25, "level": "normal"}
    assert json.loads(outbound.encode(outbound.SummaryMessage("c1", 0, 0, None, None, None, "alarm")))["stable"] is None
    st = outbound.StatusMessage("online", "model-1", "cpu", "0.1.0", 100.0, {"messages_in": np.int64(5), "gaps": 0})
    assert json.loads(outbound.encode(st)) == {"state": "online", "model": "model-1", "device": "cpu", "version": "0.1.0",
                                        "since": 100.0, "protocol": 1, "counters": {"messages_in": 5, "gaps": 0}}
    assert "counters" not in json.loads(outbound.encode(outbound.StatusMessage("offline", "m", "gpu", "0.1.0", 1.0)))
    with pytest.raises(ValueError):
        outbound.encode(outbound.StatusMessage("sleeping", "m", "cpu", "0", 0.0))
    err = outbound.ErrorMessage("mill/m1/signal/x", "unknown channel 'x'", 3.0)
    assert json.loads(outbound.encode(err)) == {"topic": "mill/m1/signal/x", "reason": "unknown channel 'x'", "ts": 3.0}
    # Whatever a client put in a topic, the error message is valid JSON.
    assert json.loads(outbound.encode(outbound.ErrorMessage("mill/\udcff/\u00e9", "r", 0.0)))["topic"] == "mill/\udcff/\u00e9"


# ------------------------------------------------------------------ the fast parser and the strict one


def _outcome(parse, payload):
    try:
        return ("ok", parse(payload))
    except ProtocolError as exc:
        return ("refused", exc.reason)


def _payloads(rng):
    """Payloads near the edges of what the two parsers agree on."""
    fixed = [
        b'{"cut":"c1","offset":0,"samples":[1.0,2,3.5]}',
        b'{"cut":"c1","cut":"c2","offset":0,"samples":[1.0]}',  # a repeated key
        b'{"cut" : "c1","offset":0,"samples":[1.0]}',  # a space before the colon
        b'{"cut":"a\\":","offset":0,"samples":[1.0]}',  # ": inside a string
        b'{"cut":"c1","offset":0,"samples":[NaN]}',
        b'{"cut":"c1","offset":0,"samples":[1e999]}',
        b'{"cut":"c1","offset":123456789012345678901234567890,"samples":[1.0]}',
        b'{"cut":"c1","offset":0,"samples":[{"a":1,"a":2}]}',  # a repeated key, nested in a list
        b'{"cut":"c1","offset":0,"samples":[1.0],"x":{"y":{"z":1,"z":2}}}',
        b'{"event":"start","cut":"c1","ts":1.5,"fs":250,"params":{"doc":1.5,"feed":0.5,"material":"cast_iron"}}',
        b'{"cut":"\xc3\xa9","offset":0,"samples":[1]}',
        b'{"cut":"\xff","offset":0,"samples":[1]}',  # not UTF-8
        b'{"cut":"\\ud800","offset":0,"samples":[1]}',  # a lone surrogate
        b'[1,2,3]', b'"text"', b'{}', b'{"a":true,"b":null,"c":false}',
        b'{"a":' + b"[" * 990 + b"]" * 990 + b"}",  # deep: orjson takes it, the key count must not crash
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"cut":"c1","offset":-0.0,"samples":[-0.0,1E3,1e-7,0.1]}',
        b'{"cut":"c1","offset":0,"samples":[123456789012345678901234567890, 1]}',
        b'{"cut":"c1","offset":0,"offset" :999000,"samples":[1.0,2.0]}',  # a repeated key, a space before its colon
        b'{"cmd":"reset","by":"ann","by"\t:"bob"}', b'{"a" \n: 1}', b'{"a":"x" , "b":2}',
        b'{"cut":"c1","offset":1e19,"samples":[1]}', b'{"a":{"b":-99999999999999999999}}',
    ]
    yield from fixed
    for _ in range(400):  # random mutations of a valid chunk: byte flips, cuts, doubled keys
        base = bytearray(json.dumps({"cut": "c1", "offset": int(rng.integers(0, 10**6)),
                                     "samples": (rng.normal(size=int(rng.integers(1, 8))) * 10).tolist()}).encode())
        kind = rng.integers(0, 4)
        if kind == 0:
            base[int(rng.integers(0, len(base)))] = int(rng.integers(0, 256))
        elif kind == 1:
            base = base[: int(rng.integers(1, len(base)))]
        elif kind == 2:
            base = base.replace(b'"offset"', b'"offset": 1, "offset"', 1)
        else:  # a long integer somewhere
            at = int(rng.integers(0, len(base)))
            base = base[:at] + str(int(rng.integers(1, 9)) * 10 ** int(rng.integers(15, 25))).encode() + base[at:]
        yield bytes(base)


def _as_floats(value, in_array=False):
    """Numbers in arrays as float64 (as the protocol takes them); elsewhere exactly as parsed."""
    if isinstance(value, dict):
        return {k: _as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_floats(v, True) for v in value]
    if in_array and type(value) in (int, float):
        return ("number", float(value))
    return (type(value).__name__, value)


def test_the_fast_json_parser_takes_exactly_what_the_strict_one_takes():
    """orjson is used only where it provably parses as the strict path does: same objects, and
    every refusal (repeated keys above all) with the strict path's reason."""
    from edge_monitor.core.inbound import decode_object
    from edge_monitor.core.json_input import _strict_object

    rng = np.random.default_rng(7)
    for payload in _payloads(rng):
        fast, strict = _outcome(decode_object, payload), _outcome(_strict_object, payload)
        assert fast[0] == strict[0], payload[:80]
        if fast[0] == "ok":
            assert _as_floats(fast[1]) == _as_floats(strict[1]), payload[:80]
        else:
            assert fast[1] == strict[1]


# ------------------------------------------------------------------ the compact encoding of a chunk

F32 = inbound.F32_CONTENT_TYPE


def test_a_compact_chunk_reads_as_its_json_twin_rounded_to_float32():
    x = np.random.default_rng(3).normal(size=64) * 5
    chunk_msg = inbound.SignalChunk("c13-r04", 4096, x)
    compact = inbound.parse_signal(chunk_msg.to_f32(), content_type=F32)
    assert (compact.cut, compact.offset) == ("c13-r04", 4096)
    assert compact.samples.dtype == np.float64 and not compact.samples.flags.writeable
    np.testing.assert_array_equal(compact.samples, x.astype(np.float32).astype(np.float64))
    assert len(chunk_msg.to_f32()) == 5 + 7 + 4 * 64  # against ~1.3 kB of JSON
    # JSON stays the default, with or without its content type
    assert inbound.parse_signal(outbound.encode(chunk_msg), content_type="application/json").offset == 4096


@pytest.mark.parametrize("payload, reason", [
    (b"", "compact chunk of 0 bytes is shorter than its 5-byte header"),
    (b"\x00\x00\x00\x00\x09c1", "compact chunk: its cut id of 9 bytes runs past the payload's end"),
    (b"\x00\x00\x00\x00\x02c1", "samples is empty"),
    (b"\x00\x00\x00\x00\x02c1\x00\x00\x80", "compact chunk: 3 bytes of samples is not a whole number of float32 values"),
    (b"\x00\x00\x00\x00\x02c\xff\x00\x00\x80\x3f", "compact chunk: the cut id is not ASCII"),
    (b"\x00\x00\x00\x00\x02c!\x00\x00\x80\x3f", "cut id 'c!' is not 1-64 characters of A-Z a-z 0-9 _ . : + -"),
    (b"\x00\x00\x00\x00\x00\x00\x00\x80\x3f", "cut id '' is not 1-64 characters of A-Z a-z 0-9 _ . : + -"),
    (b"\x00\x00\x00\x00\x02c1\x00\x00\x80\x3f\x00\x00\xc0\x7f", "samples[1] is not a finite number"),
    (b"\xff\xff\xff\xff\x02c1\x00\x00\x80\x3f", "offset 4294967295 is absurd"),
])
def test_a_bad_compact_chunk_is_refused_with_what_to_fix(payload, reason):
    with pytest.raises(ProtocolError) as err:
        inbound.parse_signal(payload, content_type=F32)
    assert err.value.reason.startswith(reason)


def test_a_compact_chunk_obeys_the_same_limits():
    limits = inbound.Limits(max_chunk=8, max_payload_bytes=100)
    with pytest.raises(ProtocolError, match="over the limit of 8 per chunk"):
        inbound.parse_signal(inbound.SignalChunk("c", 0, np.ones(9)).to_f32(), limits, F32)
    with pytest.raises(ProtocolError, match="over the limit of 100 bytes"):
        inbound.parse_signal(b"\x00" * 101, limits, F32)


def test_only_the_compact_content_type_changes_how_a_payload_is_read():
    """Any other content type (with parameters, in any case, or unknown) is JSON, as before the
    compact encoding existed; the compact type outside a chunk is refused by name."""
    body = b'{"cut":"c","offset":0,"samples":[1.5]}'
    for content_type in ("application/json; charset=utf-8", "text/json", "text/csv", "APPLICATION/JSON"):
        assert inbound.parse_signal(body, content_type=content_type).samples.tolist() == [1.5]
    compact = inbound.SignalChunk("c", 0, np.array([1.5])).to_f32()
    assert inbound.parse_signal(compact, content_type=F32.upper() + "; v=1").samples.tolist() == [1.5]
    with pytest.raises(ProtocolError, match="is for signal data only"):
        inbound.parse_cut_event(b'{"event":"end","cut":"c","ts":1,"samples":3}', content_type=F32)
