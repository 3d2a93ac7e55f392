"""What the model alone can do, in the benchmark's own process: windows per second of the bundle's
one scoring call (``WindowScorer.score``, as the daemon calls it) at several batch sizes, on the
served runtime and, for comparison, on TensorFlow where it is installed; and of the method's
baseline, one Keras ``model.predict`` per window as the original method scored.

Real windows of the archive are scored, with their cuts' operating regimes.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..archive.mill import Archive
from ..core.calibration import regime_key
from ..core.windowing import cut_windows
from ..model.meta import BundleMeta
from ..model.runtime import installed
from ..model.scorer import WindowScorer
from ..model.serving import ServingModel


def archive_windows(archive: Archive, meta: BundleMeta, at_least: int) -> tuple[np.ndarray, list[str]]:
    """Windows of the archive's first cuts (``at_least`` of them, repeated if the archive is
    short), and each one's operating regime."""
    data, regimes, total = [], [], 0
    for cut in archive.cuts:
        w = cut_windows(cut.signals, meta.window, meta.stable_region)
        if len(w):
            data.append(w.data)
            regimes += [regime_key(cut.doc, cut.feed, cut.material)] * len(w)
            total += len(w)
        if total >= at_least:
            break
    if not data:
        raise ValueError("the archive has no stable windows to score")
    windows = np.concatenate(data)
    repeat = -(-at_least // len(windows))
    return np.tile(windows, (repeat, 1, 1))[:at_least], (regimes * repeat)[:at_least]


def scoring_rate(scorer: WindowScorer, windows: np.ndarray, regimes: Sequence[str], batch: int,
                 seconds: float) -> dict:
    """Windows/s of the daemon's scoring call on batches of ``batch`` windows, timed for about
    ``seconds`` (3 calls at least) after one untimed call."""
    x, r = windows[:batch], list(regimes[:batch])
    scorer.score(x, r)
    calls, started = 0, time.perf_counter()
    while True:
        scorer.score(x, r)
        calls += 1
        elapsed = time.perf_counter() - started
        if calls >= 3 and elapsed >= seconds:
            break
    return {"batch": batch, "calls": calls, "ms_per_call": round(1000 * elapsed / calls, 3),
            "windows_per_s": round(batch * calls / elapsed, 1)}


def predict_baseline(model, scaler, windows: np.ndarray, n: int) -> dict:
    """Windows/s of one Keras ``model.predict`` per scaled window (a batch of one), over ``n``
    windows after one untimed call."""
    x = scaler.transform(windows[: n + 1]).astype(np.float32)
    model.predict(x[:1], verbose=0)
    started = time.perf_counter()
    for i in range(1, n + 1):
        model.predict(x[i : i + 1], verbose=0)
    elapsed = time.perf_counter() - started
    return {"windows": n, "ms_per_window": round(1000 * elapsed / n, 3), "windows_per_s": round(n / elapsed, 1)}


def model_figures(served: ServingModel, archive: Archive, batches: Sequence[int], max_batch: int,
                  seconds: float, baseline_windows: int) -> dict:
    """The served runtime's scoring rates; where TensorFlow is installed, its rates on the same
    windows too, the method's one-predict-per-window baseline, and the served runtime's largest
    differences from TensorFlow's scores."""
    sizes = sorted(set(batches) | {max_batch})
    windows, regimes = archive_windows(archive, served.meta, max(max(sizes), baseline_windows + 1))
    scorers = {served.runtime.runtime: served.scorer()}
    tf_model = None
    if served.runtime.runtime != "tensorflow" and installed("tensorflow"):
        from ..model.bundle import load_bundle

        bundle = load_bundle(served.path)
        scorers["tensorflow"], tf_model = bundle.scorer(), bundle.model
    elif served.runtime.runtime == "tensorflow":
        from ..model.bundle import load_bundle

        tf_model = load_bundle(served.path).model
    by_runtime = {name: [scoring_rate(s, windows, regimes, b, seconds) for b in sizes] for name, s in scorers.items()}
    out = {"max_batch": max_batch, "runtime": served.runtime.runtime, "scoring": by_runtime[served.runtime.runtime],
           "by_runtime": by_runtime, "parity": {}}
    if len(scorers) > 1:
        from ..model.export import parity

        reference = scorers["tensorflow"].score(windows, regimes)
        out["parity"] = {served.runtime.runtime: parity(reference, served.scorer().score(windows, regimes))}
    if tf_model is not None:
        baseline = predict_baseline(tf_model, served.meta.scaler, windows, baseline_windows)
        at_max = next(r for r in out["scoring"] if r["batch"] == max_batch)
        out["predict_baseline"] = baseline
        out["speedup_max_batch_over_predict"] = round(at_max["windows_per_s"] / baseline["windows_per_s"], 1)
    return out
