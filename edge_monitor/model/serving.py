"""A bundle loaded for serving: its metadata and the one scoring call, on the chosen runtime.

The daemon, its reload, ``check`` and ``bench`` load bundles through :func:`load_serving`;
training and ``evaluate`` use :mod:`.bundle` (TensorFlow, the training model). With ONNX Runtime
only ``bundle.json`` and ``scoring.onnx`` are read; ``model.keras`` counts for the model id alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .meta import BundleError, BundleMeta, read_bundle_meta, scoring_id
from .runtime import RuntimeChoice, ServingError
from .scorer import INFERENCE_ROWS, WindowScorer


CPU_THREADS = 1  # ONNX Runtime's intra-op threads on the CPU


@dataclass
class ServingModel:
    path: Path
    meta: BundleMeta
    runtime: RuntimeChoice  # what serves it, where, and why
    _scorer: WindowScorer
    scoring_id: str = ""  # what makes its scores (meta.scoring_id): thresholds moved alone keep it

    def __post_init__(self) -> None:
        if not self.scoring_id:
            self.scoring_id = scoring_id(self.meta, self.path)

    def scorer(self) -> WindowScorer:
        return self._scorer


def call_size_warning(serving: ServingModel) -> str | None:
    """What to tell the user when the runtime must score fewer windows per call than usual to give
    a window the same bits in any batch (:func:`.onnx_inference.call_rows`), else None."""
    rows = serving.scorer().inference.rows
    if rows >= INFERENCE_ROWS:
        return None
    return (f"on this CPU, ONNX Runtime gives the windows of bundle {serving.path} other last bits at other places "
            f"in a batch, so every call scores {rows} window{'s' if rows > 1 else ''} instead of {INFERENCE_ROWS}: "
            "exact, but more CPU per window. Exports made before 2026-12-06 averaged the channels' errors in a way "
            "that does this on AVX-512 CPUs (docs/performance.md); if this bundle's is one, exporting it again "
            f"removes that cause: `python -m training export --bundle {serving.path}`")


def load_serving(path: str | Path, choice: RuntimeChoice, meta: BundleMeta | None = None) -> ServingModel:
    """Validate the bundle at ``path`` and load it on ``choice``'s runtime (``meta``: read already)."""
    path = Path(path)
    if choice.runtime == "tensorflow":
        from .bundle import load_bundle  # TensorFlow: only for this runtime

        bundle = load_bundle(path)
        return ServingModel(path, bundle.meta, choice, bundle.scorer())
    meta = meta or read_bundle_meta(path)
    if meta.serving is None:
        raise BundleError(f"bundle {path}: no exported scoring graph for ONNX Runtime (format {meta.format}); "
                          f"export one with `python -m training export --bundle {path}`, or set runtime: tensorflow")
    from .onnx_inference import OnnxInference

    try:
        # One thread on the CPU: at the daemon's call size a second one saves no time and costs
        # 40 % more CPU (measured: 3.7 ms per call of 48 windows either way, 5.3 vs 3.7 ms of CPU),
        # CPU that the network threads and the broker on the same box need (docs/performance.md).
        inference = OnnxInference(path / meta.serving.file, gpu=choice.kind == "gpu", threads=CPU_THREADS)
    except Exception as exc:  # ONNX Runtime raises its own types for a damaged file
        raise BundleError(f"bundle {path}: {meta.serving.file} cannot be loaded by ONNX Runtime "
                          f"({type(exc).__name__}: {exc}); export it again with "
                          f"`python -m training export --bundle {path}`") from exc
    expected = (meta.window.length, len(meta.channels))
    if (inference.window_length, inference.n_channels) != expected:
        raise BundleError(f"bundle {path}: {meta.serving.file} takes windows of shape "
                          f"{(inference.window_length, inference.n_channels)}, but bundle.json says {expected}")
    if choice.kind == "gpu" and not inference.on_gpu:
        problem = f"ONNX Runtime's CUDA provider did not start (it uses {', '.join(inference.providers)})"
        if choice.device_preference == "gpu":
            raise ServingError(f"device: gpu, but {problem}: check the NVIDIA driver (`nvidia-smi`) and the CUDA "
                               "and cuDNN libraries onnxruntime-gpu needs, or set device: auto or cpu")
        choice = dataclasses.replace(choice, device="cpu", reason=f"{choice.reason}; but {problem}: on the CPU")
    return ServingModel(path, meta, choice, WindowScorer(inference, meta.scaler, meta.calibration))
