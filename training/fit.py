"""Fitting one β-VAE on the archive's healthy windows and packing it into a model bundle.

``train_model`` is the one training routine; ``fit`` (the ``fit`` command) and the random search
both call it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.archive.mill import Archive, read_archive
from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.core.calibration import ScoreCalibration
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import WindowSpec
from edge_monitor.model.scaling import MinMaxScaler
from edge_monitor.model.vae import VAEHyperParams

from .dataset import WindowSet, prepare_windows
from .splits import Split, make_split

#: The trade-off plot written into the bundle's directory (not part of the bundle's content).
TRADE_OFF_PLOT = "trade_off.png"


@dataclass(frozen=True)
class TrainingConfig:
    """How long and how to train; the model's own shape is in :class:`VAEHyperParams`."""

    max_epochs: int = 300
    patience: int = 30
    batch_size: int = 1024


@dataclass(frozen=True)
class Preset:
    name: str
    hyperparams: VAEHyperParams
    training: TrainingConfig


# The default preset is sized to finish on the full archive within 15 minutes on 2 CPU cores;
# ``quick`` within 2 minutes (tests and the demo), at some cost in quality.
PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        VAEHyperParams(beta=2.0, codings=16, tcn_layers=2, filters=32, kernel_size=4, dilations=(1, 2, 4)),
        TrainingConfig(max_epochs=300, patience=30, batch_size=256),
    ),
    "quick": Preset(
        "quick",
        VAEHyperParams(beta=2.0, codings=8, tcn_layers=1, filters=16, kernel_size=3, dilations=(1, 2, 4)),
        TrainingConfig(max_epochs=80, patience=10, batch_size=256),
    ),
}


@dataclass
class TrainedModel:
    model: object  # keras.Model
    scaler: MinMaxScaler
    calibration: ScoreCalibration  # healthy reference scores per operating regime
    hyperparams: VAEHyperParams
    config: TrainingConfig
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    n_train: int
    n_val: int


def _progress_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, one line per epoch in logs


def train_model(
    ws: WindowSet,
    split: Split,
    hp: VAEHyperParams,
    config: TrainingConfig,
    seed: int = 0,
    verbose: int | None = None,
    callbacks: list | None = None,
) -> TrainedModel:
    """Fit the scaler and the β-VAE on the healthy windows of the split's training side, with
    early stopping on the healthy validation windows (best weights restored); then the score
    calibration from the same healthy training windows."""
    import keras  # heavy: imported only when training

    from edge_monitor.model.tf_inference import tf_scorer
    from edge_monitor.model.vae import build_beta_vae

    healthy = ws.healthy
    train_idx = split.train[healthy[split.train]]
    val_idx = split.val[healthy[split.val]]
    if train_idx.size == 0:
        raise ValueError("no healthy windows on the training side of the split: nothing to learn from")
    if val_idx.size == 0:
        raise ValueError("no healthy windows on the validation side of the split: cannot stop early")
    scaler = MinMaxScaler.fit(ws.data[train_idx])
    x_train = scaler.transform(ws.data[train_idx])
    x_val = scaler.transform(ws.data[val_idx])

    keras.utils.set_random_seed(seed)
    model = build_beta_vae(hp, ws.window.length, ws.data.shape[2], seed=seed)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    started = time.monotonic()
    history = model.fit(
        x_train,
        x_train,
        validation_data=(x_val, x_val),
        epochs=config.max_epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=[stopper, *(callbacks or [])],
        verbose=(0 if callbacks else _progress_verbosity()) if verbose is None else verbose,
    )
    val_loss = np.asarray(history.history["val_loss"], dtype=float)
    best = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else len(val_loss) - 1
    healthy_scores = tf_scorer(model, scaler).score_scaled(x_train)  # raw: what calibration is fitted on
    return TrainedModel(
        model=model,
        scaler=scaler,
        calibration=ScoreCalibration.fit(healthy_scores, ws.regimes[train_idx]),
        hyperparams=hp,
        config=config,
        epochs_run=len(val_loss),
        best_epoch=best + 1,
        best_val_loss=float(val_loss[best]),
        seconds=time.monotonic() - started,
        n_train=int(train_idx.size),
        n_val=int(val_idx.size),
    )


def validation_metrics(trained: TrainedModel, ws: WindowSet, split: Split) -> dict:
    """Window metrics of the calibrated scores of all validation windows (every class), and of the
    raw scores, for comparison with the method."""
    from edge_monitor.model.tf_inference import tf_scorer

    from .metrics import anomaly_metrics

    scorer = tf_scorer(trained.model, trained.scaler, trained.calibration)
    val = split.val
    return {
        **anomaly_metrics(scorer.score(ws.data[val], ws.regimes[val]), ws.labels[val]),
        "raw": anomaly_metrics(scorer.raw_scores(ws.data[val]), ws.labels[val]),
    }


def fold_thresholds(ws: WindowSet, split: Split, hp: VAEHyperParams, config: TrainingConfig, folds: int,
                    seed: int, repeats: int = 1, rule=None, progress=None):
    """The operating point chosen for tool-level outcomes on whole tools no model had seen:
    out-of-fold scores (``outoffold``) of every training and validation cut, the test cuts kept out.
    With ``repeats`` the tools are dealt anew (seeds ``seed`` .. ``seed + repeats - 1``) and the
    trade-off counts every dealing (mean and spread over dealings). Returns the operating point
    (``operating.OperatingPoint``: thresholds, trade-off, rule) and what it achieves on those tools
    and windows, per dealing and as mean ± sd, with the held-out tool lives it was chosen on."""
    from edge_monitor.core.scores import WindowScores

    from .metrics import anomaly_metrics
    from .outoffold import out_of_fold
    from .thresholds import choose_thresholds

    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    kept = np.sort(np.concatenate([split.train, split.val]))
    dealings = [out_of_fold(ws, hp, config, folds, seed + r, within=kept, progress=progress) for r in range(repeats)]
    policy = AlarmPolicy()
    pooled = WindowScores(*(np.concatenate([getattr(o.scores, f)[kept] for o in dealings])
                            for f in ("recon", "kl", "channels")))
    tile = lambda a: np.tile(a[kept], repeats)  # noqa: E731
    point = choose_thresholds(
        pooled, tile(ws.labels), tile(ws.cut), tools=tile(ws.cut_field("case")), order=tile(ws.cut_field("run")),
        regimes=tile(ws.regimes), policy=policy, rule=rule, dealings=np.repeat(np.arange(repeats), kept.size),
    )
    thresholds = point.thresholds
    per_dealing = []
    for r, oof in enumerate(dealings):
        per_dealing.append({
            "seed": seed + r, "folds": oof.groups,
            **anomaly_metrics(oof.scores.subset(kept), ws.labels[kept]),
            "raw": anomaly_metrics(oof.raw.subset(kept), ws.labels[kept]),
            "tools": held_out_tools(ws, kept, oof.scores.score(thresholds.score)[kept], thresholds, policy),
        })
    from .operating import stored_trade_off

    return point, {"dealings": per_dealing, "summary": _spread(per_dealing), **stored_trade_off(point)}


def _spread(dealings: list[dict]) -> dict:
    """Mean and standard deviation over dealings of the window PR-AUCs and the tool totals."""
    from .metrics import spread

    rows = [{**{k: d[k] for k in ("pr_auc_recon", "pr_auc_kl", "no_skill")}, **d["tools"]["totals"]}
            for d in dealings]
    numeric = [k for k, v in rows[0].items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))]
    return spread(rows, numeric)


def format_spread(summary: dict) -> str:
    def show(key: str) -> str:
        m = summary.get(key) or {}
        if m.get("mean") is None:
            return "-"
        return f"{m['mean']:.1f}" + ("" if m.get("sd") is None else f" ± {m['sd']:.1f}")

    return (f"of {show('failing_tools')} failing tools {show('failing_caught_in_time')} caught in time, "
            f"{show('failing_missed')} missed; {show('tools_warned_on_a_healthy_cut')} warned and "
            f"{show('tools_alarmed_on_a_healthy_cut')} alarmed on a healthy cut")


def held_out_tools(ws: WindowSet, chosen: np.ndarray, values: np.ndarray, thresholds, policy) -> dict:
    """What the thresholds achieve per tool on the out-of-fold cuts they were chosen on
    (:func:`decide_tools`): totals and each tool."""
    from .toollife import tool_totals

    tools = decide_tools(ws, chosen, values, thresholds, policy)
    return {"totals": tool_totals(tools), "tools": [t.to_dict() for t in tools]}


def decide_tools(ws: WindowSet, chosen: np.ndarray, values: np.ndarray, thresholds, policy) -> list:
    """Each case of the windows ``chosen`` (their alarm scores ``values``), its cuts in run order,
    decided by the daemon's alarm tracker from their median scores (no signals replayed)."""
    from .toollife import decide_on_cut_medians

    cut_of = ws.cut[chosen]
    tools = []
    for case in sorted({ws.archive.cuts[p].case for p in np.unique(cut_of)}):
        cuts = sorted((p for p in np.unique(cut_of) if ws.archive.cuts[p].case == case),
                      key=lambda p: ws.archive.cuts[p].run)
        tools.append(decide_on_cut_medians(
            case, [ws.archive.cuts[p].cut_id for p in cuts], [ws.archive.cuts[p].run for p in cuts],
            ws.cut_vb[cuts], ws.cut_class[cuts], [float(np.median(values[cut_of == p])) for p in cuts],
            [int((cut_of == p).sum()) for p in cuts], [ws.regimes[chosen][cut_of == p][0] for p in cuts],
            policy, thresholds,
        ))
    return tools


def describe_archive(archive: Archive) -> str:
    lines = [f"archive {archive.path}: {len(archive.cuts)} usable cuts, {len(archive.dropped)} dropped"]
    lines += [f"  dropped {d}" for d in archive.dropped]
    return "\n".join(lines)


def fit(
    archive_path: str | Path,
    out: str | Path,
    preset: str = "default",
    split_kind: str = "cut",
    seed: int = 0,
    window: WindowSpec | None = None,
    stable: StableRegionSpec | None = None,
    overrides: dict | None = None,
    folds: int = 4,
    repeats: int = 1,
    rule=None,
):
    """The ``fit`` command: train on the archive, choose the operating point on out-of-fold scores
    of whole tools by ``rule`` (``operating.OperatingRule``), save a bundle and its trade-off plot."""
    from .operating import OperatingRule, format_trade_off
    from .progress import Progress

    from edge_monitor.model.bundle import save_bundle

    from .plots import plot_operating_point

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    hp, config = chosen.hyperparams, chosen.training
    for key, value in (overrides or {}).items():
        if key in TrainingConfig.__dataclass_fields__:
            config = dataclasses.replace(config, **{key: value})
        else:
            hp = dataclasses.replace(hp, **{key: value})

    archive = read_archive(archive_path)
    print(describe_archive(archive), flush=True)
    ws = prepare_windows(archive, window, stable)
    no_region = [c.cut_id for c, n in zip(archive.cuts, ws.cut_windows) if n == 0]
    if no_region:
        # Usually air-only or very short cuts; many of them mean the detector's settings do not
        # suit this archive's current signal (docs/training.md, "From archive to windows").
        print(f"{len(no_region)} cut(s) without a stable cutting region, left out: {', '.join(no_region)}", flush=True)
    if len(ws) == 0:
        raise ValueError(
            f"{archive_path}: the stable-region detector found no stable cutting in any cut; check that "
            f"channel {ws.stable.channel!r} steps up while cutting (docs/training.md)"
        )
    split = make_split(split_kind, ws.cut, ws.cut_class, seed)
    counts = np.bincount(ws.labels, minlength=3)
    print(
        f"{len(ws)} stable windows (healthy {counts[0]}, degraded {counts[1]}, failed {counts[2]}); "
        f"{split_kind} split: train {split.train.size}, validation {split.val.size}, test {split.test.size}",
        flush=True,
    )
    rule = rule or OperatingRule()
    progress = Progress(1 + folds * repeats, config.max_epochs)
    trained = train_model(ws, split, hp, config, seed, callbacks=[progress.model("the bundle's model")])
    print(
        f"trained {trained.epochs_run} epochs in {trained.seconds:.0f} s; best epoch {trained.best_epoch} "
        f"(validation loss {trained.best_val_loss:.5f})",
        flush=True,
    )
    val_metrics = validation_metrics(trained, ws, split)
    print(f"operating point: {folds * repeats} more models, each trained without a fold of the tools", flush=True)
    point, oof_metrics = fold_thresholds(ws, split, hp, config, folds, seed, repeats, rule, progress)
    thresholds = point.thresholds
    training_info = {
        "preset": preset,
        "split": split_kind,
        "seed": seed,
        "archive": str(Path(archive_path)),
        "n_cuts": len(archive.cuts),
        "dropped_cuts": [str(d) for d in archive.dropped],
        "n_train_windows": trained.n_train,
        "n_val_windows": trained.n_val,
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "best_val_loss": trained.best_val_loss,
        "seconds": round(trained.seconds, 1),
        **dataclasses.asdict(config),
        # the alarm rule the thresholds were chosen for (the monitor warns when config.yaml differs)
        "alarm_policy": AlarmPolicy().to_dict(),
    }
    meta = save_bundle(
        out,
        trained.model,
        channels=CHANNELS,
        window=ws.window,
        stable_region=ws.stable,
        scaler=trained.scaler,
        calibration=trained.calibration,
        hyperparams=hp,
        thresholds=thresholds,
        metrics={"validation": val_metrics, "out_of_fold": oof_metrics},
        training=training_info,
        archive_sha256=archive.sha256,
        # held out from training: the exported graph must score them as TensorFlow does
        parity_windows=trained.scaler.transform(ws.data[np.concatenate([split.val, split.test])]),
    )
    print(format_trade_off(point), flush=True)
    print(f"out-of-fold tools (thresholds chosen on them), mean ± sd over {repeats} dealing(s): "
          + format_spread(oof_metrics["summary"]), flush=True)
    print(f"bundle {out} (model {meta.model_id}): {thresholds.describe()}", flush=True)
    print(f"  {thresholds.rule}", flush=True)
    print(f"wrote {plot_operating_point(point, Path(out) / TRADE_OFF_PLOT)}; move the operating point without "
          f"training: python -m training thresholds --bundle {out} --max-false-alarms SHARE", flush=True)
    print(describe_export(meta), flush=True)
    return meta


def describe_export(meta) -> str:
    """One line: the exported graph and how far it is from TensorFlow's scores."""
    s = meta.serving
    worst = max(s.parity.values(), key=lambda d: d["max_rel"])
    return (f"exported {s.file} (ONNX opset {s.opset}): on {s.windows} held-out windows every score within "
            f"{worst['max_rel']:.2g} relative of TensorFlow's (" + ", ".join(
                f"{name} {d['max_rel']:.2g}" for name, d in s.parity.items()) + f"; tolerance {s.tolerance:g})")

