"""Which evidence per cut tells a wearing tool best: a study on stored cross-validation scores.

``python -m training evidence-study DIR [DIR ...]`` reads what ``crossval`` stored in each DIR
(``oof_scores.npz``, ``crossval.json``: every window's out-of-fold scores per repeat, and the folds)
and compares ways of turning a cut's window scores into the one figure the alarm judges, all
under the same operating rule: for every fold, the rule picks the alarm threshold on the other
folds' tool lives (``operating.trade_off``), and the fold's tools are decided by the tracker's
raising rule at that threshold. Nothing is trained. It prints, per archive and figure, the failing
tools caught in time, late and missed, flagged early, the tools alarmed on a healthy cut and the
never-failed tools alarmed: mean ± sd over repeats.

The figures (each a growth over the tool's own reference, so that ~1 is "as when new"):

- ``median / 1st cut``: the daemon's (``core/alarm.CutEvidence``): the cut's median score over
  that of the tool's first cut with evidence;
- ``median / 2 cuts``: over the median of its first two cuts;
- ``q75`` and ``q90 / 1st cut``: an upper quantile of the cut's window scores over the same quantile
  of the first cut's (wear shows first in a growing tail: bursts of acoustic emission);
- ``exceedance``: the share of the cut's windows above the first cut's 90th percentile, over the
  10 % expected of a cut like it (the reference cut's window distribution, not its median alone);
- ``channel max``: each channel's median reconstruction error over the first cut's, the largest
  of the six (one sensor showing wear that the pooled score dilutes);
- ``median / 1st cut, each cut``: the daemon's figure raised by one cut instead of two.

Choices are kept only where they help on archives not used to make them; real machines, not the
synthetic generator, are the target (docs/training.md, "Evidence per cut").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.core.scores import WindowScores

from .metrics import labelled_scores
from .operating import DEFAULT_GROWTH, HeldOutLife, OperatingRule, choose_operating_point, trade_off
from .thresholds import choose_score

MIN_WINDOWS = AlarmPolicy().min_windows
SHOWN = ("failing_caught_in_time", "failing_alarmed_late", "failing_missed", "failing_warned_early",
         "tools_alarmed_on_a_healthy_cut", "never_failed_tools_alarmed")


@dataclass(frozen=True)
class Figure:
    name: str
    references: int  # cuts with evidence that make the reference
    persist: int
    value: Callable[[np.ndarray, np.ndarray, np.ndarray, list], float]  # (scores, channels, ref scores, ref channels)


def _ratio(stat: Callable[[np.ndarray], float]):
    def value(scores, channels, ref_scores, ref_channels) -> float:
        return float(stat(scores) / max(np.median([stat(r) for r in ref_scores]), 1e-12))
    return value


def _exceedance(scores, channels, ref_scores, ref_channels) -> float:
    level = np.quantile(np.concatenate(ref_scores), 0.9)
    return float((scores > level).mean() / 0.1)


def _channel_max(scores, channels, ref_scores, ref_channels) -> float:
    ref = np.median(np.concatenate(ref_channels), axis=0)
    return float(np.max(np.median(channels, axis=0) / np.maximum(ref, 1e-12)))


FIGURES = (
    Figure("median / 1st cut (daemon)", 1, 2, _ratio(np.median)),
    Figure("median / 2 cuts", 2, 2, _ratio(np.median)),
    Figure("q75 / 1st cut", 1, 2, _ratio(lambda v: np.quantile(v, 0.75))),
    Figure("q90 / 1st cut", 1, 2, _ratio(lambda v: np.quantile(v, 0.9))),
    Figure("exceedance of 1st cut's q90", 1, 2, _exceedance),
    Figure("channel max / 1st cut", 1, 2, _channel_max),
    Figure("median / 1st cut, each cut", 1, 1, _ratio(np.median)),
)


def figure_lives(figure: Figure, dealing: int, values: np.ndarray, channels: np.ndarray, cut: np.ndarray,
                 case: np.ndarray, run: np.ndarray, label: np.ndarray) -> list[HeldOutLife]:
    """Each tool's cuts in run order with ``figure``'s value as its judged figure (reference cuts
    and cuts with fewer than the daemon's ``min_windows`` windows carry no evidence: 0 windows)."""
    lives = []
    for c in np.unique(case):
        mine = np.flatnonzero(case == c)
        cuts = sorted(np.unique(cut[mine]), key=lambda k: run[mine][cut[mine] == k][0])
        ref_scores, ref_channels, runs, classes, figures, windows = [], [], [], [], [], []
        for k in cuts:
            at = mine[cut[mine] == k]
            runs.append(int(run[at[0]]))
            classes.append(int(label[at[0]]))
            evidence = at.size >= MIN_WINDOWS and np.median(values[at]) >= 0.05
            if evidence and len(ref_scores) < figure.references:
                ref_scores.append(values[at])
                ref_channels.append(channels[at])
                evidence = False
            figures.append(figure.value(values[at], channels[at], ref_scores, ref_channels) if evidence else 0.0)
            windows.append(at.size if evidence else 0)
        # the figure itself, under a score name thresholds accept
        lives.append(HeldOutLife(dealing, int(c), runs, classes, {"recon": figures}, windows, ["" for _ in runs]))
    return lives


def study_archive(where: Path, rule: OperatingRule, figures=FIGURES) -> dict[str, dict[str, list[float]]]:
    """Per figure, per reported count, its value per repeat (summed over the folds)."""
    report = json.loads((where / "crossval.json").read_text())
    with np.load(where / "oof_scores.npz") as data:
        stored = {k: data[k] for k in data.files}
    if "channels" not in stored:
        raise ValueError(f"{where}: oof_scores.npz has no per-channel scores (written before they were kept); "
                         f"run `python -m training crossval` again")
    cut, case, run, label = stored["cut"], stored["case"], stored["run"], stored["label"]
    keep = label >= 0
    results: dict[str, dict[str, list[float]]] = {f.name: {k: [] for k in SHOWN} for f in figures}
    for r, repeat in enumerate(report["repeats"]):
        scores = {"recon": stored["recon"][r], "kl": stored["kl"][r]}
        channels = stored["channels"][r].astype(float)
        for f in figures:
            totals = dict.fromkeys(SHOWN, 0)
            for fold in repeat["folds"]:
                inside = keep & np.isin(case, fold)
                outside = keep & ~np.isin(case, fold)
                other = WindowScores(scores["recon"][outside], scores["kl"][outside], channels[outside])
                labels, named = labelled_scores(other, label[outside])
                score, _ = choose_score(labels, named)
                policy = AlarmPolicy(persist_cuts=f.persist, reference_cuts=0, min_windows=MIN_WINDOWS)
                args = lambda m: (scores[score][m], channels[m], cut[m], case[m], run[m], label[m])  # noqa: E731
                train = figure_lives(f, 0, *args(outside))
                try:
                    alarm = choose_operating_point(trade_off(train, "recon", policy), rule, policy).thresholds.alarm
                except ValueError:  # no judged healthy cut on the other folds: the rule's growth by half
                    alarm = DEFAULT_GROWTH
                held = trade_off(figure_lives(f, 0, *args(inside)), "recon", policy, [alarm])
                for k in SHOWN:
                    totals[k] += int(held.counts[k][0, 0])
            for k in SHOWN:
                results[f.name][k].append(totals[k])
    results["_failing"] = {"n": [len(np.unique(case[label == 2]))] * len(report["repeats"])}
    return results


def format_study(name: str, results: dict) -> str:
    def show(values: list[float]) -> str:
        v = np.asarray(values, dtype=float)
        return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if v.size > 1 else f"{v.mean():.1f}"

    failing = results.get("_failing", {}).get("n", [0])[0]
    lines = [f"{name}: of {failing} failing tools; mean ± sd over {len(results.get('_failing', {}).get('n', []))} repeats",
             f"{'figure':<30} {'in time':>10} {'late':>10} {'missed':>10} {'early':>10} {'healthy alarmed':>16} "
             f"{'never-failed':>13}"]
    for fig, counts in results.items():
        if fig.startswith("_"):
            continue
        lines.append(f"{fig:<30} " + " ".join(f"{show(counts[k]):>{w}}" for k, w in zip(SHOWN, (10, 10, 10, 10, 16, 13))))
    return "\n".join(lines)


def run(dirs: list[Path], rule: OperatingRule) -> dict:
    out = {}
    for where in dirs:
        for f in ("crossval.json", "oof_scores.npz"):
            if not (where / f).is_file():
                raise ValueError(f"{where}: {f} is missing (written by `python -m training crossval`)")
        out[str(where)] = results = study_archive(where, rule)
        print(format_study(str(where), results), flush=True)
        print(flush=True)
    return out
