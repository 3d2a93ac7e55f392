"""Evaluation plots, written as PNG files. Each function returns the path it wrote.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting needs no display
and leaves no global figure state behind in a long-running process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, ScalarFormatter
from sklearn.metrics import precision_recall_curve, roc_curve

from edge_monitor.core.alarm import Thresholds
from edge_monitor.core.scores import WindowScores

from .metrics import SCORE_NAMES, labelled_scores, pr_auc, roc_auc
from .wear import CLASS_NAMES, FAILED

CLASS_COLOURS = ("tab:green", "tab:orange", "tab:red")
SCORE_LABELS = {"kl": "KL divergence (latent)", "recon": "reconstruction MSE (input)"}
DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _log_helps(values: np.ndarray) -> bool:
    """Log scale when the scores are positive and their bulk spans more than ~1.5 decades."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2 or values.min() <= 0:
        return False
    low, high = np.percentile(values, [1, 99])
    return high / low > 30


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _case_panels(n: int, width: float, height: float, sharey: bool) -> tuple[Figure, np.ndarray, int]:
    """A figure with one panel per case in a near-square grid: (figure, flat axes, columns)."""
    n_cols = max(1, math.ceil(math.sqrt(n)))
    n_rows = max(1, math.ceil(n / n_cols))
    fig = Figure(figsize=(width * n_cols, height * n_rows + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, sharey=sharey, squeeze=False)).ravel()
    return fig, axes, n_cols


def _run_axis(ax, runs: np.ndarray, classes: Sequence[int]) -> None:
    """A panel over a case's runs: each run shaded by its class, whole run numbers on the x axis."""
    for r, cls in zip(runs, classes):
        if 0 <= cls < len(CLASS_COLOURS):
            ax.axvspan(r - 0.5, r + 0.5, color=CLASS_COLOURS[cls], alpha=0.15, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if runs.size < 3:  # a one-run case: whole run numbers, not a fractional axis
        ax.set_xticks(runs)
    ax.set_xlim(runs.min() - 0.75, runs.max() + 0.75)
    ax.grid(alpha=0.3)


def _label_panels(axes: np.ndarray, used: int, n_cols: int, ylabel: str) -> None:
    """Hide the grid's empty panels; label the x axes of the bottom row and the y axes of the first column."""
    for ax in axes[used:]:
        ax.set_visible(False)
    n_rows = axes.size // n_cols
    for ax in axes[(n_rows - 1) * n_cols:]:
        ax.set_xlabel("run")
    for ax in axes[::n_cols]:
        ax.set_ylabel(ylabel)


def _class_handles() -> list:
    return [Patch(color=c, alpha=0.3, label=n) for n, c in zip(CLASS_NAMES, CLASS_COLOURS)]


def plot_curves(scores: "WindowScores", labels: np.ndarray, path: str | Path) -> Path:
    """Precision–recall and ROC curves of failed vs rest for both scores, against no skill."""
    labels, named = labelled_scores(scores, labels)
    failed = labels == FAILED
    fig = Figure(figsize=(11, 4.5))
    ax_pr, ax_roc = fig.subplots(1, 2)
    defined = failed.any() and not failed.all()
    if defined:
        for name in SCORE_NAMES:
            precision, recall, _ = precision_recall_curve(failed, named[name])
            ax_pr.step(recall, precision, where="post",
                       label=f"{name} (PR-AUC {_fmt(pr_auc(failed, named[name]))})")
            fpr, tpr, _ = roc_curve(failed, named[name])
            ax_roc.plot(fpr, tpr, label=f"{name} (ROC-AUC {_fmt(roc_auc(failed, named[name]))})")
        no_skill = float(failed.mean())
        ax_pr.axhline(no_skill, color="grey", linestyle="--", label=f"no skill ({no_skill:.3f})")
    else:
        for ax in (ax_pr, ax_roc):
            ax.text(0.5, 0.5, "undefined: the evaluated windows\nare not a mix of failed and not failed",
                    ha="center", va="center", transform=ax.transAxes)
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle="--", label="no skill")
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
              title=f"Precision–recall, failed vs rest ({int(failed.sum())} of {failed.size} windows)")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
               title="ROC, failed vs rest")
    for ax in (ax_pr, ax_roc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_score_distributions(scores: "WindowScores", labels: np.ndarray, path: str | Path) -> Path:
    """Histogram of each score per tool class (densities, since the classes are imbalanced)."""
    labels, named = labelled_scores(scores, labels)
    fig = Figure(figsize=(11, 4.2))
    for ax, name in zip(fig.subplots(1, len(SCORE_NAMES)), SCORE_NAMES):
        values = named[name]
        log = _log_helps(values)
        if values.size == 0:
            ax.text(0.5, 0.5, "no windows", ha="center", va="center", transform=ax.transAxes)
        else:
            low, high = float(values.min()), float(values.max())
            if high <= low:
                high = low + 1.0
            bins = np.geomspace(low, high, 50) if log else np.linspace(low, high, 50)
            for cls, (cls_name, colour) in enumerate(zip(CLASS_NAMES, CLASS_COLOURS)):
                member = values[labels == cls]
                if member.size:
                    ax.hist(member, bins=bins, density=True, histtype="step", linewidth=1.6,
                            color=colour, label=f"{cls_name} ({member.size})")
        if log:
            ax.set_xscale("log")
        ax.set(xlabel=SCORE_LABELS.get(name, name), ylabel="density", title=f"{name} score by class")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _save(fig, path)


def plot_score_trend(
    case: Sequence[int],
    run: Sequence[int],
    cut_class: Sequence[int],
    median: Sequence[float],
    path: str | Path,
    *,
    score_name: str,
    thresholds: "Thresholds | None" = None,
    evaluated: Sequence[bool] | None = None,
) -> Path:
    """Median window score of each cut against its run number, one panel per case; each run's
    background is shaded by its cut's class. ``thresholds`` (drawn when they are for this score)
    adds the warning and alarm lines; ``evaluated`` marks the cuts of the evaluated set (filled)
    apart from the rest (hollow), e.g. test cuts among training and validation cuts."""
    case, run = np.asarray(case, dtype=int), np.asarray(run, dtype=int)
    cut_class, median = np.asarray(cut_class, dtype=int), np.asarray(median, dtype=float)
    evaluated = np.ones(case.size, bool) if evaluated is None else np.asarray(evaluated, bool)
    cases = np.unique(case)
    fig, axes, n_cols = _case_panels(cases.size, 3.6, 2.6, sharey=True)
    log = _log_helps(median)
    lines = thresholds is not None and thresholds.score == score_name
    for ax, this in zip(axes, cases):
        member = np.flatnonzero(case == this)
        member = member[np.argsort(run[member])]
        _run_axis(ax, run[member], cut_class[member])
        ax.plot(run[member], median[member], color="black", linewidth=1)
        held = member[evaluated[member]]
        rest = member[~evaluated[member]]
        ax.plot(run[held], median[held], "o", color="black", markersize=4)
        ax.plot(run[rest], median[rest], "o", markerfacecolor="white", color="black", markersize=4)
        if lines:
            ax.axhline(thresholds.warning, color="tab:orange", linestyle="--", linewidth=1)
            ax.axhline(thresholds.alarm, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"case {this}", fontsize="medium")
        if log:
            ax.set_yscale("log")
    _label_panels(axes, cases.size, n_cols, f"median {score_name}")
    handles = _class_handles()
    if lines:
        handles += [
            Line2D([], [], color="tab:orange", linestyle="--", label=f"warning {thresholds.warning:.4g}"),
            Line2D([], [], color="tab:red", linestyle="--", label=f"alarm {thresholds.alarm:.4g}"),
        ]
    if not evaluated.all():
        handles += [
            Line2D([], [], marker="o", color="black", linestyle="", label="evaluated cut"),
            Line2D([], [], marker="o", markerfacecolor="white", color="black", linestyle="",
                   label="other cut (train/validation)"),
        ]
    fig.suptitle(f"{SCORE_LABELS.get(score_name, score_name)}: median window score per cut")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize="small")
    return _save(fig, path)


def plot_tool_life(tools: Sequence, path: str | Path, *, score_name: str, thresholds: "Thresholds | None" = None) -> Path:
    """One panel per tool (case): the figure the alarm rule judged each cut by (its median alarm
    score over the tool's reference; none for the reference cut) against its run number, with the
    thresholds, the flank wear VB on a second axis, each run shaded by its class, and the cuts where the monitor
    first warned (orange) and first alarmed (red) marked by vertical lines. ``tools`` are
    :class:`~training.toollife.ToolLife` records."""
    fig, axes, n_cols = _case_panels(len(tools), 3.8, 2.7, sharey=False)
    judged = np.array([m for t in tools for m in t.judged if m is not None], dtype=float)
    log = _log_helps(judged)
    lines = thresholds is not None and thresholds.score == score_name
    for ax, tool in zip(axes, tools):
        runs = np.asarray(tool.runs)
        _run_axis(ax, runs, tool.classes)
        values = np.array([np.nan if m is None else m for m in tool.judged], dtype=float)
        ax.plot(runs, values, "o-", color="black", markersize=3, linewidth=1)
        if lines:
            ax.axhline(thresholds.warning, color="tab:orange", linestyle="--", linewidth=0.8)
            ax.axhline(thresholds.alarm, color="tab:red", linestyle="--", linewidth=0.8)
        for first, colour in ((tool.first_warning, "tab:orange"), (tool.first_alarm, "tab:red")):
            if first is not None:
                ax.axvline(runs[first], color=colour, linewidth=2, alpha=0.8)
        if log:
            ax.set_yscale("log")
        wear = ax.twinx()
        wear.plot(runs, tool.vb, color="tab:blue", linewidth=1, alpha=0.7)
        wear.set_ylim(bottom=0)
        wear.tick_params(axis="y", labelcolor="tab:blue", labelsize="small")
        ax.set_title(f"case {tool.case}", fontsize="medium")
    _label_panels(axes, len(tools), n_cols, f"judged {score_name}")
    handles = _class_handles() + [
        Line2D([], [], color="tab:blue", label="flank wear VB, mm (right axis)"),
        Line2D([], [], color="tab:orange", linewidth=2, label="first warning"),
        Line2D([], [], color="tab:red", linewidth=2, label="first alarm"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    fig.suptitle("Tool life: what the monitor showed, cut by cut")
    return _save(fig, path)


def plot_operating_point(point, path: str | Path, *, others: dict[str, tuple[float, float]] | None = None) -> Path:
    """The trade-off of an operating point (``operating.OperatingPoint``): left, failing tools
    caught in time against the share of healthy tool lives alarmed, one point per threshold (mean
    over dealings, ± sd), the chosen alarm and warning marked; right, the counts against the
    threshold. ``others`` marks more (share, caught) points by name (another rule's outcome)."""
    from .operating import mean_share

    table = point.table
    share = mean_share(table)
    counts = {k: table.counts[k].mean(axis=1) for k in ("failing_caught_in_time", "failing_missed",
                                                        "tools_alarmed_on_a_healthy_cut", "failing_warned_early")}
    caught_sd = table.counts["failing_caught_in_time"].std(axis=1, ddof=1) if table.dealings > 1 else None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    order = np.argsort(share, kind="stable")  # both fall as the threshold rises: one curve
    left.errorbar(share[order], counts["failing_caught_in_time"][order],
                  yerr=None if caught_sd is None else caught_sd[order], fmt=".-", color="black", ecolor="silver",
                  linewidth=1, markersize=3, label="a threshold" + ("" if caught_sd is None else " (± sd over dealings)"))
    marks = [("alarm", point.alarm, "tab:red")] + ([("warning", point.warning, "tab:orange")] if point.warning else [])
    for name, row, colour in marks:
        x, y = row["healthy_share_alarmed"]["mean"], row["failing_caught_in_time"]["mean"]
        if x is not None:
            left.plot([x], [y], "o", color=colour, markersize=8, label=f"{name} > {row['threshold']:.3g}")
    for (name, (x, y)), colour in zip((others or {}).items(), ("tab:blue", "tab:green", "tab:purple", "tab:brown")):
        left.plot([x], [y], "s", color=colour, markersize=7, label=name)
    failing = table.counts["failing_tools"].mean()
    left.axhline(failing, color="grey", linestyle=":", linewidth=0.8)
    left.axvline(point.rule.max_false_alarms, color="tab:red", linestyle="--", linewidth=0.8)
    left.set_xlabel("share of healthy tool lives alarmed (held out)")
    left.set_ylabel(f"failing tools caught in time (of {failing:.1f})")
    left.set_xlim(-0.02, 1.02)
    left.legend(fontsize="small", loc="lower right")
    t = table.thresholds
    keep = t >= 0.9
    for key, colour, label in (("failing_caught_in_time", "tab:red", "failing caught in time"),
                               ("failing_warned_early", "tab:purple", "failing flagged before failing"),
                               ("failing_missed", "grey", "failing missed"),
                               ("tools_alarmed_on_a_healthy_cut", "tab:green", "tools alarmed on a healthy cut")):
        right.step(t[keep], counts[key][keep], where="post", color=colour, label=label)
    for name, row, colour in marks:
        right.axvline(row["threshold"], color=colour, linestyle="--", linewidth=0.8)
    right.set_xscale("log")
    right.xaxis.set_major_formatter(ScalarFormatter())
    right.xaxis.set_minor_formatter(ScalarFormatter())
    right.set_xlabel(f"threshold on the judged {table.score} (growth over the tool's start)")
    right.set_ylabel("tools (mean over dealings)")
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(fontsize="small")
    fig.suptitle(f"Operating point: what each threshold costs on held-out tools ({table.dealings} dealing(s))")
    return _save(fig, path)


def plot_bench_scaling(benches: dict[str, dict], path: str | Path) -> Path:
    """The throughput benchmark's scaling (``edge-monitor bench``'s ``bench.json``), one line per
    benchmark (label → bench, e.g. before and after a change): over the machine count of the
    real-time runs, the daemon's CPU cores (against the box's cores) and its latency p99, from a
    window's data to its score and beyond the stable-region look-ahead."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_cpu, ax_lat = fig.subplots(1, 2)
    styles = ["o--", "s-", "^-.", "d:"]
    latencies = []
    lines = []  # (label, runs): one line per benchmark and input kind
    for label, bench in benches.items():
        kinds = list(dict.fromkeys(r.get("input", "") for r in bench["runs"]))
        for kind in kinds:
            name = ", ".join(filter(None, [label, kind if len(kinds) > 1 else ""]))
            lines.append((name, [r for r in bench["runs"] if r.get("input", "") == kind]))
    for k, (label, runs) in enumerate(lines):
        runs = sorted((r for r in runs if r["speed"] > 0), key=lambda r: r["machines"])
        if not runs:
            continue
        style, name = styles[k % len(styles)], f"{label}: " if label else ""
        machines = [r["machines"] for r in runs]
        ax_cpu.plot(machines, [r["cpu_cores_steady"] for r in runs], style, color="black",
                    label=f"{name}daemon, steady part")
        for key, what, colour in (("latency_ms", "data complete → score", "tab:blue"),
                                  ("beyond_lookahead_ms", "beyond the look-ahead", "tab:orange")):
            values = [np.nan if r[key]["p99"] is None else r[key]["p99"] for r in runs]
            latencies += values
            ax_lat.plot(machines, values, style, color=colour, label=f"{name}p99, {what}")
        for r in runs:
            if r["lost"] or r["duplicated"] or not r["complete"]:
                ax_lat.annotate("lost/duplicated" if r["complete"] else "incomplete", (r["machines"], 0),
                                xycoords=("data", "axes fraction"), color="tab:red", fontsize="small", ha="center")
    if not latencies:
        for ax in (ax_cpu, ax_lat):
            ax.text(0.5, 0.5, "no real-time runs in this benchmark", ha="center", va="center", transform=ax.transAxes)
    first = next(iter(benches.values()))
    cores = first.get("cpu_count")
    if cores:
        ax_cpu.axhline(cores, color="tab:red", linestyle=":", label=f"the box's {cores} cores")
    if _log_helps(np.array(latencies, float)):
        ax_lat.set_yscale("log")
    else:
        ax_lat.set_ylim(bottom=0)
    ax_cpu.set(xlabel="machines", ylabel="CPU cores used", title="Daemon CPU, real time")
    ax_cpu.set_ylim(bottom=0)
    ax_lat.set(xlabel="machines", ylabel="ms", title="Window latency p99, real time")
    for ax in (ax_cpu, ax_lat):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    inputs = ", ".join(first.get("inputs") or [f"chunks{first.get('chunk')}"])
    fig.suptitle(f"edge-monitor bench: device {first.get('device')}, {inputs}, "
                 f"{first.get('cuts_per_machine')} cut(s) per machine, {first.get('encoding', 'json')} payloads")
    return _save(fig, path)
