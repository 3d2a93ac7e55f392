"""The state file is read defensively: whatever it holds (truncated, bytes flipped, wrong types
anywhere, another version or model), the monitor's start-up restore (state.resume, the code
Monitor._restore runs) ends with a usable fleet and warnings, never an exception. 1 000 corrupted
files, each a mutation of a real checkpoint with open cuts and alarm states."""

from __future__ import annotations

import copy
import json
import random
import traceback

import numpy as np
import pytest
from test_checkpoint import fake_scores, inputs_of
from test_machine import SPEC

from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.fleet import Fleet
from edge_monitor.core.inbound import Command
from edge_monitor.core.outbound import AlarmMessage
from edge_monitor.service.checkpoint import encode_arrays
from edge_monitor.service.state import StateFile, resume

MODEL = "m0"


def fresh_fleet() -> Fleet:
    return Fleet(SPEC, lambda m: m.startswith("mill-"), ("mill-*",))


@pytest.fixture(scope="module")
def checkpoint_text() -> str:
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
    streams = {m: json.dumps(encode_arrays(st)) for m, st in fleet.streams(["mill-01", "mill-02", "mill-03"]).items()}
    return StateFile.compose(snapshots, streams, MODEL)


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


def test_the_intact_checkpoint_resumes_every_open_cut(tmp_path, checkpoint_text):
    fleet, warnings = restore_from(tmp_path, checkpoint_text)
    assert warnings == []
    assert fleet["mill-01"].stream.is_open and fleet["mill-02"].stream.is_open
    assert fleet.states()["mill-03"] == "alarm"


RANDOM_VALUES = [None, True, 0, -1, 2**70, 10**400, 1e308, float("nan"), "", "x" * 100, [], {}, [1, "a"], {"a": {}},
                 {"array": "float64", "shape": [3], "data": "AAAA"}, {"array": "object", "shape": [], "data": ""}]


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


def test_a_thousand_corrupted_state_files_never_stop_the_start(tmp_path, checkpoint_text):
    rng = random.Random(2026)
    data = json.loads(checkpoint_text)
    raw = checkpoint_text.encode()
    kinds = {"truncated": 0, "bytes": 0, "json": 0, "version": 0}
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
        elif kind == "json":
            text = json.dumps(mutate(data, rng))
        else:
            text = json.dumps({**data, "format": rng.choice([0, 3, "2", None, 2.0]), "model": rng.choice([MODEL, "x"])})
        try:
            fleet, warnings = restore_from(tmp_path, text)
        except Exception as exc:  # noqa: BLE001  the point of the test
            pytest.fail(f"trial {trial} ({kind}): {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")
        resumed += "mill-01" in fleet and fleet["mill-01"].stream.is_open
        # whatever was restored can go on, and a reset clears what the retained alarm shows
        for machine in ("mill-01", "mill-02", "mill-03"):
            step = fleet.pipeline(machine).handle(Command("reset", "fuzz"), now=10.0)
            assert [o.message.state for o in step.outputs] == ["normal"] and fleet.states()[machine] == "normal"
    assert min(kinds.values()) > 150
    assert resumed > 100  # the mutations that leave mill-01 intact still resume its cut
