"""The state file is read defensively: whatever it holds (truncated, bytes flipped, wrong types
anywhere, another version or model), the monitor's start-up restore (state.resume, the code
Monitor._restore runs) ends with a usable fleet and warnings, never an exception. 1 000 corrupted
files, each a mutation of a real checkpoint with open cuts and alarm states, in the format written
now (3) and in the JSON of format 2, which an upgrade finds."""

from __future__ import annotations

import base64
import copy
import json
import random
import traceback
import zlib

import numpy as np
import pytest
from test_checkpoint import fake_scores, inputs_of
from test_machine import SPEC

from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.fleet import Fleet
from edge_monitor.core.inbound import Command
from edge_monitor.core.outbound import AlarmMessage
from edge_monitor.service.state import StateFile, resume
from edge_monitor.service.state_format import encode_record

MODEL = "m0"


def fresh_fleet() -> Fleet:
    return Fleet(SPEC, lambda m: m.startswith("mill-"), ("mill-*",))


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A real checkpoint: three machines, two with a cut open mid-way, one in alarm."""
    s = synthesize(seed=0, cases=[13], max_runs=2)
    cuts = [np.stack([r[c] for c in CHANNELS], axis=1) for r in s.records]
    fleet = fresh_fleet()
    messages = inputs_of(cuts, np.random.default_rng(1))
    for machine, upto in (("mill-01", len(messages) // 3), ("mill-02", len(messages) - 40), ("mill-03", 5)):
        pipe = fleet.pipeline(machine)
        for m in messages[:upto]:
            channel, m = m if isinstance(m, tuple) else (None, m)
            for batch in pipe.handle(m, channel=channel).windows:
                pipe.scored(batch, fake_scores(batch.data))
    snapshots = fleet.snapshots()
    snapshots["mill-03"] = {**snapshots["mill-03"], "state": "alarm", "since": 5.0, "cut": "c0", "score": 3.0,
                            "threshold": 2.0}
    streams = {m: encode_record(st) for m, st in fleet.streams(["mill-01", "mill-02", "mill-03"]).items()}
    return b"".join(StateFile.compose(snapshots, streams, MODEL))


def split(raw: bytes) -> tuple[bytes, dict, list]:
    """A format 3 file's first line, head and records (machine, header as data, the arrays' bytes)."""
    first = raw.index(b"\n")
    second = raw.index(b"\n", first + 1)
    head = json.loads(raw[first + 1 : second])
    at, records = second + 1, []
    for machine, header, data, _ in head["streams"]:
        records.append((machine, json.loads(raw[at : at + header]), raw[at + header : at + header + data]))
        at += header + data
    return raw[: first + 1], head, records


def join(first: bytes, head: dict, records: list) -> bytes:
    """The file of :func:`split`'s parts, with the index (sizes and CRCs) made to fit them, so that
    a mutation reaches the reader's checks of what the records say."""
    encoded = [(m, json.dumps(h).encode("utf-8", "surrogatepass"), d) for m, h, d in records]
    head = {**head, "streams": [[m, len(h), len(d), zlib.crc32(h + d)] for m, h, d in encoded]}
    return first + json.dumps(head).encode() + b"\n" + b"".join(h + d for _, h, d in encoded)


def format_2(raw: bytes) -> str:
    """The same checkpoint as format 2 wrote it: JSON, arrays in base64."""
    _, head, records = split(raw)
    contents = __import__("edge_monitor.service.state_format", fromlist=["parse"]).parse(raw)

    def encode(value):
        if isinstance(value, np.ndarray):
            return {"array": value.dtype.name, "shape": list(value.shape), "data": base64.b64encode(value.tobytes()).decode()}
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [encode(v) for v in value]
        return value

    return json.dumps({**head, "format": 2, "streams": {m: encode(s) for m, s in contents.streams.items()}})


def restore_from(tmp_path, text: str | bytes):
    path = tmp_path / "state.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    warnings: list[tuple[str, dict]] = []
    fleet = fresh_fleet()
    retained = {"mill-03": AlarmMessage("mill-03", "alarm", 5.0, "c0", 3.0, 2.0, MODEL)}
    saved = StateFile(path).read(MODEL)
    for problem in saved.problems:
        warnings.append(("state_file_ignored", {"reason": problem}))
    resume(fleet, saved, retained, lambda event, **fields: warnings.append((event, fields)))
    return fleet, warnings


@pytest.mark.parametrize("written_by", ["format 3", "format 2"])
def test_the_intact_checkpoint_resumes_every_open_cut(tmp_path, checkpoint_bytes, written_by):
    fleet, warnings = restore_from(tmp_path, checkpoint_bytes if written_by == "format 3" else format_2(checkpoint_bytes))
    assert warnings == []
    assert fleet["mill-01"].stream.is_open and fleet["mill-02"].stream.is_open
    assert fleet.states()["mill-03"] == "alarm"


RANDOM_VALUES = [None, True, 0, -1, 2**70, 10**400, 1e308, float("nan"), "", "x" * 100, [], {}, [1, "a"], {"a": {}},
                 {"array": "float64", "shape": [3], "data": "AAAA"}, {"array": "object", "shape": [], "data": ""},
                 {"array": "float64", "shape": [3], "at": 10**6}, {"array": "float32", "shape": [2, 2], "at": 0},
                 {"array": "bool", "shape": [2**40], "at": 0}, {"array": "int64", "shape": [1], "at": -8}]


def mutate(value, rng: random.Random):
    """A copy of the JSON ``value`` with one node replaced, removed or retyped."""
    value = copy.deepcopy(value)
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:5]):
                walk(v, path + [i])

    walk(value, [])
    path = rng.choice(paths[1:])
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(RANDOM_VALUES)
    return value


def test_a_thousand_corrupted_state_files_never_stop_the_start(tmp_path, checkpoint_bytes):
    rng = random.Random(2026)
    raw = checkpoint_bytes
    first, head, records = split(raw)
    old = format_2(raw)
    kinds = {"truncated": 0, "bytes": 0, "head": 0, "record": 0, "version": 0, "format 2": 0}
    resumed = 0
    for trial in range(1000):
        kind = rng.choice(list(kinds))
        kinds[kind] += 1
        if kind == "truncated":
            text: str | bytes = raw[: rng.randrange(len(raw))]
        elif kind == "bytes":
            b = bytearray(raw)
            for _ in range(rng.randint(1, 20)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            text = bytes(b)
        elif kind == "head":  # the index of the records included
            text = first + json.dumps(mutate(head, rng)).encode() + b"\n" + raw[raw.index(b"\n", len(first)) + 1 :]
        elif kind == "record":
            k = rng.randrange(len(records))
            machine, header, data = records[k]
            text = join(first, head, records[:k] + [(machine, mutate(header, rng), data)] + records[k + 1 :])
        elif kind == "version":
            text = rng.choice([b"edge-monitor state 4\n", b"edge-monitor state \n", b"edge-monitor state 3"]) + raw[len(first) :]
            if rng.random() < 0.5:
                text = join(first, {**head, "format": rng.choice([0, 3, "2", None, 2.0]), "model": rng.choice([MODEL, "x"])},
                            records)
        else:
            text = json.dumps(mutate(json.loads(old), rng)) if rng.random() < 0.8 else old[: rng.randrange(len(old))]
        try:
            fleet, warnings = restore_from(tmp_path, text)
        except Exception as exc:  # noqa: BLE001  the point of the test
            pytest.fail(f"trial {trial} ({kind}): {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")
        resumed += "mill-01" in fleet and fleet["mill-01"].stream.is_open
        # whatever was restored can go on, and a reset clears what the retained alarm shows
        for machine in ("mill-01", "mill-02", "mill-03"):
            step = fleet.pipeline(machine).handle(Command("reset", "fuzz"), now=10.0)
            assert [o.message.state for o in step.outputs] == ["normal"] and fleet.states()[machine] == "normal"
    assert min(kinds.values()) > 120
    assert resumed > 100  # the mutations that leave mill-01 intact still resume its cut


def test_a_damaged_record_costs_its_machine_alone(tmp_path, checkpoint_bytes):
    """A byte flipped on disk inside one open cut's arrays: the CRC says so, that machine's cut
    starts afresh with a warning naming it, the others resume, every alarm state is kept."""
    first, head, _ = split(checkpoint_bytes)
    at = checkpoint_bytes.index(b"\n", len(first)) + 1  # the first record
    for machine, header, data, _ in head["streams"]:
        if machine == "mill-01":
            break
        at += header + data
    assert data > 100
    damaged = bytearray(checkpoint_bytes)
    damaged[at + header + data // 2] ^= 0x10
    fleet, warnings = restore_from(tmp_path, bytes(damaged))
    reasons = [f["reason"] for e, f in warnings if e == "state_file_ignored"]
    assert len(reasons) == 1 and "open cut of 'mill-01' ignored (its bytes are damaged" in reasons[0], warnings
    assert ("mill-01" not in fleet or not fleet["mill-01"].stream.is_open) and fleet["mill-02"].stream.is_open
    assert fleet.states()["mill-03"] == "alarm"
