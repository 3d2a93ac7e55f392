"""Detection metrics of the anomaly scores: failed tool (class 2) against everything else.

PR-AUC is scikit-learn's ``average_precision_score``: the step-wise sum of precision over recall
increments. It is not the trapezoidal area under the PR curve, which interpolates linearly
between operating points and overstates precision on small, imbalanced sets like this one; the
no-skill baseline of either is the positive fraction.

A metric that is undefined on the data (no failed window, or nothing but failed windows) is
``None`` (JSON ``null``) instead of an error, so a sparse slice of the breakdown cannot sink a
whole evaluation. Windows with a negative label (unlabelled cuts) are left out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from edge_monitor.core.channels import MATERIALS
from edge_monitor.core.scores import WindowScores

from .wear import FAILED

SCORE_NAMES: tuple[str, ...] = ("kl", "recon")
PARAMS: tuple[str, ...] = ("doc", "feed", "material")


def clean_scores(values: np.ndarray, name: str) -> np.ndarray:
    """Scores as finite floats. +inf (an overflowing KL) becomes the largest float so rankings
    hold; NaN has no rank and is an error naming the score."""
    values = np.asarray(values, dtype=float)
    if np.isnan(values).any():
        raise ValueError(f"{name} score: {int(np.isnan(values).sum())} window(s) scored NaN")
    return np.nan_to_num(values, posinf=np.finfo(float).max, neginf=np.finfo(float).min)


def _binary_metric(metric, positive: np.ndarray, values: np.ndarray) -> float | None:
    if positive.all() or not positive.any():
        return None
    return float(metric(positive, values))


def pr_auc(positive: np.ndarray, values: np.ndarray) -> float | None:
    """Average precision of ``values`` for the boolean target; None when a class is absent."""
    return _binary_metric(average_precision_score, np.asarray(positive, dtype=bool), values)


def roc_auc(positive: np.ndarray, values: np.ndarray) -> float | None:
    """ROC-AUC of ``values`` for the boolean target; None when a class is absent."""
    return _binary_metric(roc_auc_score, np.asarray(positive, dtype=bool), values)


def binary_metrics(positive: np.ndarray, named_scores: dict[str, np.ndarray]) -> dict:
    """PR-AUC and ROC-AUC of each score for a boolean target, with its no-skill precision."""
    positive = np.asarray(positive, dtype=bool)
    out: dict = {
        "n_windows": int(positive.size),
        "n_failed": int(positive.sum()),
        "no_skill": float(positive.mean()) if positive.size else None,
    }
    for name, values in named_scores.items():
        out[f"pr_auc_{name}"] = pr_auc(positive, values)
    for name, values in named_scores.items():
        out[f"roc_auc_{name}"] = roc_auc(positive, values)
    return out


def labelled_scores(
    scores: "WindowScores", labels: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and cleaned scores (by name) of the labelled windows."""
    labels = np.asarray(labels)
    named = {name: clean_scores(scores.score(name), name) for name in SCORE_NAMES}
    for name, values in named.items():
        if values.shape != labels.shape:
            raise ValueError(f"{name} score has shape {values.shape} but labels have {labels.shape}")
    keep = labels >= 0
    return labels[keep], {name: values[keep] for name, values in named.items()}


def anomaly_metrics(scores: "WindowScores", labels: np.ndarray) -> dict:
    """Failed vs rest for both scores: ``pr_auc_kl``, ``pr_auc_recon``, ``roc_auc_kl``,
    ``roc_auc_recon``, ``no_skill`` (the failed fraction), ``n_windows``, ``n_failed``."""
    labels, named = labelled_scores(scores, labels)
    return binary_metrics(labels == FAILED, named)


def param_key(param: str, value: float) -> str:
    """Readable, JSON-safe key of one cutting-parameter value (``0.75``, ``cast_iron``)."""
    if param == "material":
        return MATERIALS.get(int(value), f"material_{int(value)}")
    return f"{round(float(value), 6):g}"


def metrics_by_param(
    scores: "WindowScores",
    labels: np.ndarray,
    doc: Sequence[float],
    feed: Sequence[float],
    material: Sequence[int],
) -> dict:
    """:func:`anomaly_metrics` of each depth of cut, feed and material (per-window parameter arrays):
    ``{"doc": {"0.75": {...}, "1.5": {...}}, "feed": {...}, "material": {"cast_iron": {...}}}``."""
    raw_labels = np.asarray(labels)
    columns = {"doc": np.asarray(doc), "feed": np.asarray(feed), "material": np.asarray(material)}
    for param, column in columns.items():
        if column.shape != raw_labels.shape:
            raise ValueError(f"{param} has shape {column.shape} but labels have {raw_labels.shape}")
    keep = raw_labels >= 0
    labels, named = labelled_scores(scores, raw_labels)
    out: dict = {}
    for param in PARAMS:
        column = columns[param][keep]
        # Rounded so float noise from the archive cannot split one setting into two groups.
        rounded = np.round(column.astype(float), 6)
        out[param] = {
            param_key(param, value): binary_metrics(
                labels[rounded == value] == FAILED,
                {name: v[rounded == value] for name, v in named.items()},
            )
            for value in np.unique(rounded)
        }
    return out


def spread(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """Mean, standard deviation and the values of each of ``keys`` over ``rows`` (repeats of an
    experiment); a None value (an undefined figure) is left out of the mean and sd."""
    out = {}
    for key in keys:
        values = np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)
        finite = values[np.isfinite(values)]
        out[key] = {"mean": float(finite.mean()) if finite.size else None,
                    "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                    "values": [None if np.isnan(v) else float(v) for v in values]}
    return out
