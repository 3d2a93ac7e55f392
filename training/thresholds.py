"""Warning and alarm thresholds, chosen on held-out data for what an operator sees per tool.

Held-out means out-of-fold scores of whole tools (``training/outoffold.py``): every cut scored by a
model that never saw its tool. The daemon decides per cut (``core/alarm.py``), on the figure
:class:`~edge_monitor.core.alarm.CutEvidence` judges it by (the median alarm score of its windows
over the tool's reference), after ``persist_cuts`` judged cuts in a row; the thresholds are chosen
on those same figures of the held-out tools' lives, judged in run order by the same code.

* Score: the one (``kl`` or ``recon``) with the higher held-out window PR-AUC of failed vs rest.
  When that is undefined (no failed window) or tied, the higher PR-AUC of degraded-or-failed vs
  healthy decides; when that is undefined or tied too, ``kl`` (the latent-space score the method
  alarms on).
* Warning and alarm: the operating point (``training/operating.py``) the stated
  :class:`~training.operating.OperatingRule` picks on the trade-off of every threshold on those
  tool lives (failing tools caught, healthy tool lives alarmed), both written into
  :attr:`Thresholds.rule` with what they achieved.
"""

from __future__ import annotations

import math

import numpy as np

from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.core.scores import WindowScores

from .metrics import SCORE_NAMES, labelled_scores, pr_auc
from .operating import HeldOutLife, OperatingPoint, OperatingRule, choose_operating_point, lives_from_cuts, trade_off
from .wear import DEGRADED, FAILED, HEALTHY

DEFAULT_SCORE = "kl"


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


def held_out_lives(scores: "WindowScores", labels: np.ndarray, cuts: np.ndarray, *, tools: np.ndarray,
                    order: np.ndarray, regimes: np.ndarray, dealings: np.ndarray | None = None) -> list[HeldOutLife]:
    """Each tool's held-out cuts in run order with both scores' cut medians (windows of cuts
    without a wear label take no part). ``dealings`` says which dealing each window was scored in
    (default: one)."""
    labels = np.asarray(labels)
    labelled = labels >= 0
    dealings = np.zeros(labels.size, int) if dealings is None else np.asarray(dealings)
    cuts, tools, order, regimes, dealings = (np.asarray(a)[labelled] for a in (cuts, tools, order, regimes, dealings))
    labels, named = labelled_scores(scores, labels)
    keys, first, inverse, windows = np.unique(np.stack([dealings, cuts]), axis=1, return_index=True,
                                              return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order_in_cut = np.argsort(inverse, kind="stable")
    medians = {name: np.array([np.median(v) for v in np.split(values[order_in_cut], np.cumsum(windows)[:-1])])
               for name, values in named.items()}
    lives = []
    for d in np.unique(dealings[first]):
        mine = dealings[first] == d
        lives += lives_from_cuts(int(d), tools[first][mine], order[first][mine], labels[first][mine],
                                 {k: v[mine] for k, v in medians.items()}, windows[mine], regimes[first][mine])
    return lives


def choose_thresholds(scores: "WindowScores", labels: np.ndarray, cuts: np.ndarray, *, tools: np.ndarray,
                      order: np.ndarray, regimes: np.ndarray, policy: AlarmPolicy,
                      rule: OperatingRule | None = None, dealings: np.ndarray | None = None) -> OperatingPoint:
    """The operating point on held-out windows: their scores and classes, their cut (any key), the
    tool (case) of that cut, the cut's place in the tool's life (run), its operating regime and
    (optionally) the dealing it was scored in, for the daemon's rule ``policy`` (its persistence
    and fresh-tool reference) and the stated ``rule``."""
    kept_labels, named = labelled_scores(scores, labels)
    if not (kept_labels == HEALTHY).any():
        raise ValueError(
            "thresholds need healthy held-out windows, and there are none: "
            "check the split and the archive's wear labels"
        )
    score, why_score = choose_score(kept_labels, named)
    lives = held_out_lives(scores, labels, cuts, tools=tools, order=order, regimes=regimes, dealings=dealings)
    if not any(any(w >= policy.min_windows for w in life.windows) for life in lives):
        raise ValueError(
            f"thresholds need held-out cuts that the alarm rule judges, and there are none: "
            f"a cut needs {policy.min_windows} stable windows; check the stable-region settings"
        )
    return choose_operating_point(trade_off(lives, score, policy), rule or OperatingRule(), policy, why_score)
