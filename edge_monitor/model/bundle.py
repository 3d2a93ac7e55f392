"""The model bundle: a directory with the Keras model and everything needed to score with it.

Layout::

    <bundle>/model.keras   the training model in Keras' native format
    <bundle>/scoring.onnx  its scoring graph exported for ONNX Runtime (format 3; ``serving`` in
                           bundle.json: opset, exporter versions, parity with TensorFlow)
    <bundle>/bundle.json   channels, window and stable-region specs, scaler, hyperparameters,
                           thresholds, metrics, training record, archive checksum, versions,
                           serving, model id

``model_id`` is a content hash: 16 hex digits of SHA-256 over the bytes of ``model.keras``, of
``scoring.onnx`` when there is one, and the canonical JSON of every ``bundle.json`` field except
``created`` and ``model_id``. Loading
recomputes it, so a bundle edited or mixed up after saving is refused instead of silently scoring
with the wrong scaler or thresholds. Non-finite floats in ``metrics`` and ``training`` are stored
as ``null`` (JSON has no NaN).

Formats: 4 adds ``thresholds.operating`` (written only by bundles that have one); 3 adds ``serving``, the exported scoring graph (older bundles get one with
``python -m training export``, which writes format 3 and so a new model id). 2 states the stable-region detector's look-ahead (``stable_region.lookahead``). A format 1
bundle has no such key; it reads as ``lookahead = half_width`` (what it was trained and calibrated
with), and its model id stays the one computed over the file as written.

The metadata part (``bundle.json``, its validation, the model id) lives in :mod:`.meta`, which
needs no TensorFlow; it is re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .. import __version__
from ..core.alarm import Thresholds  # re-exported: training imports it from here
from ..core.calibration import ScoreCalibration
from ..core.stable_region import StableRegionSpec
from ..core.windowing import WindowSpec
from .meta import (  # re-exported: the metadata part of a bundle, which needs no TensorFlow
    BUNDLE_FORMAT,
    META_FILE,
    MODEL_FILE,
    BundleError,
    BundleMeta,
    _check_meta,
    check_keras,
    format_holding,
    _meta_from_dict,  # noqa: F401
    _model_id,
    read_bundle_meta,
)
from .scaling import MinMaxScaler
from .scorer import WindowScorer
from .tf_inference import tf_scorer
from .vae import VAEHyperParams, load_vae


@dataclass
class ModelBundle:
    path: Path
    meta: BundleMeta
    model: keras.Model
    _scorer: WindowScorer | None = field(default=None, init=False, repr=False)

    def scorer(self) -> WindowScorer:
        """The bundle's scorer served by TensorFlow (one, so its compiled function is reused)."""
        if self._scorer is None:
            self._scorer = tf_scorer(self.model, self.meta.scaler, self.meta.calibration)
        return self._scorer


def save_bundle(
    path: str | Path,
    model: keras.Model,
    *,
    channels,
    window: WindowSpec,
    stable_region: StableRegionSpec,
    scaler: MinMaxScaler,
    calibration: ScoreCalibration,
    hyperparams: VAEHyperParams,
    thresholds: Thresholds,
    metrics: dict,
    training: dict,
    archive_sha256: str,
    parity_windows: np.ndarray | None = None,
) -> BundleMeta:
    """Write a bundle at ``path``, atomically: it is built in a temporary directory beside ``path``
    and renamed into place when complete, replacing an existing bundle there. With
    ``parity_windows`` (held-out, scaled) the scoring graph is exported too, and checked on them
    (:func:`.export.export_onnx`)."""
    path = Path(path)
    where = f"bundle {path}: {META_FILE} key"
    for name, value in (("metrics", metrics), ("training", training)):
        if not isinstance(value, dict):
            raise BundleError(f"{where} {name} must be a dict of plain data, got {type(value).__name__}")
    meta = BundleMeta(
        model_id="",
        channels=tuple(channels),
        window=window,
        stable_region=stable_region,
        scaler=scaler,
        calibration=calibration,
        hyperparams=hyperparams,
        thresholds=thresholds,
        metrics=_plain(metrics, f"{where} metrics"),
        training=_plain(training, f"{where} training"),
        archive_sha256=str(archive_sha256),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
        format=3,  # serving (format 3) and what format_holding adds
    )
    meta.format = format_holding(meta)
    _check_meta(meta, path)
    _check_model(model, meta, path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / META_FILE).exists())):
        raise BundleError(f"bundle {path}: exists and is not a bundle; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from a service user it is copied for
        model.save(tmp / MODEL_FILE)
        failed = None
        if parity_windows is not None:
            from .export import export_onnx

            try:
                meta.serving = export_onnx(model, tmp, parity_windows)
            except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, the trained model is kept
                failed = exc
        _write_meta(tmp, meta)
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed is not None:
        from .export import ExportError

        raise ExportError(f"bundle {path} was saved without an exported model (runtime: tensorflow serves it; "
                          f"`python -m training export --bundle {path}` tries again): "
                          f"{type(failed).__name__}: {failed}") from failed
    return meta


def export_bundle(path: str | Path, parity_windows: np.ndarray) -> BundleMeta:
    """Export the scoring graph of the bundle at ``path`` into it (format 3; a new model id, as
    its content changes), checked on ``parity_windows`` (raw signal windows: scaled here with the
    bundle's scaler). Atomic, as :func:`save_bundle`."""
    from .export import export_onnx

    bundle = load_bundle(Path(path).resolve())  # a symlink (install.sh's bundle link) keeps pointing at it
    path = bundle.path
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tmp.chmod(0o755)
        shutil.copy2(path / MODEL_FILE, tmp / MODEL_FILE)
        meta = dataclasses.replace(bundle.meta, format=max(bundle.meta.format, 3))  # the format adding serving
        meta.serving = export_onnx(bundle.model, tmp, meta.scaler.transform(parity_windows))
        _write_meta(tmp, meta)
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write_meta(directory: Path, meta: BundleMeta) -> None:
    """``bundle.json``, with the model id over the files already in ``directory``."""
    files = [MODEL_FILE] + ([meta.serving.file] if meta.serving else [])
    meta.model_id = _model_id(*((directory / f).read_bytes() for f in files), meta=meta)
    (directory / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2, allow_nan=False) + "\n")


def load_bundle(path: str | Path) -> ModelBundle:
    """Validate the bundle at ``path`` and load its model for scoring."""
    path = Path(path)
    meta = read_bundle_meta(path)
    check_keras(meta, path)
    try:
        model = load_vae(path / MODEL_FILE, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive; all mean the same here
        raise BundleError(
            f"bundle {path}: {MODEL_FILE} cannot be loaded ({type(exc).__name__}: {exc})"
        ) from exc
    _check_model(model, meta, path)
    return ModelBundle(path, meta, model)


def _check_model(model: keras.Model, meta: BundleMeta, path: Path) -> None:
    expected = (meta.window.length, len(meta.channels))
    shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if shape != expected:
        raise BundleError(
            f"bundle {path}: {MODEL_FILE} takes windows of shape {shape}, but {META_FILE} "
            f"'window'/'channels' say {expected}"
        )
    names = {layer.name for layer in model.layers}
    if not {"encoder", "decoder"} <= names:
        raise BundleError(f"bundle {path}: {MODEL_FILE} has no 'encoder' and 'decoder' sub-models")
    codings = model.get_layer("encoder").outputs[0].shape[-1]
    if codings != meta.hyperparams.codings:
        raise BundleError(
            f"bundle {path}: {MODEL_FILE} has {codings} codings but {META_FILE} 'hyperparams' says "
            f"{meta.hyperparams.codings}"
        )


def _plain(value, where: str):
    """``value`` as plain JSON data (numpy scalars and arrays converted, non-finite floats -> None)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise BundleError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise BundleError(f"{where}: {type(value).__name__} is not JSON data")


def _versions() -> dict:
    return {
        "edge_monitor": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras-tcn": metadata.version("keras-tcn"),
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete ``new`` directory to ``target``; an old ``target`` is removed only after."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent)) / "bundle"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)  # put the old bundle back
        raise
    shutil.rmtree(old.parent, ignore_errors=True)
