"""The ground truth of a synthetic archive: the ``<archive>.truth.json`` sidecar that
:func:`~edge_monitor.archive.synthetic.write_synthetic` writes, and how the stable-region detector
agrees with it (``docs/synthetic-archive.md``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.stable_region import StableRegionSpec
from ..core.windowing import WindowSpec, cut_windows


@dataclass(frozen=True)
class CutTruth:
    """What the generator knows about a cut."""

    index: int
    case: int
    run: int
    vb: float  # true wear after the run, mm (the archive's VB may be NaN: unmeasured)
    entry: int  # sample where the tool enters the workpiece
    stable: tuple[int, int]  # [start, stop) samples of steady cutting
    exit: int | None  # sample where the exit starts; None if the cut runs to the end
    corrupt: str | None  # what was corrupted; None for a clean cut

    def to_dict(self) -> dict:
        return {**asdict(self), "stable": list(self.stable)}

    @classmethod
    def from_dict(cls, data: dict) -> "CutTruth":
        return cls(**{**data, "stable": tuple(data["stable"])})


def truth_path(path: str | os.PathLike[str]) -> Path:
    """The truth sidecar of an archive file: ``<archive>.truth.json``."""
    return Path(f"{os.fspath(path)}.truth.json")


def read_truth(path: str | os.PathLike[str]) -> list[CutTruth]:
    """The truth written beside a synthetic archive (give the archive's path or the sidecar's)."""
    path = Path(path)
    sidecar = path if path.name.endswith(".truth.json") else truth_path(path)
    if not sidecar.exists():
        raise FileNotFoundError(
            f"{sidecar}: no truth sidecar (only write_synthetic archives have one)"
        )
    return [CutTruth.from_dict(c) for c in json.loads(sidecar.read_text())["cuts"]]


# --- checking the stable-region detector against the truth ---------------------------------------


@dataclass(frozen=True)
class StableAgreement:
    """Window counts of the stable-region detector against the truth, summed over cuts."""

    kept: int  # windows the detector kept
    kept_inside: int  # of those, windows lying wholly inside the true stable region
    true_windows: int  # grid windows that fit inside the true stable region
    true_kept: int  # of those, windows the detector kept

    @property
    def precision(self) -> float:
        return self.kept_inside / self.kept if self.kept else math.nan

    @property
    def recall(self) -> float:
        return self.true_kept / self.true_windows if self.true_windows else math.nan


def stable_agreement(
    cuts: Sequence,
    truth: Sequence[CutTruth],
    window: WindowSpec | None = None,
    stable: StableRegionSpec | None = None,
) -> StableAgreement:
    """How the stable-region windows of ``cuts`` (archive :class:`~edge_monitor.archive.mill.Cut`\\ s)
    agree with the generator's truth. True windows are the windows of the same grid (every
    ``stride`` samples from sample 0) that fit inside ``truth.stable``."""
    window = window or WindowSpec()
    stable = stable or StableRegionSpec()
    by_index = {t.index: t for t in truth}
    kept = kept_inside = true_windows = true_kept = 0
    for cut in cuts:
        lo, hi = by_index[cut.index].stable
        starts = cut_windows(cut.signals, window, stable).starts
        inside = (starts >= lo) & (starts + window.length <= hi)
        first = -(-lo // window.stride) * window.stride  # first grid start at or after lo
        grid = np.arange(first, hi - window.length + 1, window.stride)
        kept += starts.size
        kept_inside += int(inside.sum())
        true_windows += grid.size
        true_kept += int(np.isin(grid, starts[inside]).sum())
    return StableAgreement(kept, kept_inside, true_windows, true_kept)
