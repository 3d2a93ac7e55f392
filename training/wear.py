"""Flank-wear labels: tool classes from VB, and VB for runs where it was not measured.

Classes follow the original work: healthy (0) VB < 0.2 mm, degraded (1) 0.2 <= VB < 0.7 mm,
failed (2) VB >= 0.7 mm.

Unmeasured VB (NaN) is interpolated linearly in run number between the measured runs of the same
case (wear grows monotonically with use, and runs are the only clock the archive keeps per cut).
Before the first measured run the first measurement holds, after the last the last one holds
(no extrapolation: a trend fitted to two points would invent wear). A case with no measurement at
all gets no label (NaN) and its cuts are left out of training and evaluation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

HEALTHY, DEGRADED, FAILED = 0, 1, 2
CLASS_NAMES = ("healthy", "degraded", "failed")
DEGRADED_VB_MM = 0.2
FAILED_VB_MM = 0.7


def tool_class(vb: float | np.ndarray) -> np.ndarray:
    """Class of each VB value (mm): 0 healthy, 1 degraded, 2 failed; -1 where VB is NaN."""
    vb = np.asarray(vb, dtype=float)
    out = np.where(vb >= FAILED_VB_MM, FAILED, np.where(vb >= DEGRADED_VB_MM, DEGRADED, HEALTHY))
    return np.where(np.isnan(vb), -1, out).astype(int)


def interpolate_vb(cases: Sequence[int], runs: Sequence[int], vb: Sequence[float]) -> np.ndarray:
    """VB for every cut, NaNs filled within each case by linear interpolation over run number."""
    cases = np.asarray(cases)
    runs = np.asarray(runs, dtype=float)
    vb = np.asarray(vb, dtype=float)
    filled = vb.copy()
    for case in np.unique(cases):
        member = cases == case
        measured = member & ~np.isnan(vb)
        if not measured.any():
            continue
        order = np.argsort(runs[measured])
        filled[member] = np.interp(runs[member], runs[measured][order], vb[measured][order])
    return filled
