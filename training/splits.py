"""Train / validation / test splits.

``cut`` (default): every window of a cut lands on one side; cuts are stratified by their class.
Windows of one cut are near-duplicates, so this is the honest estimate of performance on new cuts.

``window``: the original method's window-level split, stratified by window class, 67 / 16.5 / 16.5.
It leaks near-duplicate windows between the sides; kept for comparison with published figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

SPLIT_KINDS = ("cut", "window")
TRAIN_FRACTION, VAL_FRACTION = 0.67, 0.165


@dataclass(frozen=True)
class Split:
    kind: str
    seed: int
    train: np.ndarray  # window indices
    val: np.ndarray
    test: np.ndarray


def _stratify(labels: np.ndarray) -> np.ndarray | None:
    # A class too rare to put a member on each side cannot be stratified: split without it.
    _, counts = np.unique(labels, return_counts=True)
    return labels if counts.min() >= 2 else None


def _three_way(items: np.ndarray, strata: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Split sorted ``items`` (with their ``strata``) into train / validation / test."""
    train, rest = train_test_split(
        items, train_size=TRAIN_FRACTION, stratify=_stratify(strata), random_state=seed
    )
    rest_strata = strata[np.searchsorted(items, rest)]
    val, test = train_test_split(
        rest, test_size=0.5, stratify=_stratify(rest_strata), random_state=seed + 1
    )
    return np.sort(train), np.sort(val), np.sort(test)


def make_split(kind: str, window_cut: np.ndarray, cut_class: np.ndarray, seed: int = 0) -> Split:
    """Split windows (``window_cut[i]`` = the cut of window i, ``cut_class[c]`` = class of cut c)."""
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_KINDS)}, got {kind!r}")
    window_cut = np.asarray(window_cut)
    if kind == "cut":
        cuts = np.unique(window_cut)
        tr, va, te = _three_way(cuts, np.asarray(cut_class)[cuts], seed)
        pick = lambda chosen: np.flatnonzero(np.isin(window_cut, chosen))  # noqa: E731
        return Split(kind, seed, pick(tr), pick(va), pick(te))
    items = np.arange(window_cut.size)
    tr, va, te = _three_way(items, np.asarray(cut_class)[window_cut], seed)
    return Split(kind, seed, tr, va, te)
