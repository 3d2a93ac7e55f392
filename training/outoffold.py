"""Out-of-fold scores by tool: every window scored by a model that never saw its tool.

The archive's cases (one tool each) are dealt into ``folds`` groups, stratified so that the tools
that reach failure spread over the folds (``folds`` = the number of cases is leave-one-case-out).
For each fold a model is trained on the healthy cuts of the other folds' tools only (early stopping
on a fifth of those cuts) and scores every window of its own fold's tools. Thresholds chosen on
these scores have seen whole tool lives of tools the scoring model did not know, as the monitor
will on a new tool: ``fit`` chooses the bundle's thresholds so, and ``crossval`` measures by it.

``within`` limits everything to some windows (``fit`` keeps its test cuts out, so that ``evaluate``
on the same archive stays held out from the thresholds too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_monitor.core.alarm import AlarmPolicy, Thresholds
from edge_monitor.core.scores import WindowScores

from .dataset import WindowSet
from .splits import Split
from .thresholds import choose_thresholds
from .wear import FAILED

VAL_FRACTION = 0.2  # of the training tools' healthy cuts, for early stopping


def case_folds(cases: list[int], failing: set[int], folds: int, seed: int) -> list[list[int]]:
    """``cases`` dealt into ``folds`` groups; the ``failing`` ones first, so they spread evenly."""
    cases = sorted(set(cases))
    if not 2 <= folds <= len(cases):
        raise ValueError(f"--folds must be 2 to the number of cases ({len(cases)}), got {folds}")
    rng = np.random.default_rng(seed)
    order = [*rng.permutation([c for c in cases if c in failing]), *rng.permutation([c for c in cases if c not in failing])]
    groups: list[list[int]] = [[] for _ in range(folds)]
    for i, case in enumerate(order):
        groups[i % folds].append(int(case))
    return [sorted(g) for g in groups]


def fold_split(ws: WindowSet, train_cases: list[int], seed: int, within: np.ndarray) -> Split:
    """Training and early-stopping windows: the healthy cuts of ``train_cases``, by cut."""
    cuts = np.unique(ws.cut[within][np.isin(ws.cut_field("case")[within], train_cases) & ws.healthy[within]])
    if cuts.size < 2:
        raise ValueError(f"cases {train_cases} hold fewer than two healthy cuts: nothing to train on")
    rng = np.random.default_rng(seed)
    val_cuts = rng.choice(cuts, size=max(1, round(VAL_FRACTION * cuts.size)), replace=False)
    pick = lambda chosen: np.flatnonzero(np.isin(ws.cut, chosen))  # noqa: E731
    return Split("case", seed, pick(np.setdiff1d(cuts, val_cuts)), pick(val_cuts), np.empty(0, int))


@dataclass
class OutOfFold:
    groups: list[list[int]]  # the cases of each fold
    scores: WindowScores  # calibrated, every window in ``within`` (nan elsewhere)
    raw: WindowScores  # uncalibrated, for the method's figures
    scorers: list  # each fold's WindowScorer


def out_of_fold(ws: WindowSet, hp, config, folds: int, seed: int, within: np.ndarray | None = None,
                verbose: int = 0, progress=None) -> OutOfFold:
    """Train one model per fold of tools and score the windows of the fold's own tools."""
    from edge_monitor.model.tf_inference import tf_scorer

    from .fit import train_model

    within = np.arange(len(ws)) if within is None else np.asarray(within)
    case_of_window = ws.cut_field("case")
    failing = set(case_of_window[within][ws.labels[within] == FAILED].tolist())
    groups = case_folds(case_of_window[within].tolist(), failing, folds, seed)
    n, n_channels = len(ws), ws.data.shape[2]
    empty = lambda: WindowScores(np.full(n, np.nan), np.full(n, np.nan), np.full((n, n_channels), np.nan))  # noqa: E731
    oof, raw, scorers = empty(), empty(), []
    for k, test_cases in enumerate(groups):
        train_cases = [c for g in groups if g is not test_cases for c in g]
        fold_seed = seed * 100 + k
        callbacks = [progress.model(f"fold {k + 1} of {folds}, dealing seed {seed}")] if progress else None
        trained = train_model(ws, fold_split(ws, train_cases, fold_seed, within), hp, config, seed=fold_seed,
                              verbose=verbose, callbacks=callbacks)
        scorer = tf_scorer(trained.model, trained.scaler, trained.calibration)
        mine = within[np.isin(case_of_window[within], test_cases)]
        for target, values in ((oof, scorer.score(ws.data[mine], ws.regimes[mine])), (raw, scorer.raw_scores(ws.data[mine]))):
            target.recon[mine], target.kl[mine], target.channels[mine] = values.recon, values.kl, values.channels
        scorers.append(scorer)
    return OutOfFold(groups, oof, raw, scorers)


def thresholds_on(ws: WindowSet, scores: WindowScores, windows: np.ndarray, policy: AlarmPolicy,
                  rule=None) -> Thresholds:
    """The bundle's thresholds (``thresholds.choose_thresholds``) chosen on ``windows``' scores."""
    return choose_thresholds(scores.subset(windows), ws.labels[windows], ws.cut[windows],
                             tools=ws.cut_field("case")[windows], order=ws.cut_field("run")[windows],
                             regimes=ws.regimes[windows], policy=policy, rule=rule).thresholds
