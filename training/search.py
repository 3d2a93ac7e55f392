"""Random hyper-parameter search over the original space, reproducible and resumable.

Trial ``i`` draws its hyper-parameters from a generator seeded with ``(seed, i)``, so a trial's
draw depends on neither the order nor the number of trials run before it. Each finished trial is
appended to ``trials.jsonl`` (one JSON object per line, flushed and synced) before the next starts;
re-running the same command skips finished trials, so an interrupted search loses at most the
trial in progress. ``results.md`` is the table of all finished trials ranked by validation PR-AUC
(the better of the KL and reconstruction scores), and ``best/`` the bundle of the best trial so far.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from edge_monitor.archive.mill import read_archive
from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.model.vae import VAEHyperParams

from .dataset import prepare_windows
from .fit import (
    TrainingConfig,
    describe_archive,
    fold_thresholds,
    train_model,
    validation_metrics,
)
from .operating import format_trade_off
from .progress import Progress
from .splits import make_split

DILATION_CHOICES = ((1, 2, 4, 8), (1, 2, 4), (1, 2))
SEARCH_FILE, TRIALS_FILE, RESULTS_FILE, BEST_DIR = "search.json", "trials.jsonl", "results.md", "best"


def sample_trial(seed: int, index: int) -> tuple[VAEHyperParams, int]:
    """Hyper-parameters and early-stopping patience of trial ``index`` (the original space)."""
    rng = np.random.default_rng([seed, index])
    hp = VAEHyperParams(
        beta=float(rng.uniform(0.5, 9.5)),
        codings=int(rng.integers(5, 40)),
        tcn_layers=int(rng.integers(1, 4)),
        filters=int(rng.integers(16, 128)),
        kernel_size=int(rng.integers(2, 9)),
        dilations=DILATION_CHOICES[int(rng.integers(len(DILATION_CHOICES)))],
    )
    return hp, int(rng.integers(30, 50))


def _rank_key(trial: dict) -> tuple:
    """What an operator wants at the operating point the rule chose (every trial's within the same
    share of healthy tool lives alarmed): failing tools caught in time, then fewer tools alarmed on
    a healthy cut, then window PR-AUC (all out of fold, means over dealings); a failed trial last."""
    if trial.get("error"):
        return (-math.inf, -math.inf, -math.inf)
    vals = [v for v in (trial["pr_auc_kl"], trial["pr_auc_recon"]) if v is not None]
    return (trial["failing_caught_in_time"], -trial["tools_alarmed_on_a_healthy_cut"], max(vals) if vals else -1.0)


def load_trials(out: Path) -> list[dict]:
    path = out / TRIALS_FILE
    if not path.exists():
        return []
    trials = []
    for line in path.read_text().splitlines():
        try:
            trials.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write: that trial simply runs again
    return trials


def _append_trial(out: Path, trial: dict) -> None:
    with open(out / TRIALS_FILE, "a") as fh:
        fh.write(json.dumps(trial) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def results_table(trials: list[dict]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [
        "| rank | trial | healthy tools alarmed | failing caught in time | PR-AUC kl | PR-AUC recon | β | codings "
        "| layers | filters | kernel | dilations | patience | epochs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for rank, t in enumerate(sorted(trials, key=_rank_key, reverse=True), 1):
        hp = t["hyperparams"]
        rows.append(
            f"| {rank} | {t['trial']} | {fmt(t.get('tools_alarmed_on_a_healthy_cut'))} | "
            f"{fmt(t.get('failing_caught_in_time'))} | {fmt(t['pr_auc_kl'])} | {fmt(t['pr_auc_recon'])} | {hp['beta']:.2f} | "
            f"{hp['codings']} | {hp['tcn_layers']} | {hp['filters']} | {hp['kernel_size']} | "
            f"{hp['dilations']} | {t['patience']} | {'–' if t.get('epochs_run') is None else t['epochs_run']} |"
        )
    return "\n".join(rows) + "\n"


def run_search(
    archive_path: str | Path,
    out: str | Path,
    iterations: int,
    seed: int = 0,
    split_kind: str = "cut",
    max_epochs: int = 300,
    batch_size: int = 256,
    folds: int = 4,
    repeats: int = 1,
    rule=None,
) -> list[dict]:
    """Random search ranked by tool-level outcomes out of fold (``_rank_key``): each trial trains
    ``folds`` × ``repeats`` models on folds of whole tools (as ``fit`` chooses thresholds); a new
    best also trains its bundle's model on the split."""
    from edge_monitor.core.channels import CHANNELS
    from edge_monitor.model.bundle import save_bundle
    from edge_monitor.model.export import ExportError

    from .operating import OperatingRule

    if iterations < 1:
        raise ValueError("--iterations must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive = read_archive(archive_path)
    settings = {"archive_sha256": archive.sha256, "seed": seed, "split": split_kind,
                "max_epochs": max_epochs, "batch_size": batch_size, "folds": folds, "repeats": repeats,
                "operating_rule": (rule or OperatingRule()).to_dict()}
    search_file = out / SEARCH_FILE
    if search_file.exists():
        stored = json.loads(search_file.read_text())
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{out} holds a search with other settings ({detail}); resume it with the same "
                f"settings or pick another --out"
            )
    else:
        search_file.write_text(json.dumps(settings, indent=2) + "\n")

    trials = load_trials(out)
    done = {t["trial"] for t in trials}
    todo = [i for i in range(iterations) if i not in done]
    print(describe_archive(archive), flush=True)
    print(f"search {out}: {len(done)} trial(s) done, {len(todo)} to run", flush=True)
    if not todo:
        (out / RESULTS_FILE).write_text(results_table(trials))
        return trials

    ws = prepare_windows(archive)
    split = make_split(split_kind, ws.cut, ws.cut_class, seed)
    best = max(trials, key=_rank_key, default=None)
    for n, index in enumerate(todo, 1):
        hp, patience = sample_trial(seed, index)
        print(f"[trial {index} | {n}/{len(todo)}] {hp.to_dict()} patience {patience}", flush=True)
        config = TrainingConfig(max_epochs=max_epochs, patience=patience, batch_size=batch_size)
        progress = Progress(folds * repeats, max_epochs)
        try:
            point, oof = fold_thresholds(ws, split, hp, config, folds, seed + index, repeats, rule, progress)
            thresholds = point.thresholds
        except ValueError as exc:  # e.g. a kernel/dilation combination the window cannot hold
            trial = {"trial": index, "hyperparams": hp.to_dict(), "patience": patience,
                     "error": str(exc), "pr_auc_kl": None, "pr_auc_recon": None, "epochs_run": 0}
            _append_trial(out, trial)
            trials.append(trial)
            print(f"    failed: {exc}", flush=True)
            continue
        figures = {key: oof["summary"][key]["mean"] for key in
                   ("pr_auc_kl", "pr_auc_recon", "no_skill", "tools_alarmed_on_a_healthy_cut", "failing_caught_in_time",
                    "failing_missed", "failing_tools")}
        trial = {"trial": index, "hyperparams": hp.to_dict(), "patience": patience, **figures,
                 "spread": oof["summary"], "epochs_run": None}
        if best is None or _rank_key(trial) > _rank_key(best):
            trained = train_model(ws, split, hp, config, seed=seed + index,
                                  callbacks=[Progress(1, max_epochs).model(f"trial {index}'s bundle model")])
            trial["epochs_run"], trial["seconds"] = trained.epochs_run, round(trained.seconds, 1)
            try:
                save_bundle(
                    out / BEST_DIR, trained.model, channels=CHANNELS, window=ws.window,
                    stable_region=ws.stable, scaler=trained.scaler, calibration=trained.calibration,
                    hyperparams=hp, thresholds=thresholds,
                    metrics={"validation": validation_metrics(trained, ws, split), "out_of_fold": oof},
                    training={"preset": f"search trial {index}", "split": split_kind, "seed": seed,
                              "archive": str(archive_path), **config.__dict__,
                              "alarm_policy": AlarmPolicy().to_dict()},
                    archive_sha256=archive.sha256,
                    parity_windows=trained.scaler.transform(ws.data[np.concatenate([split.val, split.test])]),
                )
            except ExportError as exc:  # the bundle is saved; TensorFlow serves it
                print(f"    {exc}", flush=True)
            best = trial
        _append_trial(out, trial)
        trials.append(trial)
        (out / RESULTS_FILE).write_text(results_table(trials))
        print(
            f"    out of fold: {trial['tools_alarmed_on_a_healthy_cut']:.1f} healthy tools alarmed, "
            f"{trial['failing_caught_in_time']:.1f} of {trial['failing_tools']:.1f} failing caught in time, "
            f"PR-AUC kl {trial['pr_auc_kl']}, recon {trial['pr_auc_recon']} (no-skill {trial['no_skill']:.3f}); "
            f"best so far: trial {best['trial']}",
            flush=True,
        )
        print("    " + format_trade_off(point, rows=8).replace("\n", "\n    "), flush=True)
        print(f"    operating point: {thresholds.describe()}", flush=True)
    (out / RESULTS_FILE).write_text(results_table(trials))
    return trials
