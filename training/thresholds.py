"""Warning and alarm thresholds, chosen on held-out windows: windows that did not fit the model,
i.e. every validation window and the degraded and failed windows of the training side
(``training.fit.threshold_windows``). Below, "validation" means those held-out windows.

The rule (also written, with its figures, into :attr:`Thresholds.rule`):

* Score: the one (``kl`` or ``recon``) with the higher validation PR-AUC of failed vs rest. When
  that is undefined (no failed validation window) or tied, the higher PR-AUC of degraded-or-failed
  vs healthy decides; when that is undefined or tied too, ``kl`` (the latent-space score the
  method alarms on).
* Alarm: the threshold that maximises F1 of failed vs rest; without failed validation windows,
  the 99.5th percentile of the healthy validation scores.
* Warning: the threshold that maximises Youden's J (true-positive rate minus false-positive rate)
  of degraded-or-failed vs healthy; without degraded or failed validation windows, the 97.5th
  percentile of the healthy validation scores. Capped at the alarm threshold, so a window that
  alarms has always also passed the warning level. Not F1: worn windows are the majority of the
  validation data, so F1 is maximised by flagging nearly everything; J does not depend on how
  many windows of each class there are.

A level is reached when the score is above its threshold. Each optimal threshold lies halfway
between the lowest score it flags and the highest score it does not, so ``>`` and ``>=`` agree on
every validation window and new data gets a margin on both sides.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from edge_monitor.core.alarm import Thresholds
from edge_monitor.core.scores import WindowScores

from .metrics import SCORE_NAMES, labelled_scores, pr_auc
from .wear import DEGRADED, FAILED, HEALTHY

DEFAULT_SCORE = "kl"
ALARM_FALLBACK_PERCENTILE = 99.5
WARNING_FALLBACK_PERCENTILE = 97.5


def f1_threshold(positive: np.ndarray, values: np.ndarray) -> tuple[float, float] | None:
    """The threshold (flag when above it) maximising F1 of ``positive``, and that F1; None when
    either class is absent."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    precision, recall, candidates = precision_recall_curve(positive, values)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    # Among equal F1 the highest threshold: the same detection quality with fewer alarms.
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    return _midpoint_below(candidates[best], values), float(f1[best])


def youden_threshold(positive: np.ndarray, values: np.ndarray) -> tuple[float, float] | None:
    """The threshold (flag when above it) maximising TPR - FPR of ``positive``, and that J; None
    when either class is absent."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    fpr, tpr, candidates = roc_curve(positive, values)
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[-1])
    lowest_flagged = min(candidates[best], float(values.max()))  # roc_curve's first candidate is inf
    return _midpoint_below(lowest_flagged, values), float(j[best])


def _midpoint_below(lowest_flagged: float, values: np.ndarray) -> float:
    """Halfway between the lowest flagged score and the highest score below it."""
    unflagged = values[values < lowest_flagged]
    if unflagged.size:
        return float((lowest_flagged + unflagged.max()) / 2)
    return float(np.nextafter(lowest_flagged, -np.inf))


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _better(aucs: dict[str, float | None]) -> str | None:
    """The score with the strictly higher AUC; None when undefined or tied."""
    a, b = (aucs[name] for name in SCORE_NAMES)
    if a is None or b is None or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
        return None
    return SCORE_NAMES[0] if a > b else SCORE_NAMES[1]


def choose_score(labels: np.ndarray, named: dict[str, np.ndarray]) -> tuple[str, str]:
    """The score to alarm on and the sentence saying why."""
    other = lambda name: next(n for n in SCORE_NAMES if n != name)  # noqa: E731
    failed = {name: pr_auc(labels == FAILED, named[name]) for name in SCORE_NAMES}
    name = _better(failed)
    if name:
        return name, (
            f"Alarms on {name}, the score with the higher held-out PR-AUC of failed vs rest "
            f"({_fmt(failed[name])} against {_fmt(failed[other(name)])} for {other(name)})."
        )
    worn = {name: pr_auc(labels >= DEGRADED, named[name]) for name in SCORE_NAMES}
    why = "undefined" if failed[DEFAULT_SCORE] is None else f"tied at {_fmt(failed[DEFAULT_SCORE])}"
    name = _better(worn)
    if name:
        return name, (
            f"Alarms on {name}: the held-out PR-AUC of failed vs rest is {why}, and {name} has "
            f"the higher PR-AUC of degraded-or-failed vs healthy ({_fmt(worn[name])} against "
            f"{_fmt(worn[other(name)])} for {other(name)})."
        )
    return DEFAULT_SCORE, (
        f"Alarms on {DEFAULT_SCORE}, the default latent-space score: the held-out PR-AUCs of "
        f"failed vs rest ({why}) and of degraded-or-failed vs healthy do not separate the two scores."
    )


def choose_thresholds(scores: "WindowScores", labels: np.ndarray) -> Thresholds:
    """Thresholds from the scores and classes of the held-out windows (all classes)."""
    labels, named = labelled_scores(scores, labels)
    if not (labels == HEALTHY).any():
        raise ValueError(
            "thresholds need healthy held-out windows, and there are none: "
            "check the split and the archive's wear labels"
        )
    score, why_score = choose_score(labels, named)
    values = named[score]
    healthy = values[labels == HEALTHY]

    fitted = f1_threshold(labels == FAILED, values)
    if fitted:
        alarm, f1 = fitted
        why_alarm = (
            f"Alarm above {alarm:.4g}, the threshold maximising F1 of failed vs rest on the "
            f"held-out windows (F1 {f1:.2f})."
        )
    else:
        alarm = float(np.percentile(healthy, ALARM_FALLBACK_PERCENTILE))
        why_alarm = (
            f"Alarm above {alarm:.4g}, the {ALARM_FALLBACK_PERCENTILE:g}th percentile of the healthy "
            f"held-out windows (they hold no failed window)."
        )

    fitted = youden_threshold(labels >= DEGRADED, values)
    if fitted:
        warning, j = fitted
        source = (
            f"the threshold maximising Youden's J of degraded-or-failed vs healthy on the "
            f"held-out windows (J {j:.2f})"
        )
    else:
        warning = float(np.percentile(healthy, WARNING_FALLBACK_PERCENTILE))
        source = (
            f"the {WARNING_FALLBACK_PERCENTILE:g}th percentile of the healthy held-out windows "
            f"(they hold no degraded or failed window)"
        )
    if warning > alarm:
        why_warning = f"Warning at the alarm threshold: {source} was {warning:.4g}, above the alarm."
        warning = alarm
    else:
        why_warning = f"Warning above {warning:.4g}, {source}."
    return Thresholds(
        score=score, warning=float(warning), alarm=float(alarm),
        rule=" ".join((why_score, why_alarm, why_warning)),
    )
