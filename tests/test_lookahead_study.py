"""``python -m training lookahead-study``: its figures are the truth's window agreement, split by
where the wrong windows lie; the stress test leaves the generator as it found it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edge_monitor.archive import synthetic
from edge_monitor.archive.truth import stable_agreement
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import WindowSpec
from training.__main__ import build_parser
from training.lookahead import score_archive, stretched_ramps, table


def cuts_of(archive):
    return [SimpleNamespace(index=t.index, signals=np.stack([r[c] for c in CHANNELS], axis=1))
            for r, t in zip(archive.records, archive.truth)]


def test_rows_are_the_truths_agreement_per_lookahead():
    archive = synthetic.synthesize(seed=1, cases=[1, 13], max_runs=3)
    cuts = cuts_of(archive)
    rows = score_archive(cuts, archive.truth, 1, [1, 3], StableRegionSpec(), WindowSpec())
    assert [r.lookahead for r in rows] == [1, 3]
    default = stable_agreement(cuts, archive.truth)  # lookahead 3 is the default
    assert (rows[1].precision, rows[1].recall, rows[1].kept) == (default.precision, default.recall, default.kept)
    assert rows[1].wrong_entry + rows[1].wrong_exit == default.kept - default.kept_inside
    assert rows[0].kept >= rows[1].kept  # a shorter look-ahead keeps at least as much
    text = table(rows, 64)
    assert "256 ms" in text and "768 ms" in text and "smallest lookahead" in text


def test_stretched_ramps_change_the_generator_only_inside():
    plain = synthetic.synthesize(seed=2, cases=[5], max_runs=1).truth[0]
    with stretched_ramps(exit_scale=2.0, entry_scale=3.0):
        slow = synthetic.synthesize(seed=2, cases=[5], max_runs=1).truth[0]
    again = synthetic.synthesize(seed=2, cases=[5], max_runs=1).truth[0]
    assert again == plain
    assert slow.entry == plain.entry and slow.stable[0] > plain.stable[0]  # a longer entry settles later


def test_command_line():
    args = build_parser().parse_args(["lookahead-study", "--seeds", "3,4", "--lookaheads", "2", "--exit-ramp-scale", "1.5"])
    assert (args.seeds, args.lookaheads, args.half_width, args.exit_ramp_scale, args.entry_ramp_scale) == (
        [3, 4], [2], 3, 1.5, 1.0)
