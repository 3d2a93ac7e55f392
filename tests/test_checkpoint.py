"""Checkpoints of one machine's pipeline: a pipeline restored from a snapshot taken at any point of
a cut produces exactly the windows, scores, summaries and alarms of one that never stopped; a
snapshot that does not fit is refused with the field named, and leaves the pipeline unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_machine import SPEC, chunks

from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.inbound import CutEnd, CutStart, SignalChunk
from edge_monitor.core.outbound import encode
from edge_monitor.core.pipeline import MachinePipeline
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.snapshot import SnapshotError


@pytest.fixture(scope="module")
def cuts() -> list[np.ndarray]:
    s = synthesize(seed=0, cases=[13], max_runs=2)
    return [np.stack([r[c] for c in CHANNELS], axis=1) for r in s.records]


def fake_scores(data: np.ndarray) -> WindowScores:
    """Scores that depend on each window's samples only (the model is not the subject here)."""
    level = np.nan_to_num(np.abs(data).mean(axis=(1, 2)))
    return WindowScores(recon=level, kl=level / 10 + 0.5, channels=np.abs(data).mean(axis=1))


def inputs_of(signals_by_cut, rng):
    out = []
    for i, signals in enumerate(signals_by_cut):
        cut = f"c{i}"
        out.append(CutStart(cut, 1000.0 + 100 * i, SAMPLE_RATE_HZ))
        out += [(CHANNELS[c], SignalChunk(cut, off, s)) for c, off, s in chunks(signals, rng, max_size=200)]
        out.append(CutEnd(cut, 1036.0 + 100 * i, signals.shape[0]))
    return out


def run(pipeline: MachinePipeline, messages, published: list[bytes], checkpoint_at=(), restore=None):
    """Apply ``messages`` in order, scoring every window right away; at the indexes in
    ``checkpoint_at`` the pipeline is snapshotted and replaced by a fresh one restored from it."""
    for i, message in enumerate(messages):
        if i in checkpoint_at:
            state = copy.deepcopy(pipeline.to_state())
            tracker = pipeline.tracker
            pipeline = MachinePipeline(pipeline.machine, SPEC, tracker)
            (restore or MachinePipeline.restore)(pipeline, state)
        channel, message = message if isinstance(message, tuple) else (None, message)
        step = pipeline.handle(message, channel=channel)
        published += [encode(o.message) for o in step.outputs]
        for batch in step.windows:
            result = pipeline.scored(batch, fake_scores(batch.data))
            published += [encode(o.message) for o in result.outputs]
    return pipeline


def test_a_restored_pipeline_goes_on_exactly_where_it_stopped(cuts):
    messages = inputs_of(cuts, np.random.default_rng(3))
    straight: list[bytes] = []
    run(MachinePipeline("m1", SPEC), messages, straight)
    assert sum(b'"offset"' in m for m in straight) > 100  # windows scored
    rng = np.random.default_rng(7)
    for trial in range(5):
        at = set(rng.choice(len(messages), size=6, replace=False).tolist()) | {1, len(messages) - 1}
        resumed: list[bytes] = []
        run(MachinePipeline("m1", SPEC), messages, resumed, checkpoint_at=at)
        assert resumed == straight, f"trial {trial}: checkpoints at {sorted(at)}"


def test_redelivered_inputs_after_a_restore_are_duplicates(cuts):
    """Inputs applied after a checkpoint come again after the restore (they were not acknowledged):
    they are dropped as duplicates where the checkpoint covers them, and nothing is published twice."""
    messages = inputs_of(cuts[:1], np.random.default_rng(5))
    straight: list[bytes] = []
    run(MachinePipeline("m1", SPEC), messages, straight)
    first = MachinePipeline("m1", SPEC)
    out: list[bytes] = []
    first = run(first, messages[:60], out)
    state = copy.deepcopy(first.to_state())
    again = MachinePipeline("m1", SPEC, first.tracker)
    again.restore(state)
    # the last 10 inputs before the checkpoint are delivered once more, then the rest
    run(again, messages[50:], out)
    assert out == straight


def test_a_snapshot_that_does_not_fit_is_refused_with_the_field_named(cuts):
    messages = inputs_of(cuts[:1], np.random.default_rng(5))
    p = run(MachinePipeline("m1", SPEC), messages[:80], [])
    state = p.to_state()
    broken = [
        ("windower.buffer", lambda s: s["windower"].__setitem__("buffer", np.zeros((3, 2)))),
        ("stream.assembler.expected", lambda s: s["stream"]["assembler"].__setitem__("expected", np.zeros(2, np.int64))),
        ("stream.current", lambda s: s["stream"]["current"].__setitem__("fs", 1000.0)),
        ("scores", lambda s: s.__setitem__("scores", np.zeros(1))),
        ("windower.detector.means", lambda s: s["windower"]["detector"].__setitem__("means", "x")),
        ("disagree", lambda s: s["windower"].__setitem__("buffer_start", 5)),
        ("finished", lambda s: s["windower"]["detector"].__setitem__("finished", True)),
        ("last_reset", lambda s: s.__setitem__("last_reset", 10**400)),
    ]
    for name, spoil in broken:
        bad = copy.deepcopy(state)
        spoil(bad)
        fresh = MachinePipeline("m1", SPEC)
        with pytest.raises(SnapshotError) as exc:
            fresh.restore(bad)
        assert "machine m1" in str(exc.value), name
        assert not fresh.stream.is_open  # unchanged
    for junk in (None, [], {"stream": 3}, {"stream": {"current": None}}):
        with pytest.raises(SnapshotError):
            MachinePipeline("m1", SPEC).restore(junk)


def test_no_checkpoint_while_windows_are_being_scored(cuts):
    messages = inputs_of(cuts[:1], np.random.default_rng(5))
    p = MachinePipeline("m1", SPEC)
    for m in messages:
        channel, m = m if isinstance(m, tuple) else (None, m)
        if p.handle(m, channel=channel).windows:
            break
    with pytest.raises(RuntimeError, match="being scored"):
        p.to_state()


def test_a_snapshot_reads_back_from_the_state_file_bit_for_bit():
    """encode_record writes arrays as raw bytes (float64 as float32 only where every value comes back
    with the same bits), numpy scalars as numbers, and what orjson refuses through the json module;
    parse gives the same values back."""
    from edge_monitor.service import state_format

    rows = np.arange(600, dtype=np.float64).reshape(100, 6) / 7  # not float32 values: kept float64
    samples = rows.astype(np.float32).astype(np.float64)  # float32 values (the compact encoding): stored as float32
    samples[3] = np.nan  # a lost row
    samples[4, 0], samples[4, 1] = -0.0, np.inf
    state = {"air": np.array([np.nan, 0.25]), "n": 3, "cut": "c1", "ids": ["a", "é"], "none": None, "flag": True,
             "rows": rows, "samples": samples, "stable": np.array([True, False]), "counts": np.arange(6),
             "empty": np.empty((0, 6)), "strided": rows[::2, 1:3],
             # numpy scalars (a median, a count): orjson writes none itself
             "median": np.float64(0.5), "count": np.int64(7), "seen": np.bool_(True), "tuple": (1, 2.5)}

    def round_trip(value):
        contents = state_format.parse(b"".join(state_format.compose({"machines": {}}, {"m": state_format.encode_record(value)})))
        assert contents.problems == []
        return contents.streams["m"]

    back = round_trip(state)
    for key in ("air", "rows", "samples", "stable", "counts", "empty", "strided"):
        assert back[key].dtype == np.asarray(state[key]).dtype and back[key].shape == state[key].shape, key
        assert back[key].tobytes() == np.ascontiguousarray(state[key]).tobytes(), key
    assert {k: back[k] for k in ("n", "cut", "ids", "none", "flag", "median", "count", "seen", "tuple")} == {
        "n": 3, "cut": "c1", "ids": ["a", "é"], "none": None, "flag": True, "median": 0.5, "count": 7, "seen": True,
        "tuple": [1, 2.5]}
    record = state_format.encode_record({"rows": rows, "samples": samples})
    assert record.size == rows.nbytes + samples.nbytes // 2  # the float32 values in half the bytes
    assert round_trip({"big": 2**70, "odd": "\ud800"}) == {"big": 2**70, "odd": "\ud800"}
    with pytest.raises(TypeError, match="float16"):
        state_format.encode_record({"x": np.zeros(3, np.float16)})
