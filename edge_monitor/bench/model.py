"""What the model alone can do, in the benchmark's own process: windows per second of the bundle's
one scoring call (``WindowScorer.score``, as the daemon calls it) at several batch sizes, and of
the method's baseline, one Keras ``model.predict`` per window as the original method scored.

Real windows of the archive are scored, with their cuts' operating regimes. Call
:func:`~edge_monitor.model.device.select_device` before loading the bundle.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..archive.mill import Archive
from ..core.calibration import regime_key
from ..core.windowing import cut_windows
from ..model.bundle import ModelBundle


def archive_windows(archive: Archive, bundle: ModelBundle, at_least: int) -> tuple[np.ndarray, list[str]]:
    """Windows of the archive's first cuts (``at_least`` of them, repeated if the archive is
    short), and each one's operating regime."""
    meta = bundle.meta
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


def scoring_rate(bundle: ModelBundle, windows: np.ndarray, regimes: Sequence[str], batch: int,
                 max_batch: int, seconds: float) -> dict:
    """Windows/s of the daemon's scoring call on batches of ``batch`` windows, timed for about
    ``seconds`` (3 calls at least) after one untimed call."""
    scorer = bundle.scorer()  # the daemon's scorer
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


def predict_baseline(bundle: ModelBundle, windows: np.ndarray, n: int) -> dict:
    """Windows/s of one ``model.predict`` per scaled window (a batch of one), over ``n`` windows
    after one untimed call."""
    model, scaler = bundle.model, bundle.meta.scaler
    x = scaler.transform(windows[: n + 1]).astype(np.float32)
    model.predict(x[:1], verbose=0)
    started = time.perf_counter()
    for i in range(1, n + 1):
        model.predict(x[i : i + 1], verbose=0)
    elapsed = time.perf_counter() - started
    return {"windows": n, "ms_per_window": round(1000 * elapsed / n, 3), "windows_per_s": round(n / elapsed, 1)}


def model_figures(bundle: ModelBundle, archive: Archive, batches: Sequence[int], max_batch: int,
                  seconds: float, baseline_windows: int) -> dict:
    sizes = sorted(set(batches) | {max_batch})
    windows, regimes = archive_windows(archive, bundle, max(max(sizes), baseline_windows + 1))
    rates = [scoring_rate(bundle, windows, regimes, b, max_batch, seconds) for b in sizes]
    baseline = predict_baseline(bundle, windows, baseline_windows)
    at_max = next(r for r in rates if r["batch"] == max_batch)
    return {"max_batch": max_batch, "scoring": rates, "predict_baseline": baseline,
            "speedup_max_batch_over_predict": round(at_max["windows_per_s"] / baseline["windows_per_s"], 1)}
