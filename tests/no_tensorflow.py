"""Makes TensorFlow, Keras, keras-tcn, tf2onnx and SciPy unimportable in this process, as on an edge box
installed with the serving set only (``pip install 'edge-monitor[serve]'``)."""

from __future__ import annotations

import sys

BLOCKED = ("tensorflow", "keras", "tcn", "tf2onnx", "scipy")  # scipy: the replay extra


class BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: this process serves without TensorFlow", name=name)
        return None


def block() -> None:
    if not any(isinstance(f, BlockTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, BlockTensorFlow())
