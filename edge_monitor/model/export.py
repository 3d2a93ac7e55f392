"""Exporting the scoring graph for runtimes without TensorFlow, with its proof.

:func:`export_onnx` writes :func:`.vae.scoring_model` as ONNX (Keras' exporter, tf2onnx inside),
loads the file with ONNX Runtime and scores held-out windows with both runtimes: every output of
every window must agree within :data:`.meta.PARITY_TOLERANCE` (relative), or the export fails and
the file is removed. That check is the only guard against an exporter that succeeds and writes
wrong weights (seen: ``from_concrete_functions`` of a ``tf.Module`` gives uninitialised ones).
Needs the ``training`` extra (TensorFlow, tf2onnx, onnx) and ONNX Runtime.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import keras
import numpy as np

from .meta import ONNX_FILE, PARITY_FLOOR, PARITY_TOLERANCE, SCORE_OUTPUTS, BundleError, ServingExport
from .scaling import MinMaxScaler
from .scorer import WindowScorer
from .tf_inference import tf_scorer
from .vae import scoring_model

#: ONNX Runtime 1.14 and TensorRT 8.6 and later run it (the CUDA and TensorRT execution providers).
OPSET = 17
#: Windows the parity check scores at most (a few seconds on a small CPU).
PARITY_WINDOWS = 4096


class ExportError(BundleError):
    """The exported graph does not score as TensorFlow does."""


def parity(tf_scores, other_scores) -> dict:
    """Per output: the largest absolute difference and the largest relative one (against the
    TensorFlow value, or :data:`PARITY_FLOOR` where that is smaller)."""
    out = {}
    for name in SCORE_OUTPUTS:
        ref = np.asarray(getattr(tf_scores, name), np.float64)
        diff = np.abs(np.asarray(getattr(other_scores, name), np.float64) - ref)
        rel = diff / np.maximum(np.abs(ref), PARITY_FLOOR)
        out[name] = {"max_abs": float(diff.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0))}
    return out


def export_onnx(model: keras.Model, directory: str | Path, windows: np.ndarray,
                tolerance: float = PARITY_TOLERANCE) -> ServingExport:
    """Write ``directory/scoring.onnx`` from the training ``model`` and check it on ``windows``
    (scaled, (n, W, C)); the record for ``bundle.json``."""
    from .onnx_inference import OnnxInference  # onnxruntime: only here, not for every TensorFlow user

    windows = np.asarray(windows, np.float32)
    if windows.ndim != 3 or len(windows) == 0:
        raise ValueError(f"need held-out windows (n, length, channels) to check the export, got {windows.shape}")
    if len(windows) > PARITY_WINDOWS:  # spread over the whole set, not its first cuts
        windows = windows[np.linspace(0, len(windows) - 1, PARITY_WINDOWS).astype(int)]
    target = Path(directory) / ONNX_FILE
    graph = scoring_model(model)
    graph(windows[:1])  # Keras exports only a model that was called
    graph.export(str(target), format="onnx", verbose=False, opset_version=OPSET)
    identity = MinMaxScaler(np.zeros(windows.shape[2]), np.ones(windows.shape[2]))
    onnx_scores = WindowScorer(OnnxInference(target), identity).score_scaled(windows)
    tf_scores = tf_scorer(model, identity).score_scaled(windows)
    found = parity(tf_scores, onnx_scores)
    worst = max(found, key=lambda name: found[name]["max_rel"])
    finite = all(np.isfinite(v) for d in found.values() for v in d.values())
    if not finite or not found[worst]["max_rel"] <= tolerance:
        os.unlink(target)
        raise ExportError(
            f"the ONNX export scores differently from TensorFlow{'' if finite else ' (non-finite differences)'}: {worst} differs by {found[worst]['max_rel']:.3g} "
            f"relative (max abs {found[worst]['max_abs']:.3g}) on {len(windows)} held-out windows, more than "
            f"the tolerance {tolerance:g}; nothing exported (report it with the versions: {_versions()})"
        )
    return ServingExport(format="onnx", file=ONNX_FILE, opset=OPSET, tolerance=tolerance, windows=len(windows),
                         parity=found, versions=_versions())


def _versions() -> dict:
    import onnxruntime  # its package is onnxruntime or onnxruntime-gpu

    return {**{name: _version(name) for name in ("tensorflow", "keras", "tf2onnx", "onnx")},
            "onnxruntime": onnxruntime.__version__}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
