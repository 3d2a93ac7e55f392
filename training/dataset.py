"""The archive as labelled windows: every stable window of every usable cut, with its cut's labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_monitor.archive.mill import Archive
from edge_monitor.core.calibration import regime_key
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import Windows, WindowSpec, cut_windows

from .wear import FAILED, HEALTHY, interpolate_vb, tool_class


@dataclass
class WindowSet:
    """Windows of an archive. Per-window arrays are indexed like ``data``; per-cut arrays like
    ``archive.cuts``; ``cut`` maps each window to its cut's position."""

    archive: Archive
    window: WindowSpec
    stable: StableRegionSpec
    data: np.ndarray  # (n, length, channels) raw signal values
    starts: np.ndarray  # (n,) first sample of each window in its cut
    cut: np.ndarray  # (n,) position of the window's cut in archive.cuts
    cut_vb: np.ndarray  # (cuts,) VB with unmeasured runs interpolated, mm
    cut_class: np.ndarray  # (cuts,) 0 healthy, 1 degraded, 2 failed, -1 unlabelled
    cut_windows: np.ndarray  # (cuts,) windows per cut

    def __len__(self) -> int:
        return int(self.starts.size)

    @property
    def labels(self) -> np.ndarray:
        """Class of each window (its cut's class)."""
        return self.cut_class[self.cut]

    @property
    def failed(self) -> np.ndarray:
        return self.labels == FAILED

    @property
    def healthy(self) -> np.ndarray:
        return self.labels == HEALTHY

    @property
    def regimes(self) -> np.ndarray:
        """Operating regime (depth of cut, feed, material) of each window's cut."""
        keys = np.array([regime_key(c.doc, c.feed, c.material) for c in self.archive.cuts], dtype=object)
        return keys[self.cut]

    def cut_field(self, name: str) -> np.ndarray:
        """A per-window array of one cut attribute (``case``, ``run``, ``doc``, ``feed``, ...)."""
        return np.asarray([getattr(c, name) for c in self.archive.cuts])[self.cut]


def prepare_windows(
    archive: Archive, window: WindowSpec | None = None, stable: StableRegionSpec | None = None
) -> WindowSet:
    window = window or WindowSpec()
    stable = stable or StableRegionSpec()
    cuts = archive.cuts
    vb = interpolate_vb([c.case for c in cuts], [c.run for c in cuts], [c.vb for c in cuts])
    classes = tool_class(vb)
    parts: list[Windows] = []
    owners: list[np.ndarray] = []
    counts = np.zeros(len(cuts), dtype=int)
    for pos, c in enumerate(cuts):
        w = cut_windows(c.signals, window, stable)
        parts.append(w)
        owners.append(np.full(len(w), pos))
        counts[pos] = len(w)
    n_ch = cuts[0].signals.shape[1]
    windows = Windows.concat(parts, window.length, n_ch)
    cut = np.concatenate(owners) if owners else np.empty(0, int)
    # Cuts whose wear is unknown (a case with no VB measurement at all) carry no label.
    keep = classes[cut] >= 0
    return WindowSet(
        archive, window, stable, windows.data[keep], windows.starts[keep], cut[keep],
        vb, classes, counts,
    )
