"""Warning and alarm thresholds, chosen on held-out data for what an operator sees per tool.

Held-out means out-of-fold scores of whole tools (``training/outoffold.py``): every cut scored by a
model that never saw its tool. The daemon decides per cut (``core/alarm.py``), on the figure
:class:`~edge_monitor.core.alarm.CutEvidence` judges it by (the median alarm score of its windows
over the tool's reference), after ``persist_cuts`` judged cuts in a row; the thresholds are chosen
on those same figures of the held-out tools' lives, judged in run order by the same code.

The rule (also written, with its figures, into :attr:`Thresholds.rule`):

* Score: the one (``kl`` or ``recon``) with the higher held-out window PR-AUC of failed vs rest.
  When that is undefined (no failed window) or tied, the higher PR-AUC of degraded-or-failed vs
  healthy decides; when that is undefined or tied too, ``kl`` (the latent-space score the method
  alarms on).
* Warning: :data:`MARGIN` above the quiet level, the highest level at which ``persist_cuts``
  consecutive judged cuts of a held-out tool could flag a healthy one. First of all an operator
  must never see a fresh or healthy tool flagged; the margin stands for the healthy cuts not seen
  yet. When no healthy cut is judged (every one is a reference), :data:`DEFAULT_GROWTH` over the
  tool's start.
* Alarm: the threshold that best separates failed from degraded judged cuts (Youden's J: the
  true-positive rate on failed cuts minus the false-positive rate on degraded ones, which does not
  depend on how many cuts of each class there are), never below the warning. Failed cuts without
  degraded ones: the warning. Degraded without failed: :data:`MARGIN` above the highest degraded
  cut. No worn cut: half again the warning — archives with few failing tools still get an alarm
  level that healthy and worn tools have not reached.

Each threshold from the held-out cuts lies between figures, so ``>`` and ``>=`` agree on every
held-out cut.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import roc_curve

from edge_monitor.core.alarm import AlarmPolicy, CutEvidence, Thresholds
from edge_monitor.core.scores import WindowScores

from .metrics import SCORE_NAMES, labelled_scores, pr_auc
from .wear import DEGRADED, FAILED, HEALTHY

DEFAULT_SCORE = "kl"
DEFAULT_GROWTH = 1.5  # warning on growth over the tool's reference when no healthy cut is judged
MARGIN = 0.1  # fraction of a threshold's base kept as headroom for cuts not seen in training


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


def quiet_level(medians: Sequence[Sequence[float]], classes: Sequence[Sequence[int]], persist: int) -> float | None:
    """The highest level at which the daemon's rule would flag a healthy cut of these tools: each
    tool's held-out cut medians in run order, and their classes. A cut is flagged when it and the
    ``persist - 1`` cuts before it all exceed the threshold, so a healthy cut i is flagged below the
    smallest median of that run of cuts. Any threshold at or above the result flags no healthy cut;
    None when no tool has ``persist`` cuts up to a healthy one."""
    level = None
    for values, kinds in zip(medians, classes):
        for i in range(persist - 1, len(values)):
            if kinds[i] == HEALTHY:
                run = min(values[i - persist + 1 : i + 1])
                level = run if level is None else max(level, run)
    return level


def _above(base: float) -> float:
    return float(base + MARGIN * abs(base))


def judged_lives(medians: np.ndarray, windows: np.ndarray, classes: np.ndarray, tool: np.ndarray,
                 when: np.ndarray, regimes: np.ndarray, policy: AlarmPolicy) -> list[tuple[list[float], list[int]]]:
    """Each tool's judged cuts in run order: the figure the monitor judges each by (the core's own
    :class:`CutEvidence`: median over the tool's reference) and the cut's class. Reference cuts and
    cuts without evidence are left out, as the monitor skips them."""
    lives = []
    for t in np.unique(tool):
        idx = np.flatnonzero(tool == t)
        evidence = CutEvidence(policy)
        figures, kinds = [], []
        for i in idx[np.argsort(when[idx], kind="stable")]:
            value = evidence.judge(float(medians[i]), int(windows[i]), str(regimes[i]))
            if value is not None:
                figures.append(value)
                kinds.append(int(classes[i]))
        lives.append((figures, kinds))
    return lives


def choose_thresholds(scores: "WindowScores", labels: np.ndarray, cuts: np.ndarray, *, tools: np.ndarray,
                      order: np.ndarray, regimes: np.ndarray, policy: AlarmPolicy) -> Thresholds:
    """Thresholds from held-out windows: their scores and classes, their cut (any key), the tool
    (case) of that cut, the cut's place in the tool's life (run) and its operating regime, for the
    daemon's rule ``policy`` (its persistence and fresh-tool reference)."""
    labelled = np.asarray(labels) >= 0  # windows of cuts without a wear label take no part
    cuts, tools, order, regimes = (np.asarray(a)[labelled] for a in (cuts, tools, order, regimes))
    labels, named = labelled_scores(scores, labels)
    if not (labels == HEALTHY).any():
        raise ValueError(
            "thresholds need healthy held-out windows, and there are none: "
            "check the split and the archive's wear labels"
        )
    score, why_score = choose_score(labels, named)
    keys, first, inverse, windows = np.unique(cuts, return_index=True, return_inverse=True, return_counts=True)
    order_in_cut = np.argsort(inverse, kind="stable")
    values = named[score][order_in_cut]
    medians = np.array([np.median(v) for v in np.split(values, np.cumsum(windows)[:-1])])
    lives = judged_lives(medians, windows, labels[first], tools[first], order[first], regimes[first], policy)
    figures = np.array([f for life, _ in lives for f in life])
    classes = np.array([k for _, kinds in lives for k in kinds], dtype=int)
    healthy = figures[classes == HEALTHY]
    persist = policy.persist_cuts
    quiet = quiet_level([life for life, _ in lives], [kinds for _, kinds in lives], persist)
    if healthy.size:
        if quiet is None:  # no tool with enough judged cuts: every healthy cut must stay below
            quiet, how = float(healthy.max()), f"the highest of the {healthy.size} held-out healthy cuts"
        else:
            how = (f"the level at which {persist} consecutive held-out cuts of a tool could flag a healthy one "
                   f"({healthy.size} healthy cuts of {len(lives)} tools)")
        warning = _above(quiet)
        why_warning = f"Warning above {warning:.4g}, {MARGIN:.0%} above {how}: no held-out healthy tool warns."
    elif policy.reference_cuts:
        # Short tool lives: every healthy cut is a reference. The figures are growth over the tool's
        # own start, which has a meaning of its own without any model: warn at half again.
        warning = DEFAULT_GROWTH
        why_warning = (f"Warning above {warning:.4g}, the default growth over the tool's first cut(s): no held-out "
                       f"healthy cut is judged (each tool's healthy cuts are its reference).")
    else:
        raise ValueError(
            f"thresholds need held-out healthy cuts that the alarm rule judges, and there are none: "
            f"a cut needs {policy.min_windows} stable windows; check the stable-region settings"
        )

    worn = classes >= DEGRADED
    fitted = youden_threshold(classes[worn] == FAILED, figures[worn])
    if fitted:
        alarm, j = fitted
        source = (f"the threshold best separating the {int((classes == FAILED).sum())} failed from the "
                  f"{int((classes == DEGRADED).sum())} degraded held-out cuts (Youden's J {j:.2f})")
    elif (classes == FAILED).any():  # failed cuts and no degraded one: every judged worn cut is failed
        alarm = warning
        source = "the warning threshold (there are no held-out degraded cuts to separate the failed ones from)"
    elif worn.any():
        alarm = _above(float(figures[worn].max()))
        source = (f"{MARGIN:.0%} above the highest of the {int(worn.sum())} held-out degraded cuts "
                  f"(there are no failed ones to separate)")
    else:
        alarm = float(warning + 0.5 * abs(warning))
        source = "half again the warning threshold (there are no held-out worn cuts)"
    if alarm < warning:
        why_alarm = f"Alarm at the warning threshold: {source} was {alarm:.4g}, below the warning."
        alarm = warning
    elif alarm == warning:
        why_alarm = f"Alarm at {source}."
    else:
        why_alarm = f"Alarm above {alarm:.4g}, {source}."
    figure = ("the median score of a cut's windows" if policy.reference_cuts == 0 else
              f"the median score of a cut's windows over that of the tool's first {policy.reference_cuts} "
              f"cut(s) in the same regime")
    return Thresholds(
        score=score, warning=float(warning), alarm=float(alarm),
        rule=" ".join((why_score, why_warning, why_alarm,
                       f"Both on {figure}, raised after {persist} judged cuts in a row, as the monitor decides.")),
    )
