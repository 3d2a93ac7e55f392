"""Which runtime serves the model, on which device, and why: chosen once at start.

``runtime: auto`` takes ONNX Runtime when the bundle has an exported scoring graph and ONNX
Runtime is installed (the edge box's install: no TensorFlow), TensorFlow otherwise (a training
install serving an older bundle). ``device: auto`` takes the GPU when the runtime finds one: ONNX
Runtime through its CUDA execution provider (the ``onnxruntime-gpu`` package), TensorFlow when it
is built with CUDA. TensorFlow is imported only when it is the runtime; nothing here imports it
otherwise, so that a daemon serving ONNX never loads it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .meta import BundleMeta

RUNTIMES: tuple[str, ...] = ("auto", "onnxruntime", "tensorflow")
DEVICE_PREFERENCES: tuple[str, ...] = ("auto", "cpu", "gpu")


class ServingError(RuntimeError):
    """The runtime or device asked for cannot be used; the message names what to change."""


@dataclass(frozen=True)
class RuntimeChoice:
    """``runtime``: "onnxruntime" or "tensorflow"; ``device``: "cpu", "gpu" or the TensorFlow
    device's name ("gpu:0 (NVIDIA …)"); ``reason``: why, in words."""

    runtime: str
    device: str
    reason: str
    device_preference: str = "auto"

    @property
    def kind(self) -> str:
        """``cpu`` or ``gpu``, as the status message reports it."""
        return "cpu" if self.device == "cpu" else "gpu"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def choose_runtime(runtime: str, device: str, meta: BundleMeta, bundle: str = "") -> RuntimeChoice:
    """The runtime and device for ``meta``'s bundle; for TensorFlow the device is applied now
    (it can only be before TensorFlow runs anything)."""
    runtime, why = pick_runtime(runtime, meta, bundle)
    if device not in DEVICE_PREFERENCES:
        raise ValueError(f"device: expected one of {', '.join(DEVICE_PREFERENCES)}, got {device!r}")
    if runtime == "tensorflow":
        from .device import DeviceError, choose_device  # TensorFlow loads here

        try:
            chosen = choose_device(device)
        except DeviceError as exc:
            raise ServingError(str(exc)) from None
        return RuntimeChoice("tensorflow", chosen.name, f"runtime {why}; device {chosen.reason}", device)
    return _onnx_device(device, why)


def pick_runtime(runtime: str, meta: BundleMeta, bundle: str = "") -> tuple[str, str]:
    """The runtime for ``meta``'s bundle and why, without loading any: "onnxruntime" or "tensorflow"."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    export = f"`python -m training export --bundle {bundle or '<bundle>'}` (where TensorFlow is installed)"
    if runtime == "auto":
        if meta.serving is not None and installed("onnxruntime"):
            runtime, why = "onnxruntime", f"the bundle has {meta.serving.file}"
        elif installed("tensorflow"):
            runtime = "tensorflow"
            why = ("ONNX Runtime is not installed (pip install 'edge-monitor[serve]')" if meta.serving is not None
                   else f"the bundle has no exported model: {export} serves it without TensorFlow")
        elif meta.serving is None:
            raise ServingError(f"bundle {bundle}: no exported scoring graph (format {meta.format}), and TensorFlow "
                                f"is not installed to serve model.keras: export one with {export}")
        else:
            raise ServingError("neither ONNX Runtime nor TensorFlow is installed: pip install "
                                "'edge-monitor[serve]' (CPU) or 'edge-monitor[gpu]' (NVIDIA GPU)")
        why = f"requested auto; {why}"
    else:
        why = f"requested {runtime}"
        if not installed(runtime):
            extra = "'edge-monitor[serve]' or 'edge-monitor[gpu]'" if runtime == "onnxruntime" else "'edge-monitor[training]'"
            raise ServingError(f"runtime: {runtime} is not installed (pip install {extra}), or set runtime: auto")
        if runtime == "onnxruntime" and meta.serving is None:
            raise ServingError(f"runtime: onnxruntime, but bundle {bundle} has no exported scoring graph "
                                f"(format {meta.format}): export one with {export}, or set runtime: auto")
    return runtime, why


def _onnx_device(device: str, why: str) -> RuntimeChoice:
    import onnxruntime as ort

    from .onnx_inference import CUDA_PROVIDER

    cuda = CUDA_PROVIDER in ort.get_available_providers()
    if device == "gpu" and not cuda:
        raise ServingError(
            f"device: gpu was requested but this ONNX Runtime {ort.__version__} has no CUDA execution provider "
            "(pip install 'edge-monitor[gpu]', which brings onnxruntime-gpu, instead of the CPU build), "
            "or set device: auto or cpu")
    if device == "cpu" or not cuda:
        detail = "the CUDA provider not used" if cuda else "a CPU build (no CUDA provider)"
        return RuntimeChoice("onnxruntime", "cpu", f"runtime {why}; device requested {device}: ONNX Runtime "
                             f"{ort.__version__}, {detail}", device)
    # Whether CUDA really starts is known once a session exists (serving.load_serving checks it).
    return RuntimeChoice("onnxruntime", "gpu", f"runtime {why}; device requested {device}: ONNX Runtime "
                         f"{ort.__version__} with the CUDA provider", device)
