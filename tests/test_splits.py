"""Splits: the cut split never shares a cut between sides; both are stratified and reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from training.splits import make_split


def fake_windows(seed=0):
    rng = np.random.default_rng(seed)
    cut_class = np.array([0] * 60 + [1] * 90 + [2] * 12)
    window_cut = np.repeat(np.arange(cut_class.size), rng.integers(40, 90, cut_class.size))
    return window_cut, cut_class


def test_cut_split_keeps_every_cut_on_one_side_and_stratifies():
    window_cut, cut_class = fake_windows()
    split = make_split("cut", window_cut, cut_class, seed=0)
    sides = [set(window_cut[idx]) for idx in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(map(len, sides)) == cut_class.size
    for side in sides[1:]:
        assert cut_class[list(side)].tolist().count(2) >= 1, "failed cuts on every side"
    all_idx = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(all_idx), np.arange(window_cut.size))
    assert 0.6 < len(sides[0]) / cut_class.size < 0.72


def test_window_split_is_stratified_by_window_class():
    window_cut, cut_class = fake_windows()
    split = make_split("window", window_cut, cut_class, seed=0)
    labels = cut_class[window_cut]
    for idx in (split.train, split.val, split.test):
        assert abs((labels[idx] == 2).mean() - (labels == 2).mean()) < 0.01
    assert split.train.size / window_cut.size == pytest.approx(0.67, abs=0.01)


def test_splits_are_reproducible_and_seed_dependent():
    window_cut, cut_class = fake_windows()
    a, b = (make_split("cut", window_cut, cut_class, seed=1) for _ in range(2))
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, make_split("cut", window_cut, cut_class, seed=2).test)


def test_unknown_split_kind_is_named():
    with pytest.raises(ValueError, match="split must be one of cut, window"):
        make_split("cuts", *fake_windows())
