"""Choosing where the model runs: ``auto`` (a GPU when there is one), ``cpu`` or ``gpu``.

Call :func:`select_device` before TensorFlow runs any operation: device visibility and memory
growth can only be set before the runtime initialises.
"""

from __future__ import annotations

import tensorflow as tf

DEVICE_PREFERENCES: tuple[str, ...] = ("auto", "cpu", "gpu")


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


def select_device(preference: str) -> str:
    """Apply ``preference`` and return the device in use: ``"cpu"`` or ``"gpu:0 (<name>)"``."""
    if preference not in DEVICE_PREFERENCES:
        raise ValueError(f"device: expected one of {', '.join(DEVICE_PREFERENCES)}, got {preference!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if preference == "gpu" and not gpus:
        raise DeviceError(
            "device: gpu was requested but TensorFlow finds no GPU (check the NVIDIA driver with "
            "`nvidia-smi` and that the `gpu` extra is installed), or set device: auto or cpu"
        )
    if not gpus:
        return "cpu"
    try:
        if preference == "cpu":
            tf.config.set_visible_devices([], "GPU")
            return "cpu"
        for gpu in gpus:
            # Grow GPU memory on demand instead of claiming all of it: the edge box may share it.
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:
        raise DeviceError(
            f"device: cannot apply {preference!r} after TensorFlow has started ({exc}); "
            "select the device before loading the model"
        ) from exc
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"gpu:0 ({details.get('device_name', gpus[0].name)})"
