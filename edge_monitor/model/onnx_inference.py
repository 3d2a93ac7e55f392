"""The scoring graph exported to ONNX (:mod:`.export`), run by ONNX Runtime: no TensorFlow.

On the CPU, or on an NVIDIA GPU through ONNX Runtime's CUDA execution provider (the
``onnxruntime-gpu`` package, the ``gpu`` extra): :mod:`.runtime` chooses. ONNX Runtime falls back
to the CPU silently when the CUDA provider cannot start (no driver, a missing CUDA library), so
the session is asked what it really uses.

Every call has a fixed number of windows (:func:`call_rows`) but those of what is left of a batch,
which take a few smaller sizes (:func:`call_sizes`, the last call padded); both are probed when the model loads,
and only sizes at which every probed window gets the bits of a full call are used: at another
batch size or position a window can get other last bits, and a window scored again after a crash
must be published byte for byte as the first time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .meta import SCORE_OUTPUTS
from .scorer import INFERENCE_ROWS

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Warnings and errors of ONNX Runtime's own log go to stderr: only errors, the rest is noise here
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    # The daemon calls in short bursts: worker threads that spin between calls burn a core for
    # nothing on a box shared with the broker.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.use_deterministic_compute = True
    return options


class OnnxInference:
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, *, gpu: bool = False, threads: int | None = None) -> None:
        # cuDNN's convolution algorithms chosen by heuristics, not by timing each process anew:
        # the same window gets the same bits after a restart
        cuda = (CUDA_PROVIDER, {"cudnn_conv_algo_search": "HEURISTIC"})
        providers = [cuda, CPU_PROVIDER] if gpu else [CPU_PROVIDER]
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        # A provider failing in run() would otherwise rebuild the session on the CPU silently
        self.session.disable_fallback()
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 3:
            raise ValueError(f"{path}: expected one input of windows (n, length, channels), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self._input = inputs[0].name
        _, self.window_length, self.n_channels = inputs[0].shape
        if not (isinstance(self.window_length, int) and isinstance(self.n_channels, int)):
            raise ValueError(f"{path}: the window's length and channels must be fixed, got {inputs[0].shape}")
        names = [o.name for o in self.session.get_outputs()]
        if sorted(names) != sorted(SCORE_OUTPUTS):
            raise ValueError(f"{path}: expected the outputs {', '.join(SCORE_OUTPUTS)}, got {', '.join(names)}")
        self._outputs = list(SCORE_OUTPUTS)
        self.providers = self.session.get_providers()  # what it really uses, in order
        self.on_gpu = self.providers[0] == CUDA_PROVIDER
        self.rows = INFERENCE_ROWS  # while probing
        self.rows = call_rows(self)
        self.sizes = call_sizes(self)
        # what a call costs besides its rows (scorer.call_plan): on a CPU about two rows' worth
        # (measured: a call of 2 costs as 4 rows of a call of 48); on a GPU the call is the cost,
        # its rows next to nothing, so what is left of a batch goes in one padded call
        self.call_cost_rows = float(self.rows) if self.on_gpu else 2.0

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        recon, kl, channels = self.session.run(self._outputs, {self._input: x})
        return recon, kl, channels


def call_rows(inference: OnnxInference) -> int:
    """How many windows every call gets, so that a window's scores never depend on its batch: the
    first size at which every window of a probe scores the same at other positions and beside zero
    padding, else 1 (a call per window: slow, but exact). A fixed size always, as with TensorFlow:
    measured, ONNX Runtime's CPU kernels give a window other bits at some batch sizes (39-58 but
    48, with two threads), and on AVX-512 a tiny test model gives about half of its windows other
    bits when they move by an odd number of rows, at every size."""
    for rows in (INFERENCE_ROWS, 16, 4):
        if position_invariant(inference, rows):
            return rows
    return 1


#: Smaller calls offered for the last part of a batch, where they score exactly as a full call:
#: at 100 machines in real time a batch holds about 5 windows, and a call of 8 costs a quarter of
#: a call of 48 (measured: 0.6 vs 2.5 ms of CPU). Not 1: a lone row takes other kernels.
SMALL_CALLS = (2, 4, 8, 16)


def call_sizes(inference: OnnxInference) -> tuple[int, ...]:
    """The call sizes up to :attr:`rows` at which every window of a probe gets the bits it gets in
    a call of ``rows``: each window at two places in such calls, and with the call filled from the
    next smaller size plus one up to all but one row, the rest zero padding; ascending."""
    rows = inference.rows
    batch = _probe(inference, rows, 1)
    whole = inference(batch)
    rolled = np.roll(batch, 1, axis=0)
    whole_rolled = [np.roll(w, 1, axis=0) for w in whole]
    sizes, smaller = [], 1
    for size in (s for s in SMALL_CALLS if s < rows):
        fills = sorted({smaller + 1, -(-size // 2), size - 1} & set(range(1, size)))
        if (_agrees(inference, batch, whole, size) and _agrees(inference, rolled, whole_rolled, size)
                and all(_padded_agrees(inference, batch, whole, size, kept) for kept in fills)):
            sizes.append(size)
        smaller = size
    return (*sizes, rows)


def _agrees(inference: OnnxInference, batch: np.ndarray, whole, size: int) -> bool:
    """Calls of ``size`` windows over ``batch`` score each as ``whole`` (its scores in one call)."""
    for start in range(0, len(batch) - size + 1, size):
        scores = inference(batch[start : start + size])
        if not all(np.array_equal(s, w[start : start + size]) for s, w in zip(scores, whole)):
            return False
    return True


def _padded_agrees(inference: OnnxInference, batch: np.ndarray, whole, size: int, kept: int) -> bool:
    """A call of ``size`` holding ``batch``'s first ``kept`` windows and zero padding, as the
    scorer's last call of a batch, scores them as ``whole`` does."""
    padded = np.zeros_like(batch[:size])
    padded[:kept] = batch[:kept]
    return all(np.array_equal(s[:kept], w[:kept]) for s, w in zip(inference(padded), whole))


def _probe(inference: OnnxInference, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, inference.window_length, inference.n_channels), dtype=np.float32)


def position_invariant(inference: OnnxInference, rows: int) -> bool:
    """Every window of a call of ``rows`` windows scores the same, to the last bit, when the call is
    rotated by one, two, three and ``rows - 1`` places, and when its second half or its last row is
    zero padding (the scorer's last call). Every window is compared, not one: whether a window's
    bits move depends on its values as well as its position."""
    batch = _probe(inference, rows, 1)
    whole = inference(batch)
    for shift in sorted({1, 2, 3, rows - 1} & set(range(1, rows))):
        scores = inference(np.roll(batch, shift, axis=0))
        if not all(np.array_equal(np.roll(s, -shift, axis=0), w) for s, w in zip(scores, whole)):
            return False
    return all(_padded_agrees(inference, batch, whole, rows, kept)
               for kept in sorted({-(-rows // 2), rows - 1} & set(range(1, rows))))
