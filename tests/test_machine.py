"""One machine's pipeline: exact training windows from interleaved chunks, as batches; ordered
results (also when a batch comes back in parts), summaries, alarms and resets, rejections that
change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core.alarm import AlarmPolicy, AlarmTracker, Level, Thresholds
from edge_monitor.core.calibration import GLOBAL, regime_key
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.inbound import Command, CutEnd, CutParams, CutStart, SignalChunk
from edge_monitor.core.outbound import AlarmMessage, ScoreMessage, SummaryMessage
from edge_monitor.core.pipeline import MachinePipeline
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.steps import PipelineSpec, WindowBatch
from edge_monitor.core.topics import ProtocolError
from edge_monitor.core.windowing import WindowSpec, cut_windows

C = len(CHANNELS)
SPEC = PipelineSpec(
    window=WindowSpec(),
    stable=StableRegionSpec(),
    fs=SAMPLE_RATE_HZ,
    thresholds=Thresholds(1.0, 2.0, score="kl"),
    policy=AlarmPolicy(persist_cuts=2, reference_cuts=0, min_windows=16),
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
               end: bool = True, drop=lambda c, off: False, params: CutParams | None = None):
    """Feed one cut; returns (window batches, steps, chunk log [(channel, start, end)])."""
    windows, steps, log = [], [], []
    steps.append(p.handle(CutStart(cut, ts, SAMPLE_RATE_HZ, params)))
    for c, off, samples in chunks(signals, rng):
        if drop(c, off):
            continue
        log.append((c, off, off + samples.size))
        steps.append(p.handle(SignalChunk(cut, off, samples), channel=CHANNELS[c]))
    if end:
        steps.append(p.handle(CutEnd(cut, ts + 36, signals.shape[0])))
    for s in steps:
        windows += s.windows
    return windows, steps, log


def offsets(batches: list[WindowBatch]) -> list[int]:
    return [o for b in batches for o in b.offsets.tolist()]


def scores_of(values) -> WindowScores:
    """Scores whose kl (the alarm score of SPEC) is ``values``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return WindowScores(recon=v / 100, kl=v, channels=v[:, None] / 100 + np.arange(C))


def score_all(p: MachinePipeline, batches: list[WindowBatch], value) -> list:
    """Score every batch with ``value`` (a number, or one per window over all batches); the outputs."""
    n = sum(len(b) for b in batches)
    values = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
    outputs, at = [], 0
    for b in batches:
        outputs += p.scored(b, scores_of(values[at : at + len(b)])).outputs
        at += len(b)
    return outputs


def test_windows_are_bit_for_bit_those_of_training(cuts):
    p = MachinePipeline("m1", SPEC)
    for k, signals in enumerate(cuts):
        windows, _, _ = stream_cut(p, f"c{k}", signals, np.random.default_rng(k))
        expected = cut_windows(signals, SPEC.window, SPEC.stable)
        assert len(expected) > 0
        assert offsets(windows) == expected.starts.tolist()
        assert np.array_equal(np.concatenate([w.data for w in windows]), expected.data)
        assert all(w.cut == f"c{k}" and w.machine == "m1" for w in windows)
        assert [t for w in windows for t in w.ts.tolist()] == [1000.0 + s / SAMPLE_RATE_HZ for s in expected.starts]
        score_all(p, windows, 0.1)
        assert p.outstanding_windows == 0


def test_results_summary_and_order(cuts):
    p = MachinePipeline("m1", SPEC)
    signals = cuts[0]
    windows, steps, _ = stream_cut(p, "c0", signals, np.random.default_rng(1))
    n = sum(len(w) for w in windows)
    assert all(not s.outputs for s in steps)  # the summary waits for the cut's windows
    assert p.outstanding_windows == n and len(windows) > 1
    with pytest.raises(RuntimeError, match="scores must come back in window order"):
        p.scored(windows[1], scores_of(np.full(len(windows[1]), 0.1)))
    with pytest.raises(RuntimeError, match="scores must come back in window order"):
        p.scored(windows[0].split(1)[1], scores_of(np.full(len(windows[0]) - 1, 0.1)))  # skips one
    values = np.linspace(0.1, 0.9, n)
    outputs = score_all(p, windows, values)
    scores = [o.message for o in outputs if isinstance(o.message, ScoreMessage)]
    assert [s.offset for s in scores] == offsets(windows)
    first = scores[0]
    assert (first.cut, first.score, first.kl, first.level, first.model) == ("c0", 0.1, 0.1, "normal", "m0")
    assert first.channels == {c: 0.001 + i for i, c in enumerate(CHANNELS)}
    summary = outputs[-1].message
    assert isinstance(summary, SummaryMessage) and len(outputs) == n + 1
    expected = cut_windows(signals, SPEC.window, SPEC.stable)
    assert summary.windows == n and summary.skipped == 0 and summary.level == "normal"
    assert summary.stable[0] == expected.starts[0]
    assert summary.stable[1] >= expected.starts[-1] + SPEC.window.length - 1
    assert summary.score_median == pytest.approx(float(np.median(values)))
    assert summary.score_max == pytest.approx(0.9)


def test_each_cut_is_judged_against_the_tools_first_cut_in_its_regime(cuts):
    spec = PipelineSpec(SPEC.window, SPEC.stable, SAMPLE_RATE_HZ, Thresholds(1.5, 3.0, score="kl"),
                        AlarmPolicy(persist_cuts=2, reference_cuts=1), "m0")
    p = MachinePipeline("m1", spec)
    light, heavy = CutParams(0.75, 0.25, "cast_iron"), CutParams(1.5, 0.5, "cast_iron")
    summaries = []
    for k, (params, value) in enumerate([(light, 2.0), (heavy, 8.0), (light, 3.0), (heavy, 10.0), (light, 7.0)]):
        windows, _, _ = stream_cut(p, f"c{k}", cuts[k % 2], np.random.default_rng(40 + k), ts=1000.0 + 100 * k,
                                   params=params)
        summaries += [o.message for o in score_all(p, windows, value) if isinstance(o.message, SummaryMessage)]
    # Each regime's first cut is its reference; later cuts are judged by their growth over it.
    assert [s.judged for s in summaries] == [None, None, pytest.approx(1.5), pytest.approx(1.25), pytest.approx(3.5)]
    # 1.5 and 1.25 are not both above 1.5; 1.25 and 3.5 are not both above 1.5 either
    assert [s.level for s in summaries] == ["normal"] * 5
    p.handle(Command("reset", "operator"), now=2000.0)
    windows, _, _ = stream_cut(p, "c5", cuts[0], np.random.default_rng(50), ts=3000.0, params=light)
    assert [o.message.judged for o in score_all(p, windows, 9.0) if isinstance(o.message, SummaryMessage)] == [None]


def test_alarm_is_decided_per_cut_and_levels_follow(cuts):
    p = MachinePipeline("m1", SPEC)
    outputs, steps = [], []
    for k in range(3):  # three cuts of a worn tool, every window far above the alarm threshold
        windows, _, _ = stream_cut(p, f"c{k}", cuts[k % 2], np.random.default_rng(20 + k), ts=1000.0 + 100 * k)
        # one window at a time, so each step speaks of one window
        for w in (part for b in windows for part in (b.split(i)[1].split(1)[0] for i in range(len(b)))):
            step = p.scored(w, scores_of([5.0]))
            steps.append(step)
            outputs += step.outputs
            assert step.alarm_changed == any(isinstance(o.message, AlarmMessage) for o in step.outputs)
            assert step.alarm_changed == any(e.name == "alarm" and e.level == "warning" for e in step.events)
    alarms = [o.message for o in outputs if isinstance(o.message, AlarmMessage)]
    assert len(alarms) == 1  # persist_cuts = 2: the second cut decides, once
    a = alarms[0]
    assert (a.machine, a.state, a.cut, a.score, a.threshold, a.model) == ("m1", "alarm", "c1", 5.0, 2.0, "m0")
    assert a.since == 1100.0 + cuts[1].shape[0] / SAMPLE_RATE_HZ  # when the deciding cut ended
    summaries = [o.message for o in outputs if isinstance(o.message, SummaryMessage)]
    assert [(m.cut, m.level) for m in summaries] == [("c0", "normal"), ("c1", "alarm"), ("c2", "alarm")]
    at = next(i for i, o in enumerate(outputs) if o.message is a)
    assert outputs[at + 1].message is summaries[1]  # the transition, then the summary that shows it
    levels = {(o.message.cut, o.message.level) for o in outputs if isinstance(o.message, ScoreMessage)}
    assert levels == {("c0", "normal"), ("c1", "normal"), ("c2", "alarm")}  # the state while each was cut


def test_a_cut_with_too_few_windows_is_no_evidence(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(30))
    score_all(p, windows, 5.0)
    short = cuts[0][: 4500]  # half a cut: a few stable windows only
    windows, _, _ = stream_cut(p, "short", short, np.random.default_rng(31), ts=2000.0)
    n = sum(len(w) for w in windows)
    assert 0 < n < SPEC.policy.min_windows
    outputs = score_all(p, windows, 5.0)
    assert not any(isinstance(o.message, AlarmMessage) for o in outputs) and p.state == Level.NORMAL
    windows, _, _ = stream_cut(p, "c1", cuts[1], np.random.default_rng(32), ts=3000.0)
    outputs = score_all(p, windows, 5.0)  # with c0 it makes two cuts in a row with evidence
    assert [o.message.state for o in outputs if isinstance(o.message, AlarmMessage)] == ["alarm"]


def test_reset_waits_for_windows_being_scored(cuts):
    p = MachinePipeline("m1", SPEC, AlarmTracker.from_dict(SPEC.policy, SPEC.thresholds, {"state": "alarm"}))
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(3), end=False)
    assert windows
    step = p.handle(Command("reset", "ann"), now=5000.0)
    assert step.outputs == [] and p.state == Level.ALARM  # the old tool's windows come first
    outputs = score_all(p, windows, 5.0)
    last = outputs[-1].message
    assert isinstance(last, AlarmMessage)
    assert (last.state, last.since, last.cut, last.score, last.threshold) == ("normal", 5000.0, None, None, None)
    assert p.state == Level.NORMAL
    assert not any(isinstance(o.message, AlarmMessage) for o in outputs[:-1])  # nothing re-announced
    # already normal: the state is announced again, unchanged (it clears a stale retained alarm)
    again = p.handle(Command("reset", "ann"), now=5001.0).outputs
    assert [(o.message.state, o.message.since) for o in again] == [("normal", 5000.0)]


def test_restored_alarm_is_not_announced_again(cuts):
    tracker = AlarmTracker.from_dict(SPEC.policy, SPEC.thresholds, {"state": "alarm", "since": 1.0, "cut": "old"})
    p = MachinePipeline("m1", SPEC, tracker)
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(4))
    outputs = score_all(p, windows, 0.1)
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
    starts = offsets(windows)
    assert set(starts) < set(expected.starts.tolist())  # fewer windows, and only training's ones
    holes = [(s, e) for c, s, e in log if c == 2]
    covered = np.zeros(signals.shape[0], bool)
    for s, e in holes:
        covered[s:e] = True
    for w in windows:  # no window spans a lost row, and its data is the cut's own
        for offset, data in zip(w.offsets.tolist(), w.data):
            assert covered[offset : offset + 64].all()
            assert np.array_equal(data, signals[offset : offset + 64])
    assert any(e.name == "gap" and e.level == "warning" for s in steps for e in s.events)
    outputs = score_all(p, windows, 0.1)
    assert outputs[-1].message.skipped == (~covered).sum()


def test_start_closes_an_open_cut_and_summarises_it(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, _ = stream_cut(p, "a", cuts[0], np.random.default_rng(6), end=False)
    step = p.handle(CutStart("b", 2000.0, SAMPLE_RATE_HZ))
    assert [e.name for e in step.events] == ["cut_end", "cut_start"]
    assert step.events[0].fields["aborted"] is True and step.events[0].level == "warning"
    more = step.windows  # the lookahead: windows decided only now the cut closed
    outputs = score_all(p, windows + more, 0.1)
    summary = outputs[-1].message
    assert isinstance(summary, SummaryMessage) and summary.cut == "a"
    assert summary.windows == sum(len(w) for w in windows + more)
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
    assert offsets(windows) == offsets(again)


def test_duplicates_are_counted_not_windowed(cuts):
    p = MachinePipeline("m1", SPEC)
    signals = cuts[0]
    p.handle(CutStart("d", 0.0, SAMPLE_RATE_HZ))
    windows, dup = [], 0
    for c, off, samples in chunks(signals, np.random.default_rng(9)):
        for _ in range(2):  # every chunk delivered twice (QoS 1)
            s = p.handle(SignalChunk("d", off, samples), channel=CHANNELS[c])
            windows += s.windows
            dup += s.duplicate_samples
    windows += p.handle(CutEnd("d", 36.0, signals.shape[0])).windows
    assert dup == signals.size
    assert offsets(windows) == cut_windows(signals, SPEC.window, SPEC.stable).starts.tolist()


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


def test_a_command_with_an_id_already_applied_is_not_applied_again(cuts):
    p = MachinePipeline("m1", SPEC, AlarmTracker.from_dict(SPEC.policy, SPEC.thresholds, {"state": "alarm"}))
    first = p.handle(Command("reset", "ann", "r-1"), now=100.0)
    assert [o.message.state for o in first.outputs] == ["normal"]
    # the machine alarms again; the same reset delivered once more must not clear that
    p.tracker = AlarmTracker.from_dict(SPEC.policy, SPEC.thresholds, {"state": "alarm", "since": 150.0})
    again = p.handle(Command("reset", "ann", "r-1"), now=200.0)
    assert again.outputs == [] and p.state == Level.ALARM
    assert [e.name for e in again.events] == ["command_repeated"]
    assert p.handle(Command("reset", "ann", "r-2"), now=201.0).outputs[0].message.state == "normal"


def test_resets_are_rate_limited_per_machine(cuts):
    p = MachinePipeline("m1", SPEC)
    p.handle(Command("reset", "ann"), now=100.0)
    with pytest.raises(ProtocolError, match=r"at most one per 1 s \(limits.min_reset_interval_s\)"):
        p.handle(Command("reset", "ann"), now=100.5)
    assert p.handle(Command("reset", "ann"), now=101.5).outputs  # after the interval


def test_windows_that_keep_scoring_non_finite_show_a_sensor_fault(cuts):
    p = MachinePipeline("m1", SPEC)
    windows, _, _ = stream_cut(p, "c0", cuts[0], np.random.default_rng(3))
    n = sum(len(b) for b in windows)
    values = np.full(n, 0.5)
    values[10:20] = np.inf  # a sensor out of range for 10 windows
    outputs, at, faults, nonfinite = [], 0, [], 0
    for b in windows:
        step = p.scored(b, scores_of(values[at : at + len(b)]))
        outputs += step.outputs
        faults += step.faults
        nonfinite += step.nonfinite_scores
        at += len(b)
    assert nonfinite == 10 and len(faults) == 10 and "non-finite" in faults[0]
    scores = [o.message for o in outputs if isinstance(o.message, ScoreMessage)]
    assert [s.level for s in scores[10:13]] == ["normal"] * 3  # one or three: not yet a fault
    assert {s.level for s in scores[13:23]} == {"sensor_fault"}
    assert {s.level for s in scores[23:]} == {"normal"}  # the fourth finite window in a row clears it
    alarms = [o.message for o in outputs if isinstance(o.message, AlarmMessage)]
    assert [(a.state, a.score, a.wear) for a in alarms] == [("sensor_fault", None, "normal"), ("normal", None, None)]
    assert not p.idle or p.stream.is_open or p.level != "sensor_fault"  # a fault keeps the pipeline in memory
    summary = outputs[-1].message
    assert isinstance(summary, SummaryMessage) and summary.windows == n


def test_memory_stays_bounded_whatever_the_offsets():
    """A chunk near the largest offset, and a cut end far past what arrived, used to materialise
    every lost row of the jump (about 48 MB at 10^6 samples); now a bounded buffer."""
    import tracemalloc

    p = MachinePipeline("m1", SPEC)
    p.handle(CutStart("c0", 0.0, SAMPLE_RATE_HZ))
    p.handle(SignalChunk("c0", 0, np.ones(64)), channel=CHANNELS[0])
    tracemalloc.start()
    try:
        p.handle(SignalChunk("c0", 999_000, np.ones(64)), channel=CHANNELS[1])
        p.handle(SignalChunk("c0", 999_500, np.ones(64)), channel=CHANNELS[0])
        step = p.handle(CutEnd("c0", 4000.0, 1_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4e6, f"peak {peak / 1e6:.1f} MB"
    assert step.gap_samples > 0 and not step.windows
