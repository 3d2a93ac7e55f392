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
from .operating import OperatingRule, format_trade_off, stored_trade_off
from .outoffold import out_of_fold, thresholds_on
from .plots import plot_operating_point
from .progress import Progress
from .thresholds import choose_thresholds
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


def run_repeat(archive: Archive, ws: WindowSet, preset: str, folds: int, seed: int, verbose: int = 0,
               rule: OperatingRule | None = None, progress=None) -> Repeat:
    """One dealing of the tools into folds: out-of-fold scores, each fold's operating point chosen
    on the other folds' tools, and the fold's tools replayed through the daemon's pipeline."""
    chosen = PRESETS[preset]
    oof = out_of_fold(ws, chosen.hyperparams, chosen.training, folds, seed, verbose=verbose, progress=progress)
    metrics = {**anomaly_metrics(oof.scores, ws.labels), "raw": anomaly_metrics(oof.raw, ws.labels)}
    case_of_window = ws.cut_field("case")
    policy = AlarmPolicy()
    tools, thresholds = [], []
    for k, (test_cases, scorer) in enumerate(zip(oof.groups, oof.scorers)):
        th = thresholds_on(ws, oof.scores, np.flatnonzero(~np.isin(case_of_window, test_cases)), policy, rule)
        thresholds.append({"fold": k, "cases": test_cases, **th.to_dict()})
        spec = PipelineSpec(ws.window, ws.stable, SAMPLE_RATE_HZ, th, policy, f"crossval-{seed}-{k}")
        tools += replay_tools(archive, ws.cut_vb, ws.cut_class, spec,
                              lambda b, s=scorer: s.score(b.data, b.regime), cases=test_cases)
    tools.sort(key=lambda t: t.case)
    return Repeat(seed, oof.groups, metrics, tools, thresholds, oof.scores)


def redecide_repeat(ws: WindowSet, seed: int, groups: list[list[int]], scores: WindowScores,
                    rule: OperatingRule | None) -> Repeat:
    """One stored dealing (``crossval --from``): the fold's operating points chosen again on the
    stored out-of-fold scores, each fold's tools decided by the daemon's alarm tracker on their cut
    medians (``fit.held_out_tools``: the figures a replay would judge, without the fold models)."""
    from .fit import decide_tools

    metrics = {**anomaly_metrics(scores, ws.labels), "raw": {"pr_auc_recon": None, "pr_auc_kl": None}}
    case_of_window = ws.cut_field("case")
    policy = AlarmPolicy()
    tools, thresholds = [], []
    for k, test_cases in enumerate(groups):
        th = thresholds_on(ws, scores, np.flatnonzero(~np.isin(case_of_window, test_cases)), policy, rule)
        thresholds.append({"fold": k, "cases": test_cases, **th.to_dict()})
        mine = np.flatnonzero(np.isin(case_of_window, test_cases))
        tools += decide_tools(ws, mine, scores.score(th.score)[mine], th, policy)
    tools.sort(key=lambda t: t.case)
    return Repeat(seed, groups, metrics, tools, thresholds, scores)


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
             repeats: int = 5, seed: int = 0, rule: OperatingRule | None = None,
             from_dir: str | Path | None = None) -> dict:
    """The ``crossval`` command: writes ``crossval.json``, ``oof_scores.npz`` and ``trade_off.png``
    in ``out`` and prints the report. ``from_dir``: no training; the out-of-fold scores and folds a
    previous run stored there are decided again (another ``rule``)."""
    rule = rule or OperatingRule()
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
    stored = _stored_run(Path(from_dir), archive, ws) if from_dir is not None else None
    out.mkdir(parents=True, exist_ok=True)
    if stored is not None:
        preset, folds = stored["preset"], stored["folds"]
        print(f"--from {from_dir}: its {len(stored['repeats'])} repeat(s) of {folds} folds ({preset} preset) are "
              f"decided again; --folds, --repeats, --preset and --seed do not apply", flush=True)
        results = [redecide_repeat(ws, r_seed, groups, scores, rule) for r_seed, groups, scores in stored["repeats"]]
        for r, rep in enumerate(results):
            print(f"\nrepeat {r + 1}/{len(results)} (seed {rep.seed}, folds {rep.folds}; stored scores "
                  f"from {from_dir}, decided again)", flush=True)
            print(format_tool_table(rep.tools, tool_totals(rep.tools)), flush=True)
    else:
        progress = Progress(folds * repeats, PRESETS[preset].training.max_epochs)
        results = []
        for r in range(repeats):
            started = time.monotonic()
            rep = run_repeat(archive, ws, preset, folds, seed + r, rule=rule, progress=progress)
            results.append(rep)
            print(f"\nrepeat {r + 1}/{repeats} (seed {seed + r}, folds {rep.folds}, {time.monotonic() - started:.0f} s)",
                  flush=True)
            print(format_tool_table(rep.tools, tool_totals(rep.tools)), flush=True)
    summary = summarise(results)
    point = pooled_operating_point(ws, results, rule)
    report = {
        "archive": str(archive_path), "archive_sha256": archive.sha256, "preset": preset, "folds": folds,
        "repeats": [{"seed": r.seed, "folds": r.folds, "figures": r.figures(), "thresholds": r.thresholds,
                     "tools": [t.to_dict() for t in r.tools]} for r in results],
        "summary": summary,
        "rule": f"the daemon's default alarm policy {AlarmPolicy().to_dict()}; operating rule {rule.to_dict()}",
        "operating_rule": rule.to_dict(),
        "trade_off": stored_trade_off(point)["trade_off"],
        **({"from": str(from_dir)} if from_dir is not None else {}),
    }
    (out / "crossval.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    if stored is None:
        _save_scores(out / "oof_scores.npz", ws, results)
    print("\n" + format_trade_off(point), flush=True)
    print(f"wrote {plot_operating_point(point, out / 'trade_off.png')} (the trade-off over every repeat's "
          f"held-out tools; each fold above was decided by the rule on the other folds' tools)", flush=True)
    print("\n" + format_crossval(summary, len(results), folds), flush=True)
    print(f"wrote {out / 'crossval.json'}", flush=True)
    return report


def pooled_operating_point(ws: WindowSet, results: list[Repeat], rule: OperatingRule):
    """The trade-off over every repeat's out-of-fold scores (each repeat a dealing), and the point
    ``rule`` picks on it: what ``fit --repeats`` would choose on this archive's tools."""
    n, r = len(ws), len(results)
    pooled = WindowScores(*(np.concatenate([getattr(rep.scores, f) for rep in results]) for f in ("recon", "kl", "channels")))
    tile = lambda a: np.tile(a, r)  # noqa: E731
    return choose_thresholds(pooled, tile(ws.labels), tile(ws.cut), tools=tile(ws.cut_field("case")),
                             order=tile(ws.cut_field("run")), regimes=tile(ws.regimes), policy=AlarmPolicy(),
                             rule=rule, dealings=np.repeat(np.arange(r), n))


def _stored_run(where: Path, archive: Archive, ws: WindowSet) -> dict:
    """A previous run's folds and out-of-fold scores (``crossval.json``, ``oof_scores.npz``)."""
    report_file, scores_file = where / "crossval.json", where / "oof_scores.npz"
    for f in (report_file, scores_file):
        if not f.is_file():
            raise ValueError(f"--from {where}: {f.name} is missing (written by a `crossval` run that trained)")
    report = json.loads(report_file.read_text())
    if report.get("archive_sha256") != archive.sha256:
        raise ValueError(f"--from {where}: its scores are of another archive ({report.get('archive')}, SHA-256 "
                         f"{str(report.get('archive_sha256'))[:12]}…), not {archive.path}")
    with np.load(scores_file) as data:
        if data["kl"].shape[1] != len(ws) or not np.array_equal(data["cut"], ws.cut):
            raise ValueError(f"--from {where}: {scores_file.name} holds other windows than {archive.path} gives "
                             f"(another window or stable-region setting)")
        channels = data["channels"] if "channels" in data.files else np.zeros((*data["kl"].shape, ws.data.shape[2]))
        seeds = data["seeds"].tolist()
        repeats = [(int(s), rep["folds"], WindowScores(data["recon"][i], data["kl"][i], np.asarray(channels[i], float)))
                   for i, (s, rep) in enumerate(zip(seeds, report["repeats"]))]
    return {"preset": report["preset"], "folds": report["folds"], "repeats": repeats}


def _save_scores(path: Path, ws: WindowSet, results: list[Repeat]) -> None:
    """Every window's out-of-fold scores per repeat, with its cut, case, run and class: the material
    for studying other decision rules without training again."""
    np.savez_compressed(
        path, seeds=np.array([r.seed for r in results]),
        recon=np.stack([r.scores.recon for r in results]), kl=np.stack([r.scores.kl for r in results]),
        channels=np.stack([r.scores.channels for r in results]).astype(np.float32),
        cut=ws.cut, case=ws.cut_field("case"), run=ws.cut_field("run"), label=ws.labels,
        regime=np.asarray(ws.regimes, dtype=str), vb=ws.cut_vb[ws.cut],
    )


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON data")
