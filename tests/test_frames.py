"""Aligning channel chunks into frames: interleaving, duplicates, gaps, lead bound, cut state."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.frames import CutAssembler, MachineStream
from edge_monitor.core.inbound import CutEnd, CutStart, Limits, SignalChunk
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.topics import ProtocolError
from edge_monitor.core.windowing import CutWindower, Windows, WindowSpec, cut_windows

C = len(CHANNELS)


def signals(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, C))


def split(total: int, rng: np.random.Generator, max_size: int) -> list[tuple[int, int]]:
    """[start, stop) chunks covering [0, total) in random sizes."""
    edges = [0]
    while edges[-1] < total:
        edges.append(min(total, edges[-1] + int(rng.integers(1, max_size + 1))))
    return list(zip(edges[:-1], edges[1:]))


def interleave(total: int, rng: np.random.Generator, max_size: int = 300) -> list[tuple[int, int, int]]:
    """(channel, start, stop) for every channel's chunks, channels interleaved at random,
    each channel in its own order."""
    queues = [split(total, rng, max_size) for _ in range(C)]
    pos = [0] * C
    out = []
    while True:
        live = [c for c in range(C) if pos[c] < len(queues[c])]
        if not live:
            return out
        c = live[int(rng.integers(len(live)))]
        out.append((c, *queues[c][pos[c]]))
        pos[c] += 1


class Collector:
    """Feeds an assembler and checks that released frames are contiguous."""

    def __init__(self, asm: CutAssembler) -> None:
        self.asm, self.parts, self.next = asm, [], 0
        self.dup = self.gap = 0

    def add(self, c: int, off: int, samples: np.ndarray) -> None:
        r = self.asm.add(CHANNELS[c], off, samples)
        assert r.start == self.next and r.frames.shape[1] == C
        self.parts.append(r.frames)
        self.next += r.frames.shape[0]
        self.dup += r.duplicate_samples
        self.gap += r.gap_samples

    def finish(self, total: int):
        f = self.asm.finish(total)
        assert f.start == min(self.next, total)
        self.parts.append(f.frames)
        return np.concatenate(self.parts)[:total], f


def test_in_order_whole_channels():
    x = signals(1000)
    col = Collector(CutAssembler(max_lead=5000))
    for c in range(C):
        col.add(c, 0, x[:, c])
    frames, fin = col.finish(1000)
    assert np.array_equal(frames, x)
    assert fin.stats.total_gap_samples == 0 and fin.stats.total_duplicate_samples == 0
    assert fin.stats.lost_rows == 0 and fin.samples == 1000


@pytest.mark.parametrize("seed", range(8))
def test_random_interleaving_reassembles_exactly(seed):
    rng = np.random.default_rng(seed)
    total = int(rng.integers(1, 6000))
    x = signals(total, seed)
    col = Collector(CutAssembler(max_lead=10_000))
    for c, a, b in interleave(total, rng, max_size=int(rng.integers(1, 700))):
        col.add(c, a, x[a:b, c])
    frames, fin = col.finish(total)
    assert np.array_equal(frames, x)
    assert fin.stats.total_gap_samples == fin.stats.total_duplicate_samples == fin.stats.lost_rows == 0
    assert col.dup == col.gap == 0


@pytest.mark.parametrize("seed", range(6))
def test_duplicates_and_overlaps_are_ignored_and_counted(seed):
    rng = np.random.default_rng(100 + seed)
    total = 5000
    x = signals(total, seed)
    col = Collector(CutAssembler(max_lead=10_000))
    sent = [[] for _ in range(C)]  # chunks each channel already sent
    expected_dup = np.zeros(C, int)
    for c, a, b in interleave(total, rng):
        roll = rng.random()
        if sent[c] and roll < 0.3:  # a redelivery of an earlier chunk
            pa, pb = sent[c][int(rng.integers(len(sent[c])))]
            col.add(c, pa, x[pa:pb, c])
            expected_dup[c] += pb - pa
        if sent[c] and roll > 0.8:  # an overlapping resend: part old, part new
            pa = sent[c][-1][0]
            col.add(c, pa, x[pa:b, c])
            expected_dup[c] += a - pa
        else:
            col.add(c, a, x[a:b, c])
        sent[c].append((a, b))
    frames, fin = col.finish(total)
    assert np.array_equal(frames, x)
    assert [fin.stats.duplicate_samples[ch] for ch in CHANNELS] == expected_dup.tolist()
    assert col.dup == expected_dup.sum() > 0
    assert fin.stats.total_gap_samples == 0


def test_partial_overlap_keeps_only_the_new_part():
    asm = CutAssembler(max_lead=1000)
    x = signals(150)
    asm.add("smcAC", 0, x[:100, 0])
    r = asm.add("smcAC", 50, x[50:150, 0] + 99.0)  # the overlap is not rewritten
    assert r.duplicate_samples == 50 and r.gap_samples == 0
    for c in range(1, C):
        asm.add(CHANNELS[c], 0, x[:, c])
    fin = asm.finish(150)
    assert fin.stats.duplicate_samples["smcAC"] == 50


@pytest.mark.parametrize("seed", range(6))
def test_gaps_become_nan_rows_and_are_counted(seed):
    rng = np.random.default_rng(200 + seed)
    total = 6000
    x = signals(total, seed)
    col = Collector(CutAssembler(max_lead=10_000))
    lost = np.zeros(total, bool)
    expected_gap = np.zeros(C, int)
    for c, a, b in interleave(total, rng):
        if rng.random() < 0.1:  # this chunk never arrives
            lost[a:b] = True
            expected_gap[c] += b - a
            continue
        col.add(c, a, x[a:b, c])
    frames, fin = col.finish(total)
    assert np.isnan(frames[lost]).all()  # a row missing any channel is NaN in all of them
    assert np.array_equal(frames[~lost], x[~lost])
    assert [fin.stats.gap_samples[ch] for ch in CHANNELS] == expected_gap.tolist()
    assert fin.stats.lost_rows == lost.sum() > 0
    assert fin.stats.total_duplicate_samples == 0


def test_gap_counts_per_chunk_and_missing_end():
    asm = CutAssembler(max_lead=1000)
    x = signals(100)
    r = asm.add("smcDC", 10, x[10:20, 1])
    assert r.gap_samples == 10 and r.frames.shape == (0, C)
    for c in range(C):
        if CHANNELS[c] != "smcDC":
            asm.add(CHANNELS[c], 0, x[:50, c])
    fin = asm.finish(100)  # nothing arrived after 50 (after 20 for smcDC)
    assert fin.stats.gap_samples == {ch: (90 if ch == "smcDC" else 50) for ch in CHANNELS}
    assert fin.frames.shape == (80, C) and fin.start == 20  # rows 0..19 were released already
    assert np.isnan(fin.frames).all()
    assert fin.stats.lost_rows == 100 - 10  # rows 10..19 are complete


def test_a_late_chunk_for_a_lost_span_is_a_duplicate():
    asm = CutAssembler(max_lead=1000)
    asm.add("smcAC", 0, np.ones(10))
    r = asm.add("smcAC", 20, np.ones(10))
    assert r.gap_samples == 10
    r = asm.add("smcAC", 10, np.ones(10))  # arrives after the gap was declared
    assert r.duplicate_samples == 10


def test_a_channel_far_ahead_does_not_grow_memory():
    max_lead = 1000
    asm = CutAssembler(max_lead=max_lead)
    x = signals(50_000)
    released = 0
    for a in range(0, 50_000, 100):
        r = asm.add("vib_table", a, x[a : a + 100, 2])
        released += r.frames.shape[0]
        assert asm.pending_rows <= max_lead
        assert asm._buf.shape[0] <= 2 * max_lead + 1024  # capacity too stays bounded
    assert released == 49_000 and asm.emitted == 49_000
    # The laggards' spans were declared lost; what they send now for those spans is stale.
    r = asm.add("smcAC", 0, x[:4096, 0])
    assert r.duplicate_samples == 4096 and r.frames.shape == (0, C)
    fin = asm.finish(50_000)
    lagged = fin.stats.lagged_samples
    assert lagged["vib_table"] == 0
    assert all(lagged[ch] == 49_000 for ch in CHANNELS if ch != "vib_table")
    assert all(fin.stats.gap_samples[ch] == 50_000 for ch in CHANNELS if ch != "vib_table")


def test_lead_rule_keeps_frames_aligned():
    # One channel runs 2 s ahead of the rest within the bound: nothing is lost.
    x = signals(3000)
    asm = CutAssembler(max_lead=600)
    col = Collector(asm)
    for a in range(0, 3000, 100):
        col.add(2, a, x[a : a + 100, 2])
        if a >= 500:
            b = a - 500
            for c in (0, 1, 3, 4, 5):
                col.add(c, b, x[b : b + 100, c])
    for c in (0, 1, 3, 4, 5):
        col.add(c, 2500, x[2500:, c])
    frames, fin = col.finish(3000)
    assert np.array_equal(frames, x) and fin.stats.total_gap_samples == 0


def test_extra_samples_past_the_declared_end():
    x = signals(120)
    asm = CutAssembler(max_lead=1000)
    for c in range(C):
        asm.add(CHANNELS[c], 0, x[:100, c])
    asm.add("smcAC", 100, x[100:120, 0])  # only one channel goes past the end
    fin = asm.finish(90)
    assert fin.stats.extra_samples == {ch: (30 if ch == "smcAC" else 10) for ch in CHANNELS}
    assert fin.stats.rows_past_end == 10  # rows 90..99 were released before the end was known
    assert fin.frames.shape == (0, C) and fin.start == 90


def test_assembler_refuses_out_of_range_and_reuse():
    asm = CutAssembler(max_lead=10, max_cut_samples=100)
    with pytest.raises(ProtocolError, match="outside a cut of at most 100 samples"):
        asm.add("smcAC", 95, np.ones(10))
    with pytest.raises(ValueError, match="unknown channel"):
        asm.add("nope", 0, np.ones(1))
    with pytest.raises(ProtocolError, match="cut length 101"):
        asm.finish(101)
    asm.finish(0)
    with pytest.raises(RuntimeError):
        asm.add("smcAC", 0, np.ones(1))
    with pytest.raises(RuntimeError):
        asm.finish(0)


def reference(events, total: int, max_lead: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample-by-sample model of the assembler's rules: frames, duplicates, gaps."""
    vals = np.full((max(total, 1) + 20_000, C), np.nan)
    expected = np.zeros(C, int)
    dup, gap = np.zeros(C, int), np.zeros(C, int)
    for c, off, samples in events:
        for i, v in enumerate(samples):
            o = off + i
            if o < expected[c]:
                dup[c] += 1
                continue
            gap[c] += o - expected[c]
            vals[o, c] = v
            expected[c] = o + 1
        floor = expected.max() - max_lead
        for k in range(C):
            if expected[k] < floor:
                gap[k] += floor - expected[k]
                expected[k] = floor
    gap += np.maximum(total - expected, 0)
    frames = vals[:total].copy()
    frames[np.isnan(frames).any(axis=1)] = np.nan
    return frames, dup, gap


@pytest.mark.parametrize("seed", range(10))
def test_chaos_matches_the_sample_by_sample_model(seed):
    rng = np.random.default_rng(300 + seed)
    total = int(rng.integers(500, 4000))
    max_lead = int(rng.integers(50, 1500))
    x = signals(total + 200, seed)
    events = []
    for c, a, b in interleave(total + int(rng.integers(0, 200)), rng, max_size=int(rng.integers(5, 400))):
        roll = rng.random()
        if roll < 0.08:
            continue  # lost
        if roll < 0.16:  # redelivered later, or early and shifted
            a2 = max(0, a - int(rng.integers(0, 300)))
            events.append((c, a2, x[a2:b, c]))
        events.append((c, a, x[a:b, c]))
    col = Collector(CutAssembler(max_lead=max_lead))
    for c, a, s in events:
        col.add(c, a, s)
    frames, fin = col.finish(total)
    ref_frames, ref_dup, ref_gap = reference(events, total, max_lead)
    np.testing.assert_array_equal(frames, ref_frames)
    assert [fin.stats.duplicate_samples[ch] for ch in CHANNELS] == ref_dup.tolist()
    assert [fin.stats.gap_samples[ch] for ch in CHANNELS] == ref_gap.tolist()


# ------------------------------------------------------------------ with the real windower


def cut_signal(n: int = 9000, seed: int = 0) -> np.ndarray:
    """Air, steady cutting, air: enough for the stable-region detector to find a region."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.05, size=(n, C))
    load = np.zeros(n)
    load[2000:7000] = 5.0
    x += load[:, None] * np.array([1.0, 1.0, 0.3, 0.3, 0.1, 0.1])
    return x


def stream_windows(x, chunks, window=WindowSpec(), stable=StableRegionSpec()) -> Windows:
    asm = CutAssembler(max_lead=15_000)
    w = CutWindower(window, stable)
    parts = []
    for c, a, b in chunks:
        parts.append(w.push(asm.add(CHANNELS[c], a, x[a:b, c]).frames))
    fin = asm.finish(x.shape[0])
    parts += [w.push(fin.frames), w.finish()]
    return Windows.concat(parts, window.length, C)


def test_streamed_windows_equal_offline_windows():
    x = cut_signal()
    offline = cut_windows(x, WindowSpec(), StableRegionSpec())
    assert len(offline) > 50
    for seed in range(3):
        live = stream_windows(x, interleave(x.shape[0], np.random.default_rng(seed), max_size=600))
        assert np.array_equal(live.starts, offline.starts)
        assert np.array_equal(live.data, offline.data)


def test_no_window_spans_a_gap_in_any_channel():
    x = cut_signal()
    offline = cut_windows(x, WindowSpec(), StableRegionSpec())
    chunks = [(c, a, b) for c, a, b in interleave(x.shape[0], np.random.default_rng(7), max_size=100)]
    # vib_table (not the detector's channel) loses a chunk inside the stable region
    dropped = next((c, a, b) for c, a, b in chunks if c == 2 and a >= 4000)
    live = stream_windows(x, [ch for ch in chunks if ch != dropped])
    _, a, b = dropped
    assert len(live) > 0 and not np.isnan(live.data).any()
    assert not any(s < b and s + 64 > a for s in live.starts.tolist())
    assert len(live) < len(offline)
    kept = np.isin(live.starts, offline.starts)
    assert kept.all()  # windows clear of the gap are the offline ones, bit for bit
    idx = np.searchsorted(offline.starts, live.starts)
    assert np.array_equal(live.data, offline.data[idx])


# ---------------------------------------------------------------------------- machine state


def start(cut: str, fs: float = 250.0) -> CutStart:
    return CutStart(cut, 1.0, fs)


def chunk(cut: str, offset: int, n: int = 10) -> SignalChunk:
    return SignalChunk(cut, offset, np.ones(n))


def test_machine_stream_lifecycle():
    m = MachineStream()
    with pytest.raises(ProtocolError, match="chunk for cut 'a', which never started"):
        m.chunk("smcAC", chunk("a", 0))
    with pytest.raises(ProtocolError, match="end for cut 'a', which never started"):
        m.end(CutEnd("a", 2.0, 10))
    assert m.start(start("a")).opened and m.is_open
    for ch in CHANNELS:
        r = m.chunk(ch, chunk("a", 0))
    assert r.frames.shape == (10, C)
    with pytest.raises(ProtocolError, match="chunk for cut 'b', which never started \\(cut 'a' is open\\)"):
        m.chunk("smcAC", chunk("b", 0))
    with pytest.raises(ProtocolError, match="end for cut 'b'"):
        m.end(CutEnd("b", 2.0, 10))
    fin = m.end(CutEnd("a", 2.0, 10))
    assert fin is not None and fin.cut == "a" and not fin.aborted and fin.samples == 10
    assert not m.is_open
    with pytest.raises(ProtocolError, match="chunk for cut 'a', which already ended"):
        m.chunk("smcAC", chunk("a", 10))
    assert m.end(CutEnd("a", 2.0, 10)) is None  # a redelivered end
    with pytest.raises(ProtocolError, match="cut 'a' already ended; cut ids must be unique"):
        m.start(start("a"))


def test_repeated_start_is_a_redelivery():
    m = MachineStream()
    m.start(start("a"))
    m.chunk("smcAC", chunk("a", 0))
    again = m.start(start("a"))
    assert not again.opened and again.closed is None
    r = m.chunk("smcAC", chunk("a", 0))  # still the same assembler: this is a duplicate
    assert r.duplicate_samples == 10


def test_new_start_closes_the_open_cut():
    m = MachineStream()
    m.start(start("a"))
    for ch in CHANNELS:
        m.chunk(ch, chunk("a", 0, 50))
    m.chunk("smcAC", chunk("a", 50, 30))
    res = m.start(start("b"))
    assert res.opened and res.closed is not None
    closed = res.closed
    assert closed.aborted and closed.cut == "a" and closed.samples == 80  # furthest sample delivered
    assert closed.start == 50 and closed.frames.shape == (30, C) and np.isnan(closed.frames).all()
    assert closed.stats.gap_samples["smcDC"] == 30 and closed.stats.gap_samples["smcAC"] == 0
    assert m.current.cut == "b"
    with pytest.raises(ProtocolError, match="already ended"):
        m.chunk("smcAC", chunk("a", 80))
    assert m.chunk("smcAC", chunk("b", 0)).gap_samples == 0


def test_max_lead_follows_the_sample_rate():
    m = MachineStream(Limits(max_lead_seconds=2.0))
    m.start(start("a", fs=100.0))
    assert m.assembler.max_lead == 200
    r = m.chunk("smcAC", chunk("a", 0, 300))
    assert r.gap_samples == 5 * 100  # the five silent channels lost 100 samples each
    assert r.frames.shape == (100, C)


def test_assembling_is_fast():
    import time

    x = signals(9000 * 4)
    asm = CutAssembler(max_lead=15_000)
    t = time.perf_counter()
    n = 0
    for a in range(0, x.shape[0], 4096):
        for c in range(C):
            asm.add(CHANNELS[c], a, x[a : a + 4096, c])
            n += 1
    per_chunk = (time.perf_counter() - t) / n
    assert per_chunk < 0.005  # tens of microseconds here; loose for a busy machine
