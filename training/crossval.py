"""Cross-validation by tool: honest tool-level figures, with their spread over repeats.

A test split of cuts leaves each tool's life in pieces, and holds about two failed cuts, so neither
tool-level outcomes nor window PR-AUC can be trusted from one split. Here the archive's cases (one
tool each) are dealt into ``folds`` groups, stratified so that the tools that reach failure spread
over the folds (``folds`` = the number of cases is leave-one-case-out). For each fold a model is
trained on the healthy cuts of the other folds' tools only (early stopping on a fifth of those
cuts); it scores every window of its own fold's tools, so each window of the archive gets an
out-of-fold score from a model that never saw its tool.

Thresholds for a fold are chosen, by the bundle's own rule (``thresholds.choose_thresholds``), on
the out-of-fold scores of the *other* folds' tools; the fold's tools are then replayed through the
daemon's own pipeline and alarm rule (``toollife.replay_tools``) with the fold's model and those
thresholds. Every tool of the archive thus gets an honest tool-life outcome. ``repeats`` deals the
tools anew (another seed) and the report gives the mean and standard deviation over repeats of the
window metrics (raw and calibrated, failed vs rest, over all out-of-fold windows) and of the
tool-level counts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.archive.mill import Archive, read_archive
from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.core.channels import SAMPLE_RATE_HZ
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.steps import PipelineSpec

from .dataset import WindowSet, prepare_windows
from .fit import PRESETS, describe_archive
from .metrics import anomaly_metrics, spread
from .outoffold import out_of_fold, thresholds_on
from .toollife import ToolLife, format_tool_table, replay_tools, tool_totals
from .wear import HEALTHY

REPORTED = ("pr_auc_recon", "pr_auc_kl", "raw_pr_auc_recon", "raw_pr_auc_kl", "no_skill",
            "failing_tools", "failing_caught_in_time", "failing_alarmed_late", "failing_missed",
            "tools_alarmed_on_a_healthy_cut", "tools_warned_on_a_healthy_cut", "never_failed_tools_alarmed")


@dataclass
class Repeat:
    seed: int
    folds: list[list[int]]
    metrics: dict  # window metrics of all out-of-fold scores
    tools: list[ToolLife]
    thresholds: list[dict]  # per fold
    scores: WindowScores  # out-of-fold calibrated scores of every window

    def figures(self) -> dict:
        return {**{k: self.metrics.get(k) for k in ("pr_auc_recon", "pr_auc_kl", "no_skill")},
                "raw_pr_auc_recon": self.metrics["raw"]["pr_auc_recon"],
                "raw_pr_auc_kl": self.metrics["raw"]["pr_auc_kl"], **tool_totals(self.tools)}


def run_repeat(archive: Archive, ws: WindowSet, preset: str, folds: int, seed: int, verbose: int = 0) -> Repeat:
    """One dealing of the tools into folds: out-of-fold scores, thresholds and tool lives."""
    chosen = PRESETS[preset]
    oof = out_of_fold(ws, chosen.hyperparams, chosen.training, folds, seed, verbose=verbose)
    metrics = {**anomaly_metrics(oof.scores, ws.labels), "raw": anomaly_metrics(oof.raw, ws.labels)}
    case_of_window = ws.cut_field("case")
    policy = AlarmPolicy()
    tools, thresholds = [], []
    for k, (test_cases, scorer) in enumerate(zip(oof.groups, oof.scorers)):
        th = thresholds_on(ws, oof.scores, np.flatnonzero(~np.isin(case_of_window, test_cases)), policy)
        thresholds.append({"fold": k, "cases": test_cases, **th.to_dict()})
        spec = PipelineSpec(ws.window, ws.stable, SAMPLE_RATE_HZ, th, policy, f"crossval-{seed}-{k}")
        tools += replay_tools(archive, ws.cut_vb, ws.cut_class, spec,
                              lambda b, s=scorer: s.score(b.data, b.regime), cases=test_cases)
    tools.sort(key=lambda t: t.case)
    return Repeat(seed, oof.groups, metrics, tools, thresholds, oof.scores)


def summarise(repeats: list[Repeat]) -> dict:
    """Mean and standard deviation over repeats of every reported figure."""
    return spread([r.figures() for r in repeats], REPORTED)


def format_crossval(summary: dict, n_repeats: int, folds: int) -> str:
    def show(key: str, digits: int = 3) -> str:
        s = summary[key]
        if s["mean"] is None:
            return "-"
        sd = "" if s["sd"] is None else f" ± {s['sd']:.{digits}f}"
        return f"{s['mean']:.{digits}f}{sd}"

    return "\n".join([
        f"cross-validation by tool: {folds} folds, {n_repeats} repeat(s); mean ± sd over repeats",
        f"window PR-AUC failed vs rest (out of fold): recon {show('pr_auc_recon')}, kl {show('pr_auc_kl')}; "
        f"raw recon {show('raw_pr_auc_recon')}, raw kl {show('raw_pr_auc_kl')}; no-skill {show('no_skill')}",
        f"failing tools {show('failing_tools', 1)}: caught in time {show('failing_caught_in_time', 1)}, "
        f"late {show('failing_alarmed_late', 1)}, missed {show('failing_missed', 1)}",
        f"tools alarmed on a healthy cut {show('tools_alarmed_on_a_healthy_cut', 1)}, warned on a healthy cut "
        f"{show('tools_warned_on_a_healthy_cut', 1)}; never-failed tools alarmed {show('never_failed_tools_alarmed', 1)}",
    ])


def crossval(archive_path: str | Path, out: str | Path, preset: str = "quick", folds: int = 4,
             repeats: int = 5, seed: int = 0) -> dict:
    """The ``crossval`` command: writes ``crossval.json`` in ``out`` and prints the report."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    archive = read_archive(archive_path)
    print(describe_archive(archive), flush=True)
    ws = prepare_windows(archive)
    if not (ws.labels == HEALTHY).any():
        raise ValueError(f"{archive_path}: no healthy windows to train on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for r in range(repeats):
        started = time.monotonic()
        rep = run_repeat(archive, ws, preset, folds, seed + r)
        results.append(rep)
        print(f"\nrepeat {r + 1}/{repeats} (seed {seed + r}, folds {rep.folds}, {time.monotonic() - started:.0f} s)",
              flush=True)
        print(format_tool_table(rep.tools, tool_totals(rep.tools)), flush=True)
    summary = summarise(results)
    report = {
        "archive": str(archive_path), "archive_sha256": archive.sha256, "preset": preset, "folds": folds,
        "repeats": [{"seed": r.seed, "folds": r.folds, "figures": r.figures(), "thresholds": r.thresholds,
                     "tools": [t.to_dict() for t in r.tools]} for r in results],
        "summary": summary,
        "rule": f"the daemon's default alarm policy {AlarmPolicy().to_dict()}",
    }
    (out / "crossval.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    _save_scores(out / "oof_scores.npz", ws, results)
    print("\n" + format_crossval(summary, repeats, folds), flush=True)
    print(f"wrote {out / 'crossval.json'}", flush=True)
    return report


def _save_scores(path: Path, ws: WindowSet, results: list[Repeat]) -> None:
    """Every window's out-of-fold scores per repeat, with its cut, case, run and class: the material
    for studying other decision rules without training again."""
    np.savez_compressed(
        path, seeds=np.array([r.seed for r in results]),
        recon=np.stack([r.scores.recon for r in results]), kl=np.stack([r.scores.kl for r in results]),
        cut=ws.cut, case=ws.cut_field("case"), run=ws.cut_field("run"), label=ws.labels,
        regime=np.asarray(ws.regimes, dtype=str), vb=ws.cut_vb[ws.cut],
    )


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON data")
