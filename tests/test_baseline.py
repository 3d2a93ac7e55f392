"""The mean/std baseline runs on a small synthetic archive and reports sane figures."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.synthetic import write_synthetic
from training.baseline import mean_std_baseline, mean_std_features
from training.dataset import prepare_windows
from training.splits import make_split


def test_features_are_channel_means_then_stds():
    windows = np.random.default_rng(0).normal(size=(3, 64, 6))
    features = mean_std_features(windows)
    assert features.shape == (3, 12)
    assert np.allclose(features[:, :6], windows.mean(axis=1))
    assert np.allclose(features[:, 6:], windows.std(axis=1))


def test_baseline_scores_a_small_archive(tmp_path):
    path = tmp_path / "mill.mat"
    write_synthetic(path, seed=0, cases=[3, 11, 13, 14], max_runs=8)
    windowset = prepare_windows(read_archive(path))
    split = make_split("cut", windowset.cut, windowset.cut_class, seed=0)
    result = mean_std_baseline(windowset, split)
    assert result["no_skill"] == pytest.approx(np.mean(windowset.failed[split.test]))
    for key in ("pr_auc_distance", "roc_auc_distance", "pr_auc_logistic", "roc_auc_logistic"):
        assert 0.0 <= result[key] <= 1.0
    assert -1.0 <= result["trend_spearman_distance"] <= 1.0
    assert result["n_test"] == split.test.size and result["n_test_failed"] > 0


def test_baseline_needs_failed_windows_in_the_test_split(tmp_path):
    path = tmp_path / "mill.mat"
    write_synthetic(path, seed=0, cases=[1, 2], max_runs=6)  # no failed tool
    windowset = prepare_windows(read_archive(path))
    split = make_split("cut", windowset.cut, windowset.cut_class, seed=0)
    with pytest.raises(ValueError, match="failed and non-failed"):
        mean_std_baseline(windowset, split)
