"""Stable-region detector, windower and scaler: offline and incremental runs keep the same windows."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.stable_region import (
    StableRegionDetector,
    StableRegionSpec,
    stable_blocks,
    stable_segments,
)
from edge_monitor.core.windowing import CutWindower, Windows, WindowSpec, cut_windows
from edge_monitor.model.scaling import MinMaxScaler

SPEC = StableRegionSpec()
WIN = WindowSpec()


def make_cut(n=9000, entry=2000, exit_=7500, ramp=200, seed=0, overshoot=0.0):
    """Air, a ramp into a steady level (optionally with a decaying overshoot), a ramp out."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    env = np.clip((t - entry) / ramp, 0, 1) * np.clip((exit_ - t) / ramp, 0, 1)
    after = np.clip(t - entry - ramp, 0, None)
    env = env * (1 + overshoot * np.exp(-after / 300.0) * np.cos(after / 40.0) * (t > entry + ramp))
    base = 0.5 + env[:, None] * np.linspace(1.0, 2.0, 6)[None, :]
    return base + 0.03 * rng.standard_normal((n, 6))


def push_in_chunks(x, rng, max_chunk=700):
    windower = CutWindower(WIN, SPEC)
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, max_chunk))
        parts.append(windower.push(x[i : i + k]))
        i += k
    parts.append(windower.finish())
    return Windows.concat(parts, WIN.length, x.shape[1]), windower


def test_finds_the_steady_part_only():
    x = make_cut(overshoot=0.4)
    (segment,) = stable_segments(x[:, 1], SPEC)
    start, stop = segment
    assert 2200 <= start <= 3200, "entry ramp and overshoot excluded, steady part reached soon"
    assert 7000 <= stop <= 7300, "exit ramp excluded"


def test_air_only_cut_has_no_stable_region():
    x = make_cut(entry=10_000, exit_=20_000)
    assert stable_segments(x[:, 1], SPEC) == []
    assert len(cut_windows(x, WIN, SPEC)) == 0


def test_cut_running_to_the_end_keeps_its_tail():
    x = make_cut(exit_=20_000)
    (segment,) = stable_segments(x[:, 1], SPEC)
    assert segment[1] == 9000 // 64 * 64  # the trailing partial block is never stable


@pytest.mark.parametrize("seed", range(8))
def test_incremental_equals_offline_for_any_chunking(seed):
    rng = np.random.default_rng(seed)
    x = make_cut(seed=seed, entry=int(rng.integers(500, 3000)), exit_=int(rng.integers(6000, 9500)),
                 overshoot=float(rng.uniform(0, 0.5)))
    offline = cut_windows(x, WIN, SPEC)
    assert len(offline) > 20
    live, _ = push_in_chunks(x, rng, max_chunk=int(rng.integers(2, 2000)))
    np.testing.assert_array_equal(live.starts, offline.starts)
    np.testing.assert_array_equal(live.data, offline.data)


def test_windows_are_stride_apart_inside_segments_and_copy_the_signal():
    x = make_cut()
    w = cut_windows(x, WindowSpec(length=64, stride=32), SPEC)
    assert np.all(np.diff(w.starts) >= 32)
    for s, data in zip(w.starts[:5], w.data[:5]):
        np.testing.assert_array_equal(data, x[s : s + 64])


@pytest.mark.parametrize("lookahead", [0, 1, 2, 3, 5])
def test_look_ahead_is_bounded(lookahead):
    """A block is decided once ``lookahead`` blocks after it have arrived, not at the cut's end."""
    spec = StableRegionSpec(lookahead=lookahead)
    assert spec.lookahead_samples == lookahead * spec.block
    x = make_cut(exit_=20_000)
    det = StableRegionDetector(spec)
    det.push(x[:5000, 1])
    assert det.decided == 5000 // spec.block - lookahead
    windower = CutWindower(WIN, spec)
    got = windower.push(x[:5000])
    assert len(got) and got.starts[-1] + WIN.length <= 5000 - spec.lookahead_samples
    assert got.starts[-1] + WIN.length > 5000 - spec.lookahead_samples - spec.block, "and no later"


def test_the_neighbourhood_takes_half_width_blocks_before_and_lookahead_after():
    """A lone spike in the load: block i is unstable exactly when the spike lies within
    i - half_width .. i + lookahead."""
    x = make_cut(entry=500, exit_=20_000, ramp=50)
    spike = 60  # block
    x[spike * 64 : (spike + 1) * 64, 1] *= 3
    for h, a in [(3, 3), (3, 1), (1, 3), (2, 0), (0, 2)]:
        stable = stable_blocks(x[:, 1], StableRegionSpec(half_width=h, lookahead=a))
        unstable = np.flatnonzero(~stable[40:80]) + 40
        np.testing.assert_array_equal(unstable, np.arange(spike - a, spike + h + 1), err_msg=f"{h=} {a=}")


def test_a_spec_without_lookahead_takes_the_default():
    assert StableRegionSpec.from_dict({"half_width": 2}).lookahead == StableRegionSpec().lookahead
    assert StableRegionSpec.from_dict({"half_width": 2, "lookahead": 1}).lookahead == 1
    with pytest.raises(ValueError, match="stable_region.lookahead"):
        StableRegionSpec(lookahead=-1)


def test_windowing_memory_stays_bounded_on_a_long_cut():
    rng = np.random.default_rng(3)
    windower = CutWindower(WIN, SPEC)
    windower.push(make_cut(n=2000, exit_=10**9))
    steady = 2.5 + 0.03 * rng.standard_normal((300_000, 6))
    for i in range(0, len(steady), 1000):
        windower.push(steady[i : i + 1000])
    assert windower._buffer.shape[0] < 2000  # only samples a future window can still use are kept


@pytest.mark.parametrize("seed", range(3))
def test_a_checkpoint_s_rows_never_change_after_it_is_taken(seed):
    """to_state hands out the rows held as a view (the writer's thread encodes them later, while
    the loop goes on pushing): whatever is pushed after, through stores filled and replaced many
    times, the snapshot's rows keep their bytes, and a windower restored from them goes on as the
    original."""
    rng = np.random.default_rng(seed)
    x = make_cut(seed=seed)
    windower = CutWindower(WIN, SPEC)
    taken, at = [], 0
    while at < len(x):
        k = int(rng.integers(1, 700))
        windower.push(x[at : at + k])
        at += k
        state = windower.to_state()
        taken.append((state, state["buffer"].tobytes(), at))
    assert len({id(s["buffer"].base) for s, _, _ in taken}) > 3  # the store was replaced along the way
    for state, rows, upto in taken:
        assert state["buffer"].tobytes() == rows and not state["buffer"].flags.writeable
    state, _, upto = taken[len(taken) // 2]
    original = CutWindower(WIN, SPEC)
    original.push(x[:upto])
    restored = CutWindower.from_state(WIN, SPEC, state)
    went_on, resumed = ([w.push(x[upto:]), w.finish()] for w in (original, restored))
    assert all(a.starts.tolist() == b.starts.tolist() and np.array_equal(a.data, b.data) for a, b in zip(went_on, resumed))
    assert sum(len(w) for w in resumed) > 0


def test_gap_marked_nan_splits_the_region():
    x = make_cut(exit_=20_000)
    x[5000:5100] = np.nan  # samples lost in transport
    w = cut_windows(x, WIN, SPEC)
    assert len(w) > 20 and np.isfinite(w.data).all()
    assert not np.any((w.starts < 5100) & (w.starts + WIN.length > 5000)), "no window spans the gap"
    assert np.any(w.starts >= 5100), "windowing resumes after the gap"


def test_scaler_maps_training_range_to_unit_and_round_trips():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(50, 64, 6))
    scaler = MinMaxScaler.fit(train)
    scaled = scaler.transform(train)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.min(axis=(0, 1)), 0, atol=1e-6)
    np.testing.assert_allclose(scaled.max(axis=(0, 1)), 1, atol=1e-6)
    assert scaler.transform(train * 3).max() > 1, "values beyond the healthy range are not clipped"
    again = MinMaxScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(train), scaled)
    with pytest.raises(ValueError, match="'min' and 'max'"):
        MinMaxScaler.from_dict({"min": [0.0]})


def test_spec_validation_names_the_key():
    with pytest.raises(ValueError, match="stable_region.channel"):
        StableRegionSpec(channel="spindle")
    with pytest.raises(ValueError, match="stable_region.blok: unknown key"):
        StableRegionSpec.from_dict({"blok": 3})
    with pytest.raises(ValueError, match="window.length"):
        WindowSpec(length=1)
