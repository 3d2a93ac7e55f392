"""The ``evaluate`` command: score an archive with a bundle, write metrics.json and plots.

On the bundle's own archive (same SHA-256) the metrics cover the test split the bundle was trained
with, recomputed from its recorded split kind and seed; on any other archive they cover every
stable window. Every window of the archive is scored either way, because the trend plot shows each
case's whole run sequence (with the evaluated cuts marked) — a test split holds too few cuts per
case to show a trend on its own.

Scores are calibrated (``edge_monitor/core/calibration.py``): relative to healthy windows of the same
depth of cut, feed and material, as the live daemon publishes them. ``metrics.json`` also holds the
metrics of the raw scores under ``raw``, for comparison with the method's published figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_monitor.archive.mill import read_archive
from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.core.channels import SAMPLE_RATE_HZ
from edge_monitor.core.scores import WindowScores
from edge_monitor.core.steps import PipelineSpec
from edge_monitor.model.bundle import BundleMeta, load_bundle

from .dataset import WindowSet, prepare_windows
from .metrics import SCORE_NAMES, anomaly_metrics, metrics_by_param, param_key
from .plots import (
    plot_curves,
    plot_score_distributions,
    plot_score_trend,
    plot_tool_life,
)
from .splits import make_split
from .toollife import format_tool_table, replay_tools, tool_totals
from .wear import CLASS_NAMES

LEVELS = ("normal", "warning", "alarm")


def evaluation_windows(meta: BundleMeta, sha256: str, ws: WindowSet, bundle: Path) -> tuple[np.ndarray, str]:
    """Indices of the windows to evaluate and a description of them."""
    if sha256 != meta.archive_sha256:
        return np.arange(len(ws)), "all windows"
    kind, seed = meta.training.get("split"), meta.training.get("seed")
    if kind is None or seed is None:
        raise ValueError(
            f"{bundle}: the bundle's training record has no 'split' and 'seed', so the test split "
            f"of its own archive cannot be recomputed"
        )
    split = make_split(kind, ws.cut, ws.cut_class, int(seed))
    return split.test, f"test ({kind} split, seed {int(seed)})"


def cut_table(ws: WindowSet, scores: WindowScores, idx: np.ndarray, tools: list) -> list[dict]:
    """Per evaluated cut: its labels, window count, median and max of both scores over its
    evaluated windows, and from the replay of its tool (``tools``) what the alarm rule judged it by
    and the machine's state at its end."""
    shown = {cut: (judged, lvl) for t in tools for cut, judged, lvl in zip(t.cuts, t.judged, t.levels)}
    rows = []
    cut_of = ws.cut[idx]
    for pos in np.unique(cut_of):
        mine = idx[cut_of == pos]
        cut = ws.archive.cuts[pos]
        row = {
            "cut": cut.cut_id, "case": cut.case, "run": cut.run,
            "vb": float(ws.cut_vb[pos]), "class": CLASS_NAMES[ws.cut_class[pos]],
            "doc": param_key("doc", cut.doc), "feed": param_key("feed", cut.feed),
            "material": param_key("material", cut.material), "n_windows": int(mine.size),
        }
        for name in SCORE_NAMES:
            values = scores.score(name)[mine]
            row[f"median_{name}"] = float(np.median(values))
            row[f"max_{name}"] = float(values.max())
        row["judged"], row["level"] = shown[cut.cut_id]
        rows.append(row)
    return rows


def _trend_inputs(ws: WindowSet, scores: WindowScores, idx: np.ndarray, name: str) -> dict:
    """Per cut of the archive (with windows): case, run, class, median score, evaluated or not."""
    cuts = np.unique(ws.cut)
    evaluated = np.isin(cuts, ws.cut[idx])
    values = scores.score(name)
    median = np.array([np.median(values[ws.cut == pos]) for pos in cuts])
    return {
        "case": [ws.archive.cuts[p].case for p in cuts],
        "run": [ws.archive.cuts[p].run for p in cuts],
        "cut_class": ws.cut_class[cuts],
        "median": median,
        "evaluated": evaluated,
    }


def _json_safe(value):
    """NaN/inf would make invalid JSON; they become null like every other undefined figure."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def default_out_dir(bundle_path: Path, archive_path: Path, sha256: str) -> Path:
    # The checksum prefix keeps two archives that share a file name apart.
    return bundle_path / "evaluation" / f"{archive_path.stem}-{sha256[:8]}"


def evaluate(bundle_path: str | Path, archive_path: str | Path, out_dir: str | Path | None = None) -> dict:
    """Evaluate a bundle on an archive; writes ``metrics.json`` and PNG plots into ``out_dir``
    (default ``<bundle>/evaluation/<archive stem>-<sha256 prefix>/``), prints a summary and
    returns the metrics."""
    bundle_path, archive_path = Path(bundle_path), Path(archive_path)
    bundle = load_bundle(bundle_path)
    meta = bundle.meta
    archive = read_archive(archive_path)
    ws = prepare_windows(archive, meta.window, meta.stable_region)
    if len(ws) == 0:
        raise ValueError(f"{archive_path}: no stable windows with a wear label, nothing to evaluate")
    idx, split_desc = evaluation_windows(meta, archive.sha256, ws, bundle_path)
    out = Path(out_dir) if out_dir else default_out_dir(bundle_path, archive_path, archive.sha256)
    out.mkdir(parents=True, exist_ok=True)

    scorer = bundle.scorer()
    scores = scorer.score(ws.data, ws.regimes)
    raw = scorer.raw_scores(ws.data)  # the method's uncalibrated figures, for comparison
    chosen = scores.subset(idx)
    labels = ws.labels[idx]
    thresholds = meta.thresholds
    # Whole tools through the daemon's own pipeline and alarm rule (the daemon's default policy).
    policy = AlarmPolicy()
    spec = PipelineSpec(window=meta.window, stable=meta.stable_region, fs=SAMPLE_RATE_HZ,
                        thresholds=thresholds, policy=policy, model_id=meta.model_id)
    tools = replay_tools(archive, ws.cut_vb, ws.cut_class, spec, lambda b: scorer.score(b.data, b.regime))
    totals = tool_totals(tools)
    cuts = cut_table(ws, scores, idx, tools)

    plots = {
        "curves": plot_curves(chosen, labels, out / "pr_roc_curves.png"),
        "distributions": plot_score_distributions(chosen, labels, out / "score_distributions.png"),
    }
    plots["tool_life"] = plot_tool_life(tools, out / "tool_life.png", score_name=thresholds.score,
                                        thresholds=thresholds)
    for name in SCORE_NAMES:
        plots[f"trend_{name}"] = plot_score_trend(
            **_trend_inputs(ws, scores, idx, name), path=out / f"trend_{name}.png",
            score_name=name,  # no threshold lines: the rule judges growth over each tool's first cut
        )

    metrics = {
        "model_id": meta.model_id,
        "bundle": str(bundle_path),
        "archive": str(archive_path),
        "archive_sha256": archive.sha256,
        "split": split_desc,
        "n_cuts": len(cuts),
        **anomaly_metrics(chosen, labels),
        # The method's uncalibrated scores, for comparison with published figures.
        "raw": anomaly_metrics(raw.subset(idx), labels),
        "by_param": metrics_by_param(
            chosen, labels, ws.cut_field("doc")[idx], ws.cut_field("feed")[idx],
            ws.cut_field("material")[idx],
        ),
        "alarm_score": thresholds.score,
        "thresholds": dataclasses.asdict(thresholds),
        # The machine's state at each evaluated cut's end, by the cut's class (from the replay).
        "cut_levels": {
            cls: {lvl: sum(1 for c in cuts if c["class"] == cls and c["level"] == lvl) for lvl in LEVELS}
            for cls in CLASS_NAMES
        },
        "cuts": cuts,
        "tool_life": {
            "cases": "every case of the archive, each replayed as one tool from a fresh start"
                     + ("" if split_desc == "all windows" else " (training cuts included: their healthy cuts "
                                                               "fitted the model and score low)"),
            "rule": f"the daemon's default alarm policy {policy.to_dict()} on the bundle's thresholds",
            "totals": totals,
            "tools": [t.to_dict() for t in tools],
        },
        "plots": {key: path.name for key, path in plots.items()},
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metrics = _json_safe(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    print(format_summary(metrics))
    print(f"\ntool life ({metrics['tool_life']['cases']}):\n{format_tool_table(tools, totals)}")
    print(f"wrote {out / 'metrics.json'} and {len(plots)} plots in {out}", flush=True)
    return metrics


def _num(value: float | None, width: int = 8) -> str:
    return f"{'-' if value is None else f'{value:.3f}':>{width}}"


def format_summary(metrics: dict) -> str:
    """A plain-text summary of :func:`evaluate`'s metrics: headline table, breakdown by cutting
    parameter, thresholds and the levels the evaluated cuts reached."""
    alarm = metrics["alarm_score"]
    lines = [
        f"model {metrics['model_id']} on {metrics['archive']}: {metrics['split']}",
        f"{metrics['n_windows']} windows of {metrics['n_cuts']} cuts, {metrics['n_failed']} failed "
        f"(no-skill precision {_num(metrics['no_skill'], 0).strip()})",
        "",
        f"{'score':<8}{'PR-AUC':>8}{'ROC-AUC':>9}",
    ]
    for name in SCORE_NAMES:
        mark = "  <- alarm score" if name == alarm else ""
        lines.append(
            f"{name:<8}{_num(metrics[f'pr_auc_{name}'])}{_num(metrics[f'roc_auc_{name}'], 9)}{mark}"
        )
    raw = metrics.get("raw")
    if raw:
        for name in SCORE_NAMES:
            lines.append(
                f"{'raw ' + name:<8}{_num(raw[f'pr_auc_{name}'])}{_num(raw[f'roc_auc_{name}'], 9)}"
                "  (uncalibrated, as in the method)"
            )
    lines += [
        "",
        f"{'by parameter':<20}{'windows':>8}{'failed':>8}{'no-skill':>9}"
        f"{'PR kl':>8}{'PR recon':>9}{'ROC kl':>8}{'ROC recon':>10}",
    ]
    for param, groups in metrics["by_param"].items():
        for key, m in groups.items():
            lines.append(
                f"{param + ' ' + key:<20}{m['n_windows']:>8}{m['n_failed']:>8}{_num(m['no_skill'], 9)}"
                f"{_num(m['pr_auc_kl'])}{_num(m['pr_auc_recon'], 9)}"
                f"{_num(m['roc_auc_kl'])}{_num(m['roc_auc_recon'], 10)}"
            )
    t = metrics["thresholds"]
    lines += [
        "",
        f"thresholds on {alarm}: warning > {t['warning']:.4g}, alarm > {t['alarm']:.4g}",
        f"  rule: {t['rule']}",
        "",
        f"{'state at the cut end':<28}" + "".join(f"{lvl:>9}" for lvl in LEVELS),
    ]
    for cls, counts in metrics["cut_levels"].items():
        lines.append(f"{cls + ' cuts':<28}" + "".join(f"{counts[lvl]:>9}" for lvl in LEVELS))
    return "\n".join(lines)
