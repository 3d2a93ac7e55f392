"""One machine's pipeline: exact training windows from interleaved chunks, message ids, ordered
results, summaries, alarms and resets, rejections that change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.alarm import AlarmPolicy, AlarmTracker, Level, Thresholds
from edge_monitor.core.calibration import GLOBAL, regime_key
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.pipeline import MachinePipeline, PipelineSpec, WindowScore
from edge_monitor.core.inbound import Command, CutEnd, CutParams, CutStart, SignalChunk
from edge_monitor.core.outbound import AlarmMessage, ScoreMessage, SummaryMessage
from edge_monitor.core.topics import ProtocolError
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core.windowing import WindowSpec, cut_windows

C = len(CHANNELS)
SPEC = PipelineSpec(
    window=WindowSpec(),
    stable=StableRegionSpec(),
    fs=SAMPLE_RATE_HZ,
    thresholds=Thresholds(1.0, 2.0, score="kl"),
    policy=AlarmPolicy(k=3, n=5),
    model_id="m0",
)


@pytest.fixture(scope="module")
def cuts() -> list[np.ndarray]:
    s = synthesize(seed=0, cases=[13], max_runs=2)
    return [np.stack([r[c] for c in CHANNELS], axis=1) for r in s.records]


def chunks(signals: np.ndarray, rng: np.random.Generator, max_size: int = 400):
    """(channel, offset, samples) covering the cut, each channel in its own random chunk sizes,
    channels interleaved at random."""
    n = signals.shape[0]
    queues = []
    for c in range(C):
        edges = [0]
        while edges[-1] < n:
            edges.append(min(n, edges[-1] + int(rng.integers(1, max_size + 1))))
        queues.append([(c, a, signals[a:b, c]) for a, b in zip(edges[:-1], edges[1:])])
    out = []
    while any(queues):
        q = queues[int(rng.choice([i for i in range(C) if queues[i]]))]
        out.append(q.pop(0))
    return out


def stream_cut(p: MachinePipeline, cut: str, signals: np.ndarray, rng, ts: float = 1000.0,
               end: bool = True, drop=lambda c, off: False, mid0: int = 1):
    """Feed one cut; returns (windows, steps, chunk log [(channel, start, end, mid)])."""
    windows, steps, log = [], [], []
    steps.append(p.handle(CutStart(cut, ts, SAMPLE_RATE_HZ)))
    for i, (c, off, samples) in enumerate(chunks(signals, rng)):
        if drop(c, off):
            continue
        mid = mid0 + i
        log.append((c, off, off + samples.size, mid))
        steps.append(p.handle(SignalChunk(cut, off, samples), channel=CHANNELS[c], mid=mid))
    if end:
        steps.append(p.handle(CutEnd(cut, ts + 36, signals.shape[0])))
    for s in steps:
        windows += s.windows
    return windows, steps, log


def score_of(value: float) -> WindowScore:
    return WindowScore(recon=value / 100, kl=value, channels=tuple(value / 100 + i for i in range(C)))


def test_windows_are_bit_for_bit_those_of_training(cuts):
    p = MachinePipeline("m1", SPEC)
    for k, signals in enumerate(cuts):
        windows, _, _ = stream_cut(p, f"c{k}", signals, np.random.default_rng(k))
        expected = cut_windows(signals, SPEC.window, SPEC.stable)
        assert len(expected) > 0
        assert [w.offset for w in windows] == expected.starts.tolist()
        assert np.array_equal(np.stack([w.data for w in windows]), expected.data)
        assert all(w.cut == f"c{k}" and w.machine == "m1" for w in windows)
        assert [w.ts for w in windows] == [1000.0 + s / SAMPLE_RATE_HZ for s in expected.starts]
        for w in windows:
            p.scored(w, score_of(0.1))


def test_each_window_names_exactly_the_messages_that_carried_it(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, log = stream_cut(p, "c0", cuts[1], np.random.default_rng(7))
    assert windows
    for w in windows:
        a, b = w.offset, w.offset + SPEC.window.length
        expected = sorted({mid for _, s, e, mid in log if s < b and e > a})
        assert list(w.message_ids) == expected
        assert {c for c, s, e, mid in log if mid in w.message_ids} == set(range(C))


def test_results_summary_and_order(cuts):
    p = MachinePipeline("m1", SPEC)
    signals = cuts[0]
    windows, steps, _ = stream_cut(p, "c0", signals, np.random.default_rng(1))
    assert all(not s.outputs for s in steps)  # the summary waits for the cut's windows
    assert p.outstanding_windows == len(windows)
    with pytest.raises(RuntimeError, match="scores must come back in window order"):
        p.scored(windows[1], score_of(0.1))
    values = np.linspace(0.1, 0.9, len(windows))
    outputs = []
    for w, v in zip(windows, values):
        outputs += p.scored(w, score_of(float(v))).outputs
    scores = [o.message for o in outputs if isinstance(o.message, ScoreMessage)]
    assert [s.offset for s in scores] == [w.offset for w in windows]
    first = scores[0]
    assert (first.cut, first.score, first.kl, first.level, first.model) == ("c0", 0.1, 0.1, "normal", "m0")
    assert first.channels == {c: 0.001 + i for i, c in enumerate(CHANNELS)}
    summary = outputs[-1].message
    assert isinstance(summary, SummaryMessage) and len(outputs) == len(windows) + 1
    expected = cut_windows(signals, SPEC.window, SPEC.stable)
    assert summary.windows == len(windows) and summary.skipped == 0 and summary.level == "normal"
    assert summary.stable[0] == expected.starts[0]
    assert summary.stable[1] >= expected.starts[-1] + SPEC.window.length - 1
    assert summary.score_median == pytest.approx(float(np.median(values)))
    assert summary.score_max == pytest.approx(0.9)


def test_alarm_raises_once_and_levels_follow(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(2))
    outputs = []
    for w in windows:
        step = p.scored(w, score_of(5.0))
        outputs += step.outputs
        assert step.alarm_changed == any(isinstance(o.message, AlarmMessage) for o in step.outputs)
    alarms = [o.message for o in outputs if isinstance(o.message, AlarmMessage)]
    assert len(alarms) == 1
    a = alarms[0]
    assert (a.machine, a.state, a.cut, a.score, a.threshold, a.model) == ("m1", "alarm", "c0", 5.0, 2.0, "m0")
    assert a.since == windows[2].ts  # the third window above the threshold (k = 3)
    levels = [o.message.level for o in outputs if isinstance(o.message, ScoreMessage)]
    assert levels[:3] == ["normal", "normal", "alarm"] and set(levels[3:]) == {"alarm"}
    assert outputs[-1].message.level == "alarm"


def test_reset_waits_for_windows_being_scored(cuts):
    p = MachinePipeline("m1", SPEC, AlarmTracker.from_dict(SPEC.policy, SPEC.thresholds, {"state": "alarm"}))
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(3), end=False)
    assert windows
    step = p.handle(Command("reset", "ann"), now=5000.0)
    assert step.outputs == [] and p.state == Level.ALARM  # the old tool's windows come first
    outputs = []
    for w in windows:
        outputs += p.scored(w, score_of(5.0)).outputs
    last = outputs[-1].message
    assert isinstance(last, AlarmMessage)
    assert (last.state, last.since, last.cut, last.score, last.threshold) == ("normal", 5000.0, None, None, None)
    assert p.state == Level.NORMAL
    assert not any(isinstance(o.message, AlarmMessage) for o in outputs[:-1])  # nothing re-announced
    assert p.handle(Command("reset", "ann"), now=5001.0).outputs == []  # already normal


def test_restored_alarm_is_not_announced_again(cuts):
    tracker = AlarmTracker.from_dict(SPEC.policy, SPEC.thresholds, {"state": "alarm", "since": 1.0, "cut": "old"})
    p = MachinePipeline("m1", SPEC, tracker)
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(4))
    outputs = [o for w in windows for o in p.scored(w, score_of(0.1)).outputs]
    assert not any(isinstance(o.message, AlarmMessage) for o in outputs)
    assert outputs[-1].message.level == "alarm"  # wear does not heal


def test_gap_skips_windows_and_is_reported(cuts):
    signals = cuts[1]
    expected = cut_windows(signals, SPEC.window, SPEC.stable)
    lost = (4000, 4400)
    p = MachinePipeline("m1", SPEC)
    # drop the vib_table chunks that start inside the lost span
    windows, steps, log = stream_cut(
        p, "c0", signals, np.random.default_rng(5), drop=lambda c, off: c == 2 and lost[0] <= off < lost[1]
    )
    gap = sum(s.gap_samples for s in steps)
    assert gap > 0
    starts = [w.offset for w in windows]
    assert set(starts) < set(expected.starts.tolist())  # fewer windows, and only training's ones
    holes = [(s, e) for c, s, e, _ in log if c == 2]
    covered = np.zeros(signals.shape[0], bool)
    for s, e in holes:
        covered[s:e] = True
    for w in windows:  # no window spans a lost row, and its data is the cut's own
        assert covered[w.offset : w.offset + 64].all()
        assert np.array_equal(w.data, signals[w.offset : w.offset + 64])
    assert any(name == "gap" for s in steps for name, _ in s.events)
    outputs = [o for w in windows for o in p.scored(w, score_of(0.1)).outputs]
    assert outputs[-1].message.skipped == (~covered).sum()


def test_start_closes_an_open_cut_and_summarises_it(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, _ = stream_cut(p, "a", cuts[0], np.random.default_rng(6), end=False)
    step = p.handle(CutStart("b", 2000.0, SAMPLE_RATE_HZ))
    assert [name for name, _ in step.events] == ["cut_end", "cut_start"]
    assert step.events[0][1]["aborted"] is True
    more = step.windows  # the lookahead: windows decided only now the cut closed
    outputs = [o for w in windows + more for o in p.scored(w, score_of(0.1)).outputs]
    summary = outputs[-1].message
    assert isinstance(summary, SummaryMessage) and summary.cut == "a"
    assert summary.windows == len(windows) + len(more)
    assert p.stream.current.cut == "b"


def test_rejections_leave_the_pipeline_unchanged(cuts):
    p = MachinePipeline("m1", SPEC)
    with pytest.raises(ProtocolError, match="cut 'x' has fs 500 Hz but the model was trained at 250 Hz"):
        p.handle(CutStart("x", 0.0, 500.0))
    with pytest.raises(ProtocolError, match="chunk for cut 'x', which never started"):
        p.handle(SignalChunk("x", 0, np.zeros(3)), channel="smcAC")
    windows, _, _ = stream_cut(p, "x", cuts[0], np.random.default_rng(8))
    with pytest.raises(ProtocolError, match="chunk for cut 'x', which already ended"):
        p.handle(SignalChunk("x", 0, np.zeros(3)), channel="smcAC")
    with pytest.raises(ProtocolError, match="cut 'x' already ended"):
        p.handle(CutStart("x", 0.0, SAMPLE_RATE_HZ))
    assert p.handle(CutEnd("x", 1.0, 9000)).windows == []  # a redelivered end changes nothing
    # the same cut streamed by a clean pipeline gives the same windows
    q = MachinePipeline("m1", SPEC)
    again, _, _ = stream_cut(q, "x", cuts[0], np.random.default_rng(8))
    assert [w.offset for w in windows] == [w.offset for w in again]


def test_duplicates_are_counted_not_windowed(cuts):
    p = MachinePipeline("m1", SPEC)
    signals = cuts[0]
    p.handle(CutStart("d", 0.0, SAMPLE_RATE_HZ))
    windows, dup = [], 0
    for c, off, samples in chunks(signals, np.random.default_rng(9)):
        for _ in range(2):  # every chunk delivered twice (QoS 1)
            s = p.handle(SignalChunk("d", off, samples), channel=CHANNELS[c], mid=off)
            windows += s.windows
            dup += s.duplicate_samples
    windows += p.handle(CutEnd("d", 36.0, signals.shape[0])).windows
    assert dup == signals.size
    assert [w.offset for w in windows] == cut_windows(signals, SPEC.window, SPEC.stable).starts.tolist()


def test_windows_carry_their_cut_regime(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, _ = stream_cut(p, "plain", cuts[0], np.random.default_rng(10))
    assert {w.regime for w in windows} == {GLOBAL}  # no params: the reference of all regimes
    params = CutParams(doc=0.75, feed=0.25, material="steel")
    p.handle(CutStart("steel", 0.0, SAMPLE_RATE_HZ, params))
    windows = []
    for c, off, samples in chunks(cuts[0], np.random.default_rng(11)):
        windows += p.handle(SignalChunk("steel", off, samples), channel=CHANNELS[c]).windows
    windows += p.handle(CutEnd("steel", 36.0, cuts[0].shape[0])).windows
    assert windows and {w.regime for w in windows} == {regime_key(0.75, 0.25, 2)}
