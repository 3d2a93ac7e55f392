"""The scoring graph run by TensorFlow: one compiled function of one fixed shape.

TensorFlow's CPU kernels give a row results that differ in the last bits with the batch's size
(measured: every size from 2 to 300 differs from the others), and at a chosen size not with its
position or its companions: every call has :data:`~.scorer.INFERENCE_ROWS` rows, so a window's
scores never depend on its batch (tests/test_vae.py).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..core.calibration import ScoreCalibration
from .scaling import MinMaxScaler
from .scorer import INFERENCE_ROWS, WindowScorer
from .vae import scoring_model


class TensorFlowInference:
    runtime = "tensorflow"
    rows = INFERENCE_ROWS
    sizes = (INFERENCE_ROWS,)  # one traced shape
    call_cost_rows = 0.0  # (one size: nothing to plan)

    def __init__(self, model: keras.Model) -> None:
        self.graph = scoring_model(model)
        _, self.window_length, self.n_channels = self.graph.inputs[0].shape
        graph = self.graph

        @tf.function(input_signature=[tf.TensorSpec([self.rows, self.window_length, self.n_channels], tf.float32)])
        def infer(x):
            out = graph(x, training=False)
            return out["recon"], out["kl"], out["channels"]

        self._infer = infer

    @property
    def traces(self) -> int:
        """How many times the inference function was traced (1 after the first batch)."""
        return int(self._infer.experimental_get_tracing_count())

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        recon, kl, channels = self._infer(tf.constant(x))
        return recon.numpy(), kl.numpy(), channels.numpy()


def tf_scorer(model: keras.Model, scaler: MinMaxScaler, calibration: ScoreCalibration | None = None) -> WindowScorer:
    """The one scoring call, served by TensorFlow from the training model."""
    return WindowScorer(TensorFlowInference(model), scaler, calibration)
