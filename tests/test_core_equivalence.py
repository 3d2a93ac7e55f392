"""The per-message core path decides exactly as the reference (``reference_core.py``: the classes
before they were made cheap): the same stable blocks, windows, rows, counts and snapshots, for
random cuts with gaps, odd chunk sizes, cut ends and restarts from snapshots, and snapshots of
either restore in the other."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from reference_core import RefCutAssembler, RefCutWindower, RefStableRegionDetector

from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core import frames, pipeline
from edge_monitor.core.alarm import AlarmPolicy, Thresholds
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.frames import CutAssembler, materialize
from edge_monitor.core.inbound import CutEnd, CutStart, SignalChunk
from edge_monitor.core.pipeline import MachinePipeline
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.stable_region import StableRegionDetector, StableRegionSpec
from edge_monitor.core.steps import PipelineSpec
from edge_monitor.core.windowing import CutWindower, Windows, WindowSpec, cut_windows

C = len(CHANNELS)


def assert_same(a, b, where="state"):
    """Equal plain data and arrays (dtype, shape, values; NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape, b.shape)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and (a == b or isinstance(a, float) and math.isnan(a) and math.isnan(b)), (where, a, b)


def random_spec(rng: np.random.Generator) -> StableRegionSpec:
    return StableRegionSpec(
        block=int(rng.choice([1, 5, 16, 64, 64, 64])),
        baseline_blocks=int(rng.integers(1, 10)),
        half_width=int(rng.integers(0, 5)),
        lookahead=int(rng.integers(0, 5)),
        tolerance=float(rng.uniform(0.05, 0.5)),
        min_load_sigmas=float(rng.choice([0.0, rng.uniform(0.5, 6)])),
    )


def random_cut(rng: np.random.Generator, n: int, channels: int = C) -> np.ndarray:
    """Air, an entry (ramp, overshoot), steady cutting with drift and steps, maybe an exit; noise,
    sometimes coarse quantisation (ties), NaN gaps in one channel or whole rows, rarely inf."""
    t = np.arange(n, dtype=float)
    entry = rng.integers(0, max(1, n // 2))
    exit_ = rng.integers(entry, n + n // 2)
    ramp = rng.integers(1, 800)
    env = np.clip((t - entry) / ramp, 0, 1) * np.clip((exit_ - t) / ramp, 0, 1)
    env *= 1 + rng.uniform(0, 0.4) * np.exp(-np.clip(t - entry - ramp, 0, None) / rng.uniform(50, 500))
    env *= 1 + rng.uniform(0, 0.1) * np.sin(t / rng.uniform(100, 2000))
    for _ in range(rng.integers(0, 3)):  # load steps
        env[rng.integers(0, n):] *= rng.uniform(0.6, 1.4)
    level = rng.uniform(0.05, 3.0)
    x = 0.3 + level * env[:, None] * rng.uniform(0.5, 2.0, channels) + rng.uniform(0.001, 0.3) * rng.standard_normal(
        (n, channels))
    if rng.random() < 0.3:
        x = np.round(x, int(rng.integers(0, 3)))
    for _ in range(rng.integers(0, 4)):
        a = int(rng.integers(0, n))
        cols = slice(None) if rng.random() < 0.6 else int(rng.integers(0, channels))
        x[a : a + int(rng.integers(1, 400)), cols] = np.nan
    if rng.random() < 0.05:
        x[int(rng.integers(0, n)), int(rng.integers(0, channels))] = rng.choice([np.inf, -np.inf])
    return x


def chunk_sizes(rng: np.random.Generator, n: int, block: int) -> list[int]:
    kind = rng.integers(0, 5)
    sizes = []
    while sum(sizes) < n:
        if kind == 0:
            sizes.append(int(rng.integers(1, 4)))
        elif kind == 1:
            sizes.append(block * int(rng.integers(1, 3)))  # whole blocks
        elif kind == 2:
            sizes.append(int(rng.integers(1, 700)))
        elif kind == 3:
            sizes.append(n)  # the whole cut at once
        else:
            sizes.append(int(rng.choice([1, block - 1 or 1, block, block + 1, 250, 4096])))
    return sizes


@pytest.mark.parametrize("seed", range(60))
def test_detector_decides_as_the_reference(seed):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    n = int(rng.integers(0, 4000 if spec.block >= 16 else 1500))
    x = random_cut(rng, n, 1)[:, 0]
    ref, new = RefStableRegionDetector(spec), StableRegionDetector(spec)
    at = 0
    for size in chunk_sizes(rng, n, spec.block):
        part = x[at : at + size]
        at += size
        assert new.push(part) == ref.push(part)
        assert new.stable == ref.stable and new.pushed == ref.pushed
        if rng.random() < 0.1:  # a restart; now and then from the other one's snapshot
            a, b = (ref, new) if rng.random() < 0.5 else (new, ref)
            state_a, state_b = a.to_state(), b.to_state()
            assert_same(state_a, state_b)
            ref = RefStableRegionDetector.from_state(spec, state_b)
            new = StableRegionDetector.from_state(spec, state_a)
    assert new.finish() == ref.finish()
    assert new.stable == ref.stable
    assert all(type(s) is bool for s in new.stable)
    assert_same(new.to_state(), ref.to_state())


def push_both(ref, new, frames_: np.ndarray) -> None:
    a, b = ref.push(frames_), new.push(frames_)
    assert_same(a.starts, b.starts, "starts")
    assert_same(a.data, b.data, "data")
    assert b.data.flags.c_contiguous and b.data.flags.owndata or b.data.base is not None


@pytest.mark.parametrize("seed", range(40))
def test_windower_cuts_the_reference_windows(seed):
    rng = np.random.default_rng(1000 + seed)
    spec = random_spec(rng)
    length = int(rng.choice([2, 16, 64, 64, 100]))
    # A stride up to the window's length: the reference misplaces rows beyond it (see below).
    window = WindowSpec(length=length, stride=int(rng.choice([1, 16, 64, 64, 80, 100])) if length == 100 else
                        min(length, int(rng.choice([1, 16, 64, 64]))))
    n = int(rng.integers(0, 6000 if spec.block >= 16 else 1500))
    x = random_cut(rng, n)
    ref, new = RefCutWindower(window, spec), CutWindower(window, spec)
    at = 0
    for size in chunk_sizes(rng, n, spec.block):
        push_both(ref, new, x[at : at + size])
        at += size
        assert new.stable_span == ref.stable_span and new.pushed == ref.pushed
        if rng.random() < 0.1:
            a, b = (ref, new) if rng.random() < 0.5 else (new, ref)
            state_a, state_b = a.to_state(), b.to_state()
            assert_same(state_a, state_b)
            ref = RefCutWindower.from_state(window, spec, state_b)
            new = CutWindower.from_state(window, spec, state_a)
    a, b = ref.finish(), new.finish()
    assert_same(a.starts, b.starts)
    assert_same(a.data, b.data)
    assert new.stable_span == ref.stable_span
    assert_same(new.to_state(), ref.to_state())


@pytest.mark.parametrize("seed", range(10))
def test_a_stride_longer_than_the_window_keeps_rows_in_line(seed):
    """The one place the current windower differs from the reference, which once the next window
    start lay past the samples pushed dropped rows it had not been given and then cut the windows
    from misplaced rows (and wrote a snapshot its own check refused)."""
    rng = np.random.default_rng(4000 + seed)
    spec = random_spec(rng)
    window = WindowSpec(length=64, stride=int(rng.choice([65, 80, 200])))
    x = random_cut(rng, 6000)
    offline = cut_windows(x, window, spec)
    w, parts, at = CutWindower(window, spec), [], 0
    for size in chunk_sizes(rng, 6000, spec.block):
        parts.append(w.push(x[at : at + size]))
        at += size
        if rng.random() < 0.2:
            w = CutWindower.from_state(window, spec, w.to_state())
    parts.append(w.finish())
    live = Windows.concat(parts, 64, C)
    assert_same(live.starts, offline.starts)
    assert_same(live.data, offline.data)
    for start, data in zip(live.starts, live.data):
        assert_same(data, x[start : start + 64])


def test_windower_feed_with_lost_runs_as_the_reference():
    rng = np.random.default_rng(7)
    x = random_cut(rng, 9000)
    for spec in (StableRegionSpec(), StableRegionSpec(lookahead=1), StableRegionSpec(half_width=1, lookahead=4)):
        ref, new = RefCutWindower(WindowSpec(), spec), CutWindower(WindowSpec(), spec)
        parts_list = [(), (x[:700],), (x[700:1000], 300, x[1300:1400]), (5000,), (), (x[6400:9000],), (x[:0],)]
        for parts in parts_list:
            a, b = ref.feed(parts), new.feed(parts)
            assert_same(a.starts, b.starts)
            assert_same(a.data, b.data)
        assert_same(ref.to_state(), new.to_state())


def chaos_events(rng: np.random.Generator, total: int, x: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(channel, offset, samples): channels interleaved, random sizes, lost, redelivered, shifted
    and far-ahead chunks."""
    queues = []
    for _ in range(C):
        edges = [0]
        size = int(rng.choice([1, 7, 64, 64, 250, 400]))
        while edges[-1] < total:
            edges.append(min(total, edges[-1] + int(rng.integers(1, size + 1))))
        queues.append(list(pairwise(edges)))
    events = []
    while any(queues):
        c = int(rng.choice([i for i in range(C) if queues[i]]))
        a, b = queues[c].pop(0)
        roll = rng.random()
        if roll < 0.05:
            continue  # lost
        if roll < 0.12:  # redelivered, or early and shifted back
            a2 = max(0, a - int(rng.integers(0, 300)))
            events.append((c, a2, x[a2:b, c]))
        if roll > 0.995:  # a jump far ahead
            far = min(total - 1, b + int(rng.integers(1, 3000)))
            events.append((c, far, x[far : far + 10, c]))
        events.append((c, a, x[a:b, c]))
    return events


def same_add(a, b) -> None:
    assert (a.start, a.duplicate_samples, a.gap_samples) == (b.start, b.duplicate_samples, b.gap_samples)
    assert len(a.parts) == len(b.parts)
    for p, q in zip(a.parts, b.parts):
        assert_same(p, q, "part")


@pytest.mark.parametrize("seed", range(40))
def test_assembler_releases_the_reference_rows(seed):
    rng = np.random.default_rng(2000 + seed)
    total = int(rng.integers(0, 6000))
    max_lead = int(rng.integers(1, 2500))
    x = random_cut(rng, total + 400)
    ref, new = RefCutAssembler(max_lead=max_lead), CutAssembler(max_lead=max_lead)
    for c, off, samples in chaos_events(rng, total + int(rng.integers(0, 300)), x):
        same_add(ref.add(CHANNELS[c], off, samples), new.add(CHANNELS[c], off, samples))
        assert (new.emitted, new.pending_rows, new.received_end) == (ref.emitted, ref.pending_rows, ref.received_end)
        assert type(new.received_end) is int
        if rng.random() < 0.05:
            a, b = (ref, new) if rng.random() < 0.5 else (new, ref)
            state_a, state_b = a.to_state(), b.to_state()
            assert_same(state_a, state_b)
            ref = RefCutAssembler.from_state(state_b, a.max_cut_samples, "")
            new = CutAssembler.from_state(state_a, a.max_cut_samples, "")
    end = total if rng.random() < 0.8 else int(rng.integers(0, total + 1))
    a, b = ref.finish(end), new.finish(end)
    assert (a.cut, a.start, a.samples, a.aborted) == (b.cut, b.start, b.samples, b.aborted)
    assert_same(materialize(a.parts), materialize(b.parts))
    assert_same(a.stats.__dict__, b.stats.__dict__)


def test_assembler_buffer_wraps_and_grows_as_the_reference():
    """Rows held across many releases, a chunk larger than the buffer, a channel far behind."""
    x = random_cut(np.random.default_rng(5), 40_000)
    ref, new = RefCutAssembler(max_lead=3000), CutAssembler(max_lead=3000)
    events = [(0, 0, x[:5000, 0])]  # larger than the initial buffer
    for a in range(0, 40_000, 333):
        events += [(c, a, x[a : a + 333, c]) for c in (1, 2, 3, 4)]
        if a % 999 == 0:
            events.append((5, a // 2, x[a // 2 : a // 2 + 500, 5]))  # a laggard, lagged out at times
        events.append((0, a + 5000, x[a + 5000 : a + 5333, 0]))
    for c, off, samples in events:
        same_add(ref.add(CHANNELS[c], off, samples), new.add(CHANNELS[c], off, samples))
    assert_same(ref.to_state(), new.to_state())
    a, b = ref.finish(40_000), new.finish(40_000)
    assert_same(materialize(a.parts), materialize(b.parts))
    assert_same(a.stats.__dict__, b.stats.__dict__)


# ------------------------------------------------------------------ the whole pipeline, and its checkpoint


SPEC = PipelineSpec(WindowSpec(), StableRegionSpec(), SAMPLE_RATE_HZ, Thresholds(1.0, 2.0), AlarmPolicy(), "m0")


@pytest.fixture
def reference_pipeline(monkeypatch):
    """Make MachinePipeline build the reference assembler and windower (as before the change)."""

    def use(reference: bool) -> None:
        monkeypatch.setattr(frames, "CutAssembler", RefCutAssembler if reference else CutAssembler)
        monkeypatch.setattr(pipeline, "CutWindower", RefCutWindower if reference else CutWindower)

    return use


def fake_scores(data: np.ndarray) -> WindowScores:
    level = np.nan_to_num(np.abs(data).mean(axis=(1, 2)))
    return WindowScores(recon=level, kl=level / 10 + 0.5, channels=np.abs(data).mean(axis=1))


def state_file_round_trip(state: dict) -> dict:
    from edge_monitor.service import state_format

    contents = state_format.parse(b"".join(state_format.compose({"machines": {}}, {"m": state_format.encode_record(state)})))
    assert contents.problems == []
    return contents.streams["m"]


@pytest.mark.parametrize("seed", range(4))
def test_a_checkpoint_written_before_restores_and_goes_on_identically(seed, reference_pipeline):
    rng = np.random.default_rng(3000 + seed)
    s = synthesize(seed=seed, cases=[int(rng.integers(1, 17))], max_runs=1)
    signals = np.stack([s.records[0][c] for c in CHANNELS], axis=1)
    messages = [(None, CutStart("c0", 1000.0, SAMPLE_RATE_HZ))]
    for c, off, samples in chaos_events(rng, signals.shape[0], signals):
        messages.append((CHANNELS[c], SignalChunk("c0", off, samples)))
    messages.append((None, CutEnd("c0", 1036.0, signals.shape[0])))
    checkpoints = set(rng.choice(len(messages), size=3, replace=False).tolist())

    def run(restart_with_new_at: set, alternate: bool) -> list:
        reference_pipeline(True)
        p, out, reference = MachinePipeline("m", SPEC), [], True
        for i, (channel, message) in enumerate(messages):
            if i in restart_with_new_at:
                state = state_file_round_trip(p.to_state())
                reference = not reference if alternate else False
                reference_pipeline(reference)
                p = MachinePipeline("m", SPEC, p.tracker)
                p.restore(state)
            step = p.handle(message, channel=channel)
            for batch in step.windows:
                out.append((batch.offsets, batch.data))
                p.scored(batch, fake_scores(batch.data))
            out += [(o.message.to_dict(),) for o in step.outputs]
        reference_pipeline(False)
        return out

    uninterrupted = run(set(), False)
    for got in (run(checkpoints, False), run(checkpoints, True)):
        assert len(got) == len(uninterrupted)
        for a, b in zip(got, uninterrupted):
            assert_same(a, b)
