"""Choosing where the model runs: ``auto`` (a GPU when there is one), ``cpu`` or ``gpu``.

Call :func:`choose_device` (or :func:`select_device`, the device alone) before TensorFlow runs
any operation: device visibility and memory growth can only be set before the runtime initialises.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from .runtime import DEVICE_PREFERENCES


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device in use and why: ``name`` is ``"cpu"`` or ``"gpu:0 (<name>)"``; ``reason`` e.g.
    ``"requested auto; TensorFlow sees no GPU"`` or ``"requested auto; 1 GPU visible"``."""

    name: str
    reason: str

    @property
    def kind(self) -> str:
        """``cpu`` or ``gpu``, as the status message reports it."""
        return "cpu" if self.name == "cpu" else "gpu"


def choose_device(preference: str) -> DeviceChoice:
    """Apply ``preference`` and return the device in use, with the reason."""
    if preference not in DEVICE_PREFERENCES:
        raise ValueError(f"device: expected one of {', '.join(DEVICE_PREFERENCES)}, got {preference!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if preference == "gpu" and not gpus:
        raise DeviceError(
            "device: gpu was requested but TensorFlow finds no GPU (check the NVIDIA driver with "
            "`nvidia-smi` and that the `gpu` extra is installed), or set device: auto or cpu"
        )
    if not gpus:
        built = "" if tf.test.is_built_with_cuda() else " (this TensorFlow is built without CUDA)"
        return DeviceChoice("cpu", f"requested {preference}; TensorFlow sees no GPU{built}")
    visible = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} visible"
    try:
        if preference == "cpu":
            tf.config.set_visible_devices([], "GPU")
            return DeviceChoice("cpu", f"requested cpu; {visible}, hidden from TensorFlow")
        for gpu in gpus:
            # Grow GPU memory on demand instead of claiming all of it: the edge box may share it.
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:
        raise DeviceError(
            f"device: cannot apply {preference!r} after TensorFlow has started ({exc}); "
            "select the device before loading the model"
        ) from exc
    details = tf.config.experimental.get_device_details(gpus[0])
    return DeviceChoice(f"gpu:0 ({details.get('device_name', gpus[0].name)})",
                        f"requested {preference}; {visible}" + ("; the first one used" if len(gpus) > 1 else ""))


def sees_no_gpu() -> bool:
    """TensorFlow finds no GPU: what CUDA says about that on this box is no news (for processes
    that do not choose a device, such as training)."""
    return not tf.config.list_physical_devices("GPU")


def select_device(preference: str) -> str:
    """Apply ``preference`` and return the device in use: ``"cpu"`` or ``"gpu:0 (<name>)"``."""
    return choose_device(preference).name
