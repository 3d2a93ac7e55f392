"""The Sparkplug B core without a broker: payloads as an independent decoder (Eclipse Tahu's) reads
them, the edge node's seq, aliases, births and changed-only data, the tags, and the settings."""

from __future__ import annotations

import math

import pytest
from sparkplug_host import TahuCodec

from edge_monitor.core import sparkplug_payload as sp
from edge_monitor.core.alarm import Thresholds
from edge_monitor.core.outbound import AlarmMessage, SummaryMessage
from edge_monitor.core.sparkplug_node import BD_SEQ, REBIRTH, EdgeNode, parse_command
from edge_monitor.core.sparkplug_tags import alarm_tags, device_tags
from edge_monitor.service.config import ConfigError, load_config


@pytest.fixture(scope="module")
def tahu():
    codec = TahuCodec()
    yield codec
    codec.close()


def test_every_datatype_reads_back_in_tahu_as_written(tahu):
    metrics = (
        sp.Metric("i32", sp.INT32, -5, 1), sp.Metric("i32max", sp.INT32, 2**31 - 1, 2),
        sp.Metric("i64", sp.INT64, -(2**40), 3), sp.Metric("u64", sp.UINT64, 2**63 + 7, 4),
        sp.Metric("d", sp.DOUBLE, 0.1 + 0.2, 5), sp.Metric("b", sp.BOOLEAN, True, 6),
        sp.Metric("f", sp.BOOLEAN, False, 7), sp.Metric("s", sp.STRING, "mill-01 ✓", 8),
        sp.Metric("t", sp.DATETIME, 1_764_000_000_123, 9), sp.Metric("null", sp.DOUBLE, None, 10),
        sp.Metric("nan", sp.DOUBLE, math.nan, 11), sp.Metric(None, sp.DOUBLE, 2.5, 12, alias=300),
    )
    out = tahu.decode(sp.encode(sp.Payload(timestamp=1_764_000_000_000, metrics=metrics, seq=255)))
    assert (out["timestamp"], out["seq"]) == ("1764000000000", "255")
    got = {(m["name"] or f"alias {m['alias']}"): m for m in out["metrics"]}
    assert got["i32"]["value"] == -5 and got["i32max"]["value"] == 2**31 - 1
    assert got["i64"]["value"] == str(-(2**40)) and got["u64"]["value"] == str(2**63 + 7)
    assert got["d"]["value"] == 0.1 + 0.2 and got["b"]["value"] is True and got["f"]["value"] is False
    assert got["s"]["value"] == "mill-01 ✓" and got["t"]["value"] == "1764000000123"
    assert got["null"]["value"] is None and got["nan"]["value"] is None  # is_null: no value, not NaN
    assert not got["null"]["absent"] and not got["nan"]["absent"]  # a null value, not a missing one
    assert got["alias 300"]["value"] == 2.5 and got["alias 300"]["timestamp"] == "12"
    types = {name: m["type"] for name, m in got.items()}
    assert types == {"i32": "Int32", "i32max": "Int32", "i64": "Int64", "u64": "UInt64", "d": "Double", "b": "Boolean",
                     "f": "Boolean", "s": "String", "t": "DateTime", "null": "Double", "nan": "Double",
                     "alias 300": "Double"}
    assert sp.decode(sp.encode(sp.Payload(5, metrics[:9], 3))).metrics == metrics[:9]  # our own reader agrees


def test_a_command_written_by_tahu_is_read_by_name_and_by_alias(tahu):
    node = EdgeNode("g", "e", aliases=True)
    node.birth(0, 1)
    node.set_device("mill-01", {"Alarm/Level": (sp.INT32, 0)}, 2)
    payload = tahu.encode([{"name": REBIRTH, "type": "Boolean", "value": True}])
    assert parse_command(node, "spBv1.0/g/NCMD/e", payload).metrics == {REBIRTH: True}
    payload = tahu.encode([{"name": "Device Control/Reset", "type": "Boolean", "value": True}])
    command = parse_command(node, "spBv1.0/g/DCMD/e/mill-01", payload)
    assert (command.device, command.metrics) == ("mill-01", {"Device Control/Reset": True})
    with pytest.raises(ValueError, match="not a command for edge node g/e"):
        parse_command(node, "spBv1.0/g/DCMD/other/mill-01", payload)
    with pytest.raises(ValueError):
        parse_command(node, "spBv1.0/g/NCMD/e", b"\x0a\xff")  # truncated
    with pytest.raises(ValueError, match="alias 99"):
        parse_command(node, "spBv1.0/g/NCMD/e", tahu.encode([{"alias": 99, "type": "Boolean", "value": True}]))


def test_a_command_with_a_value_of_the_wrong_wire_type_is_refused_or_valueless_never_a_crash():
    node = EdgeNode("g", "e", aliases=False)
    name = sp._bytes(1, REBIRTH.encode())
    bad_values = [
        sp._uint(4, sp.DOUBLE) + sp._uint(13, 5),  # a double as a varint
        sp._uint(4, sp.DOUBLE) + sp._key(13, 1) + b"\x00\x01\x02",  # a double of 3 bytes: runs past the end
        sp._uint(4, sp.STRING) + sp._uint(15, 7),  # a string as a varint
        sp._uint(4, sp.INT32) + sp._bytes(10, b"\x01"),  # an int length-delimited
        sp._uint(4, sp.BOOLEAN) + sp._bytes(14, b"\x01\x02"),  # a bool length-delimited
        sp._uint(4, 9) + sp._key(12, 1) + b"\x00" * 8,  # a float as 64 bits
    ]
    for value in bad_values:
        payload = sp._bytes(2, name + value)
        try:
            command = parse_command(node, "spBv1.0/g/NCMD/e", payload)
        except ValueError:
            continue  # refused with a reason
        assert command.metrics == {REBIRTH: None}, value  # the field of the wrong type is skipped
    with pytest.raises(ValueError, match="64-bit"):
        sp.encode(sp.Payload(timestamp=2**64, metrics=()))  # a timestamp that fits no field
    with pytest.raises(ValueError, match="64-bit"):
        sp.encode(sp.Payload(timestamp=1, metrics=(sp.Metric("x", sp.INT64, 1, timestamp=-1),)))


def test_times_no_datetime_holds_become_null_rather_than_wrong():
    from edge_monitor.core.sparkplug_tags import ms

    assert ms(1_700_000_000.25) == 1_700_000_000_250 and ms(None) is None
    assert ms(1.7e18) is None and ms(-1.0) is None and ms(math.inf) is None  # nanoseconds sent as seconds, say


def decoded(tahu, publishes):
    return [(p.kind, p.topic, tahu.decode(p.payload)) for p in publishes]


def test_seq_runs_across_node_and_devices_and_wraps_after_255(tahu):
    node = EdgeNode("g", "e", aliases=False)
    assert node.set_device("m1", {"x": (sp.INT64, 0)}, 1) == []  # nothing before the birth
    births = decoded(tahu, node.birth(7, 2))
    assert [(k, t) for k, t, _ in births] == [("NBIRTH", "spBv1.0/g/NBIRTH/e"), ("DBIRTH", "spBv1.0/g/DBIRTH/e/m1")]
    assert [b["seq"] for _, _, b in births] == ["0", "1"]
    nbirth = {m["name"]: m for m in births[0][2]["metrics"]}
    assert nbirth[BD_SEQ]["value"] == "7" and nbirth[BD_SEQ]["type"] == "Int64"
    assert nbirth[REBIRTH]["value"] is False and nbirth[REBIRTH]["type"] == "Boolean"
    seqs = []
    for i in range(1, 301):
        publishes = node.set_device("m1", {"x": (sp.INT64, i)}, 2 + i) if i % 2 else [node.set_node({"y": (sp.INT64, i)}, 2 + i)]
        seqs += [int(tahu.decode(p.payload)["seq"]) for p in publishes]
    assert seqs == [(2 + k) % 256 for k in range(300)]
    assert [int(b["seq"]) for _, _, b in decoded(tahu, node.birth(7, 9))] == [0, 1]  # a rebirth starts again at 0


def test_data_carries_only_what_changed_by_alias_and_births_carry_everything(tahu):
    node = EdgeNode("g", "e", aliases=True)
    node.set_node({"Monitor/State": (sp.STRING, "online")}, 1)
    node.set_device("m1", {"a": (sp.DOUBLE, 1.0), "b": (sp.DOUBLE, math.nan)}, 1)
    node.set_device("m2", {"a": (sp.DOUBLE, 1.0)}, 1)
    births = decoded(tahu, node.birth(0, 5))
    aliases = [m["alias"] for _, _, b in births for m in b["metrics"] if m["alias"] is not None]
    assert len(aliases) == len(set(aliases)) == 4  # unique across the node, the device's "a"s apart
    assert all(m["name"] is not None for _, _, b in births for m in b["metrics"])
    no_alias = {m["name"] for _, _, b in births for m in b["metrics"] if m["alias"] is None}
    assert no_alias == {BD_SEQ, REBIRTH}
    assert node.set_device("m1", {"a": (sp.DOUBLE, 1.0), "b": (sp.DOUBLE, math.nan)}, 6) == []  # NaN stays NaN
    [(kind, _, body)] = decoded(tahu, node.set_device("m1", {"a": (sp.DOUBLE, 2.0), "b": (sp.DOUBLE, math.nan)}, 7, at=3))
    alias_a = next(m["alias"] for _, t, b in births if t.endswith("/m1") for m in b["metrics"] if m["name"] == "a")
    assert kind == "DDATA" and body["metrics"] == [
        {"name": None, "alias": alias_a, "timestamp": "3", "type": "Double", "value": 2.0, "absent": False}]
    [(_, _, birth)] = decoded(tahu, node.set_device("m3", {"a": (sp.INT32, 1)}, 8))  # a new device: its birth
    assert [m["name"] for m in birth["metrics"]] == ["a"]
    [(_, _, nbirth), *dbirths] = decoded(tahu, node.birth(0, 9))
    by_name = {m["name"]: m for _, t, b in dbirths if t.endswith("/m1") for m in b["metrics"]}
    assert by_name["a"]["value"] == 2.0 and by_name["a"]["timestamp"] == "3" and by_name["b"]["value"] is None


def test_series_values_go_out_in_order_and_the_last_stays_for_the_birth(tahu):
    node = EdgeNode("g", "e", aliases=False)
    node.birth(0, 1)
    node.set_device("m1", {"x": (sp.INT32, 0)}, 1)
    series = [("Window/Score", sp.DOUBLE, float(i), 100 + i) for i in range(5)]
    [(_, _, body)] = decoded(tahu, node.set_device("m1", {}, 2, series=series))
    assert [(m["value"], m["timestamp"]) for m in body["metrics"]] == [(float(i), str(100 + i)) for i in range(5)]
    [_, (_, _, dbirth)] = decoded(tahu, node.birth(0, 3))
    assert {m["name"]: m["value"] for m in dbirth["metrics"]}["Window/Score"] == 4.0


def test_ids_and_devices_that_hosts_would_confuse_are_refused():
    with pytest.raises(ValueError, match=r"group id must be .* without '\+', '/', '#'"):
        EdgeNode("plant/a", "e", True)
    node = EdgeNode("g", "e", True)
    node.set_device("Mill-01", {}, 1)
    assert "collides with 'Mill-01' when lower-cased" in node.device_problem("mill-01")
    assert node.device_problem("mill+1") and node.device_problem("Mill-01") is None
    with pytest.raises(ValueError, match="collides"):
        node.set_device("mill-01", {}, 2)


def test_the_tags_of_a_sensor_fault_keep_the_wear_level_beneath():
    alarm = AlarmMessage("m1", "sensor_fault", 10.0, "c7", None, None, "model-x", wear="alarm")
    tags = alarm_tags(alarm)
    assert tags["Alarm/Level"] == (sp.INT32, 2) and tags["Alarm/Sensor Fault"] == (sp.BOOLEAN, True)
    assert tags["Alarm/Since"] == (sp.DATETIME, 10_000) and tags["Alarm/Score"] == (sp.DOUBLE, None)
    summary = SummaryMessage("c7", 12, 0, (64, 4000), 0.5, 0.9, "alarm", judged=0.6)
    tags = device_tags(alarm, Thresholds(1.0, 2.0, "recon", "test"), summary, window_scores=True, reset=True)
    assert tags["Last Cut/Stable End"] == (sp.INT64, 4000) and tags["Thresholds/Alarm"] == (sp.DOUBLE, 2.0)
    assert "Window/Score" in tags and tags["Device Control/Reset"] == (sp.BOOLEAN, False)


def test_settings_are_checked_with_the_key_to_fix(tmp_path):
    def load(text):
        path = tmp_path / "config.yaml"
        path.write_text(text)
        return load_config(path)

    config = load("state_file: s/alarm.json\nsparkplug: {enabled: true}\n")
    assert config.bd_seq_file == tmp_path / "s" / "alarm.json.sparkplug-bdseq"
    assert config.sparkplug.group_id == "edge-monitor" and config.sparkplug.edge_node_id is None
    assert load("sparkplug: {}\n").sparkplug.enabled is False  # off by default, no state file needed
    for text, expected in [
        ("sparkplug: {enabled: true}\n", "sparkplug.bd_seq_file: Sparkplug needs a file to keep its bdSeq"),
        ("sparkplug: {group_id: 'a/b'}\n", "sparkplug.group_id"),
        ("sparkplug: {edge_node_id: 'box #1'}\n", "sparkplug.edge_node_id"),
        ("sparkplug: {window_scores_interval_s: 0.5}\n", "sparkplug.window_scores_interval_s"),
        ("sparkplug: {password_file: config.yaml}\n", "sparkplug.password_file"),
        ("sparkplug: {primary_host: scada}\n", "primary_host"),
    ]:
        with pytest.raises(ConfigError) as info:
            load(text)
        assert expected in str(info.value), (text, str(info.value))
