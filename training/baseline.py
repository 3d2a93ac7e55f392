"""A plain baseline: per-window mean and standard deviation of each channel (12 features).

It tells how hard an archive is: if these features alone separate failed tools, any model looks
good on it. Two scores on the same features, both evaluated failed-vs-rest on the test windows:

- ``distance``: unsupervised, like the β-VAE: features standardised with the healthy training
  windows, score = Euclidean distance from the healthy centroid.
- ``logistic``: supervised logistic regression (failed vs rest) on all training windows, an upper
  reference the unsupervised models are not expected to reach.

``trend_spearman_distance`` is the mean over cases of the Spearman correlation between a cut's
median distance and its VB: whether the wear trend is visible at all.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from .dataset import WindowSet
from .splits import Split
from .wear import FAILED, HEALTHY


def mean_std_features(windows: np.ndarray) -> np.ndarray:
    """(n, length, channels) windows -> (n, 2 * channels): every channel's mean, then its std."""
    return np.concatenate([windows.mean(axis=1), windows.std(axis=1)], axis=1)


def mean_std_baseline(windowset: WindowSet, split: Split) -> dict:
    """PR-AUC / ROC-AUC of failed vs rest on ``split.test`` for both baseline scores."""
    features = mean_std_features(windowset.data)
    labels = windowset.labels
    train_healthy = split.train[labels[split.train] == HEALTHY]
    if train_healthy.size < 2:
        raise ValueError("mean_std_baseline: the training split holds fewer than 2 healthy windows")
    test_failed = labels[split.test] == FAILED
    if not test_failed.any() or test_failed.all():
        raise ValueError(
            "mean_std_baseline: the test split needs failed and non-failed windows "
            f"(it has {int(test_failed.sum())} failed of {test_failed.size})"
        )

    centre = features[train_healthy].mean(axis=0)
    scale = features[train_healthy].std(axis=0)
    z = (features - centre) / np.where(scale > 0, scale, 1.0)
    distance = np.linalg.norm(z, axis=1)

    logistic = LogisticRegression(max_iter=2000).fit(z[split.train], labels[split.train] == FAILED)
    p_failed = logistic.predict_proba(z[split.test])[:, 1]

    return {
        "split": split.kind,
        "seed": split.seed,
        "n_train": int(split.train.size),
        "n_test": int(split.test.size),
        "n_test_failed": int(test_failed.sum()),
        "no_skill": float(test_failed.mean()),
        "pr_auc_distance": float(average_precision_score(test_failed, distance[split.test])),
        "roc_auc_distance": float(roc_auc_score(test_failed, distance[split.test])),
        "pr_auc_logistic": float(average_precision_score(test_failed, p_failed)),
        "roc_auc_logistic": float(roc_auc_score(test_failed, p_failed)),
        "trend_spearman_distance": _trend(windowset, distance),
    }


def _trend(windowset: WindowSet, score: np.ndarray) -> float:
    """Mean over cases (3+ scored cuts, VB not constant) of Spearman(cut median score, cut VB)."""
    cuts = np.unique(windowset.cut)
    medians = np.array([np.median(score[windowset.cut == c]) for c in cuts])
    case = np.array([windowset.archive.cuts[c].case for c in cuts])
    vb = windowset.cut_vb[cuts]
    rhos = []
    for k in np.unique(case):
        member = case == k
        if member.sum() >= 3 and np.ptp(vb[member]) > 0:
            rhos.append(spearmanr(medians[member], vb[member]).statistic)
    return float(np.mean(rhos)) if rhos else float("nan")
