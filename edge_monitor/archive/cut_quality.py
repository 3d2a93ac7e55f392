"""Finding corrupt cuts from their signals alone (no hard-coded list of bad runs).

A cut is corrupt when a channel holds non-finite values, is flatlined (one value throughout), or
drops out: holds one exact value for at least ``min_dropout_s`` seconds. Real sensor signals are
noisy floats, so a long run of identical values means the acquisition lost the channel.
"""

from __future__ import annotations

import numpy as np

from ..core.channels import CHANNELS, SAMPLE_RATE_HZ

#: Shortest run of one repeated value that counts as a drop-out, seconds.
MIN_DROPOUT_S = 1.0


def longest_constant_run(x: np.ndarray) -> tuple[int, int]:
    """Length and start index of the longest run of identical consecutive values in ``x``."""
    if x.size == 0:
        return 0, 0
    change = np.flatnonzero(np.diff(x) != 0) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [x.size]))
    lengths = ends - starts
    k = int(np.argmax(lengths))
    return int(lengths[k]), int(starts[k])


def find_corruption(
    signals: np.ndarray, fs: float = SAMPLE_RATE_HZ, min_dropout_s: float = MIN_DROPOUT_S
) -> str | None:
    """The first problem found in a cut's (n, 6) signals, as a sentence naming the field; else None."""
    min_run = max(2, int(round(min_dropout_s * fs)))
    for j, name in enumerate(CHANNELS):
        x = signals[:, j]
        bad = ~np.isfinite(x)
        if bad.any():
            return f"field {name!r} has {int(bad.sum())} non-finite value(s), first at sample {int(np.argmax(bad))}"
        if x.size and np.all(x == x[0]):
            return f"field {name!r} is flatlined (constant {x[0]:g} over all {x.size} samples)"
        run, start = longest_constant_run(x)
        if run >= min_run:
            return (
                f"field {name!r} drops out: constant {x[start]:g} for {run / fs:.1f} s "
                f"from sample {start}"
            )
    return None
