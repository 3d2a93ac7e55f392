"""The stable-region detector's look-ahead against the synthetic archives' truth.

``python -m training lookahead-study --seeds 0,1,2,3,4 [--lookaheads 1,2,3] [--half-width 3]
[--exit-ramp-scale X] [--entry-ramp-scale X]``

For every seed a full synthetic archive is written to a temporary directory and read back like any
archive (corrupt cuts dropped), then every lookahead is scored with
:func:`~edge_monitor.archive.truth.stable_agreement`: a kept window is right when it lies wholly in
the true steady cutting; recall counts the true windows of the grid that were kept. The table gives
mean ± sd over the seeds (and the range), and where the wrong windows lie: before the true steady
cutting (the entry transient) or after it (the exit).

The ramp scales stretch the generator's entry and exit ramps (a stress test: real transients may
well be slower than the generator draws them; ``docs/training.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.archive import synthetic
from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.synthetic import write_synthetic
from edge_monitor.archive.truth import CutTruth, stable_agreement
from edge_monitor.core.channels import SAMPLE_RATE_HZ
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import WindowSpec, cut_windows

PRECISION_TARGET = 0.95


@dataclass(frozen=True)
class Row:
    """One archive scored with one lookahead."""

    seed: int
    lookahead: int
    precision: float
    recall: float
    kept: int
    wrong_entry: int  # kept windows starting before the true steady cutting
    wrong_exit: int  # kept windows reaching past it


def score_archive(cuts: Sequence, truth: Sequence[CutTruth], seed: int, lookaheads: Sequence[int],
                  base: StableRegionSpec, window: WindowSpec) -> list[Row]:
    by_index = {t.index: t for t in truth}
    rows = []
    for a in lookaheads:
        spec = dataclasses.replace(base, lookahead=a)
        agreement = stable_agreement(cuts, truth, window, spec)
        entry = exit_ = 0
        for cut in cuts:
            lo, hi = by_index[cut.index].stable
            starts = cut_windows(cut.signals, window, spec).starts
            entry += int((starts < lo).sum())
            exit_ += int(((starts >= lo) & (starts + window.length > hi)).sum())
        assert entry + exit_ == agreement.kept - agreement.kept_inside
        rows.append(Row(seed, a, agreement.precision, agreement.recall, agreement.kept, entry, exit_))
    return rows


@contextlib.contextmanager
def stretched_ramps(exit_scale: float = 1.0, entry_scale: float = 1.0):
    """The synthetic generator with every cut's exit and entry ramps this many times longer (its
    truth follows: the steady cutting starts once the longer entry has settled)."""
    if exit_scale <= 0 or entry_scale <= 0:
        raise ValueError("ramp scales must be positive")
    original = synthetic._timeline

    def timeline(rng, spec, duration):
        tl = original(rng, spec, duration)
        return dataclasses.replace(tl, ramp=tl.ramp * entry_scale, exit_ramp=tl.exit_ramp * exit_scale)

    synthetic._timeline = timeline
    try:
        yield
    finally:
        synthetic._timeline = original


def study(seeds: Sequence[int], lookaheads: Sequence[int], half_width: int,
          window: WindowSpec | None = None, exit_scale: float = 1.0, entry_scale: float = 1.0) -> list[Row]:
    window = window or WindowSpec()
    base = dataclasses.replace(StableRegionSpec(), half_width=half_width)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, stretched_ramps(exit_scale, entry_scale):
        for seed in seeds:
            path = Path(tmp) / f"mill-{seed}.mat"
            synthetic = write_synthetic(path, seed=seed)
            archive = read_archive(path)
            path.unlink()
            rows += score_archive(archive.cuts, synthetic.truth, seed, lookaheads, base, window)
            done = [r for r in rows if r.seed == seed]
            print(f"seed {seed}: {len(archive.cuts)} cuts; "
                  + ", ".join(f"lookahead {r.lookahead}: P {r.precision:.4f} R {r.recall:.4f}" for r in done),
                  flush=True)
    return rows


def _spread(values: Sequence[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {sd:.{digits}f} ({v.min():.{digits}f}–{v.max():.{digits}f})"


def table(rows: Sequence[Row], block: int) -> str:
    seeds = sorted({r.seed for r in rows})
    lines = [
        f"over seeds {','.join(map(str, seeds))}: mean ± sd (min–max)",
        (f"{'lookahead':>9}  {'latency':>8}  {'precision':<29}{'recall':<29}{'kept':>8}  "
         f"{'wrong: entry':>12}  {'exit':>6}"),
    ]
    for a in sorted({r.lookahead for r in rows}):
        mine = [r for r in rows if r.lookahead == a]
        ms = a * block / SAMPLE_RATE_HZ * 1000
        lines.append(
            f"{a:>9}  {ms:>5.0f} ms  {_spread([r.precision for r in mine]):<29}{_spread([r.recall for r in mine]):<29}"
            f"{np.mean([r.kept for r in mine]):>8.0f}  {np.mean([r.wrong_entry for r in mine]):>12.0f}  "
            f"{np.mean([r.wrong_exit for r in mine]):>6.0f}"
        )
    ok = [a for a in sorted({r.lookahead for r in rows})
          if min(r.precision for r in rows if r.lookahead == a) >= PRECISION_TARGET]
    lines.append(
        f"smallest lookahead with precision >= {PRECISION_TARGET} on every seed: {ok[0] if ok else 'none'}"
        " (on this generator: docs/training.md weighs it against slower transients)"
    )
    return "\n".join(lines)


def run(seeds: Sequence[int], lookaheads: Sequence[int], half_width: int,
        exit_scale: float = 1.0, entry_scale: float = 1.0) -> str:
    rows = study(seeds, lookaheads, half_width, exit_scale=exit_scale, entry_scale=entry_scale)
    text = table(rows, StableRegionSpec().block)
    if exit_scale != 1.0 or entry_scale != 1.0:
        text = f"the generator's exit ramps x{exit_scale:g}, entry ramps x{entry_scale:g}\n" + text
    print(text)
    return text
