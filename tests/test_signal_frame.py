"""Multi-channel frames (``R/<machine>/frame``, issue 20): every channel of one block of samples in
one message, JSON or compact; parsed as strictly as chunks, each malformed kind refused with its
reason; and a cut sent as frames, or as frames and chunks in turn, gives the windows of training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_machine import SPEC, cuts, offsets, score_all  # noqa: F401 (cuts: a fixture)

from edge_monitor.core import inbound, topics
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.frames import CutAssembler
from edge_monitor.core.inbound import (
    F32_FRAME_CONTENT_TYPE,
    CutEnd,
    CutStart,
    Limits,
    SignalChunk,
    SignalFrame,
    parse_frame,
)
from edge_monitor.core.outbound import encode
from edge_monitor.core.pipeline import MachinePipeline
from edge_monitor.core.topics import ProtocolError
from edge_monitor.core.windowing import cut_windows

ROWS = np.arange(24, dtype=np.float64).reshape(4, 6) / 7.0


def frame_json(**change) -> bytes:
    body = {"cut": "c1", "offset": 128, "channels": {name: ROWS[:, c].tolist() for c, name in enumerate(CHANNELS)}}
    body.update(change)
    return json.dumps(body).encode()


def test_a_frame_reads_back_as_written_in_json_and_compact():
    frame = SignalFrame("c1", 128, ROWS)
    got = parse_frame(encode(frame))
    assert (got.cut, got.offset) == ("c1", 128) and np.array_equal(got.samples, ROWS)
    assert not got.samples.flags.writeable
    compact = parse_frame(frame.to_f32(), content_type=F32_FRAME_CONTENT_TYPE + "; v=1")
    assert np.array_equal(compact.samples, ROWS.astype(np.float32).astype(np.float64))
    assert len(frame.to_f32()) == 4 + 1 + 2 + 1 + 4 * ROWS.size
    assert topics.parse_topic("mill", "mill/m1/frame") == topics.InboundTopic("m1", "frame")
    assert [(name, c.offset, c.samples.tolist()) for name, c in frame.chunks()] == [
        (name, 128, ROWS[:, i].tolist()) for i, name in enumerate(CHANNELS)]


@pytest.mark.parametrize("payload, reason", [
    (frame_json(channels=[1, 2]), "channels must be an object of each channel's samples, got an array"),
    (frame_json(channels={n: [1.0] for n in CHANNELS[:5]}),
     "channels lacks AE_spindle: a frame carries every channel (send a channel alone as a chunk on signal/<channel>)"),
    (frame_json(channels={**{n: [1.0] for n in CHANNELS}, "temp": [1.0]}),
     "unknown channel 'temp' in channels; expected " + ", ".join(CHANNELS)),
    (frame_json(channels={n: [1.0] * (2 if n == "vib_table" else 3) for n in CHANNELS}),
     "channels have unequal lengths (smcAC 3, smcDC 3, vib_table 2, vib_spindle 3, AE_table 3, AE_spindle 3): "
     "a frame is one block of samples of every channel"),
    (frame_json(channels={n: ([1.0, 2.5] if n == "AE_table" else [1.0, 2.0]) for n in CHANNELS}).replace(b"2.5", b"1e999"),
     "channels.AE_table: samples[1] is not a finite number"),
    (frame_json(channels={n: ([1.0, "x"] if n == "smcDC" else [1.0, 2.0]) for n in CHANNELS}),
     "channels.smcDC: samples[1] is not a number (got a string)"),
    (frame_json(channels={n: [] for n in CHANNELS}), "channels.smcAC: samples is empty"),
    (frame_json(offset=999_999), "offset 999999 is absurd: the frame would end past the limit of 1000000 samples per cut"),
    (frame_json(offset=-1), "offset must not be negative, got -1"),
    (b'{"cut": "c1", "offset": 0}', "missing key 'channels'"),
])
def test_each_malformed_json_frame_is_refused_with_its_reason(payload, reason):
    with pytest.raises(ProtocolError) as info:
        parse_frame(payload)
    assert info.value.reason == reason


def test_each_malformed_compact_frame_is_refused_with_its_reason():
    good = SignalFrame("c1", 0, ROWS).to_f32()
    head = 4 + 1 + 2  # offset, cut id length, "c1"
    bad = np.array(ROWS, dtype="<f4")
    bad[2, 4] = np.inf
    cases = [
        (good[:head], "compact frame: the channel count is missing after the cut id"),
        (good[:head] + bytes([5]) + good[head + 1:], "compact frame of 5 channels: a frame carries the monitor's 6 "
                                                   f"({', '.join(CHANNELS)}, in that order)"),
        (good[:-4], "compact frame: 92 bytes of samples is not a whole number of rows of 6 float32 values"),
        (good[:head + 1], "samples is empty"),
        (good[:head + 1] + bad.tobytes(), "channels.AE_table: samples[2] is not a finite number"),
        (good[:3], "compact frame of 3 bytes is shorter than its 5-byte header"),
    ]
    for payload, reason in cases:
        with pytest.raises(ProtocolError) as info:
            parse_frame(payload, content_type=F32_FRAME_CONTENT_TYPE)
        assert info.value.reason == reason
    with pytest.raises(ProtocolError, match="frame has 5 rows, over the limit of 4 per chunk"):
        parse_frame(SignalFrame("c1", 0, np.zeros((5, 6))).to_f32(), Limits(max_chunk=4), F32_FRAME_CONTENT_TYPE)
    with pytest.raises(ProtocolError, match="is for signal data only"):  # not on a cut event
        inbound.parse_cut_event(b"{}", content_type=F32_FRAME_CONTENT_TYPE)


def feed(p: MachinePipeline, cut: str, signals: np.ndarray, block: int, frames_every: int):
    """One cut in blocks of ``block`` rows: a frame, or (every ``frames_every``-th block when
    positive) the six chunks of the block; the windows it makes."""
    steps = [p.handle(CutStart(cut, 1000.0, SAMPLE_RATE_HZ, None))]
    for k, first in enumerate(range(0, signals.shape[0], block)):
        rows = signals[first:first + block]
        if frames_every and k % frames_every == 0:
            steps += [p.handle(SignalChunk(cut, first, rows[:, c]), channel=name) for c, name in enumerate(CHANNELS)]
        else:
            steps.append(p.handle(SignalFrame(cut, first, rows)))
    steps.append(p.handle(CutEnd(cut, 1036.0, signals.shape[0])))
    return [w for s in steps for w in s.windows], steps


def test_frames_and_chunks_mixed_give_the_windows_of_training(cuts):  # noqa: F811
    p = MachinePipeline("m1", SPEC)
    for k, signals in enumerate(cuts):
        windows, steps = feed(p, f"c{k}", signals, block=250 if k % 2 else 64, frames_every=3 * k)
        expected = cut_windows(signals, SPEC.window, SPEC.stable)
        assert offsets(windows) == expected.starts.tolist() and len(expected) > 0
        assert np.array_equal(np.concatenate([w.data for w in windows]), expected.data)
        assert sum(s.gap_samples + s.duplicate_samples for s in steps) == 0
        score_all(p, windows, 0.1)


def test_a_frame_sent_twice_or_out_of_its_cut_changes_nothing(cuts):  # noqa: F811
    p = MachinePipeline("m1", SPEC)
    signals = cuts[0]
    p.handle(CutStart("c0", 1000.0, SAMPLE_RATE_HZ, None))
    first = p.handle(SignalFrame("c0", 0, signals[:64]))
    again = p.handle(SignalFrame("c0", 0, signals[:64]))  # a QoS 1 redelivery
    assert again.windows == [] and again.duplicate_samples == 64 * 6
    assert first.duplicate_samples == 0
    with pytest.raises(ProtocolError, match="frame for cut 'c9', which never started"):
        p.handle(SignalFrame("c9", 64, signals[64:128]))


def _totals(results) -> tuple:
    """What add results hand out together: their rows (arrays, and counts of lost rows) and counts."""
    return ([p for r in results for p in r.parts], sum(r.duplicate_samples for r in results),
            sum(r.gap_samples for r in results))


def _same_rows(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True) if isinstance(x, np.ndarray) else x == y
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("seed, max_lead", [(0, 500), (1, 500), (2, 64), (3, 16)])
def test_a_frame_in_order_is_handed_out_as_its_six_chunks_would_be(seed, max_lead):
    """The frame's fast path (CutAssembler.add_level: every channel level, no row held) against
    the same frames added a channel at a time, over frames in order, repeated, overlapping, with
    gaps, and chunks of single channels between them, frames shorter and longer than the max lead:
    the same rows, counts and state."""
    rng = np.random.default_rng(seed)
    signals = np.random.default_rng(100 + seed).normal(size=(6000, len(CHANNELS)))
    level, apart = CutAssembler(max_lead=max_lead, cut="c1"), CutAssembler(max_lead=max_lead, cut="c1")
    taken = offset = 0
    while offset < 5500:
        kind = rng.choice(["frame", "frame", "frame", "again", "gap", "chunk"])
        size = int(rng.integers(1, 300 if max_lead > 100 else 2 * max_lead))
        if kind == "again":
            offset = max(0, offset - int(rng.integers(1, 100)))
        elif kind == "gap":
            offset += int(rng.integers(1, 50))
        rows = signals[offset:offset + size]
        if kind == "chunk":
            c = int(rng.integers(len(CHANNELS)))
            got, want = [level.add(CHANNELS[c], offset, rows[:, c])], [apart.add(CHANNELS[c], offset, rows[:, c])]
        else:
            fast = level.add_level(offset, rows)
            taken += fast is not None
            got = [fast] if fast is not None else [level.add(n, offset, rows[:, c]) for c, n in enumerate(CHANNELS)]
            want = [apart.add(n, offset, rows[:, c]) for c, n in enumerate(CHANNELS)]
            offset += size
        (got_rows, *got_counts), (want_rows, *want_counts) = _totals(got), _totals(want)
        assert got[0].start == want[0].start and got_counts == want_counts and _same_rows(got_rows, want_rows)
        assert level.received_end == apart.received_end
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(level.to_state().values(), apart.to_state().values()))
    assert 5 < taken  # the fast path was taken, and (gaps, repeats) not always
    a, b = level.finish(6000), apart.finish(6000)
    assert (a.start, a.samples, a.stats) == (b.start, b.samples, b.stats) and _same_rows(list(a.parts), list(b.parts))
