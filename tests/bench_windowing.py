"""Benchmark: preparing every window of the full 167-cut archive (target: under 10 s on 2 cores).

Run with ``make bench-windowing`` or ``.venv/bin/python -m tests.bench_windowing [archive]``. Prints figures;
the incremental path is also timed in the same run, as a ratio, since the daemon uses it live.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.synthetic import write_synthetic
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import CutWindower, WindowSpec
from training.dataset import prepare_windows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            path = Path(sys.argv[1])
        else:
            path = Path(tmp) / "mill.mat"
            write_synthetic(path)
        t0 = time.perf_counter()
        archive = read_archive(path)
        t1 = time.perf_counter()
        ws = prepare_windows(archive)
        t2 = time.perf_counter()
        # The live path: the same cuts pushed in 250-sample chunks (one second of signal each).
        n = 0
        for cut in archive.cuts:
            w = CutWindower(WindowSpec(), StableRegionSpec())
            for i in range(0, cut.n_samples, 250):
                n += len(w.push(cut.signals[i : i + 250]))
            n += len(w.finish())
        t3 = time.perf_counter()
    print(f"archive: {len(archive.cuts)} cuts, {len(ws)} windows of {ws.data.shape[1:]}")
    print(f"read archive          {t1 - t0:6.2f} s")
    print(f"prepare all windows   {t2 - t1:6.2f} s   (target < 10 s, with reading {t2 - t0:.2f} s)")
    print(f"incremental, 1 s chunks {t3 - t2:4.2f} s   ({(t3 - t2) / (t2 - t1):.1f}x the one-piece path)")
    assert n == len(ws) or np.any(ws.cut_class < 0)


if __name__ == "__main__":
    main()
