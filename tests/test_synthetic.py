"""The synthetic archive: layout, truth, determinism, corruption, labels, detector vs truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io

from edge_monitor.archive.cut_quality import find_corruption
from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.synthetic import (
    CASES,
    case_spec,
    select_runs,
    synthesize,
    write_synthetic,
)
from edge_monitor.archive.truth import (
    CutTruth,
    read_truth,
    stable_agreement,
    truth_path,
)
from edge_monitor.core.channels import CHANNELS, SCALAR_FIELDS
from training.wear import FAILED, HEALTHY, interpolate_vb, tool_class


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The full default archive (seed 0), written and read back once for the module."""
    path = tmp_path_factory.mktemp("synthetic") / "mill.mat"
    synthetic = write_synthetic(path, seed=0)
    return path, synthetic, read_archive(path)


def classes_of(records: list[dict]) -> np.ndarray:
    columns = ([r[k] for r in records] for k in ("case", "run", "VB"))
    return tool_class(interpolate_vb(*columns))


def test_full_archive_has_the_real_layout(full):
    path, synthetic, archive = full
    mill = scipy.io.loadmat(str(path))["mill"]
    assert mill.shape == (1, 167)
    assert mill.dtype.names == (*SCALAR_FIELDS, *CHANNELS)
    first = mill[0, 0]
    assert all(first[name].shape == (1, 1) for name in SCALAR_FIELDS)
    assert all(first[name].shape == (9000, 1) for name in CHANNELS)

    assert len(archive.cuts) + len(archive.dropped) == 167
    assert archive.n_samples == 9000
    assert sorted(archive.by_case()) == list(range(1, 17))
    for spec in CASES:
        runs = [c.run for c in archive.by_case()[spec.case]]
        n_corrupt = sum(1 for t in synthetic.truth if t.corrupt and t.case == spec.case)
        assert len(runs) == spec.runs - n_corrupt
    cut = archive.cuts[0]
    spec = case_spec(cut.case)
    assert (cut.doc, cut.feed, cut.material) == (spec.doc, spec.feed, spec.material)


def test_truth_sidecar_round_trips(full):
    path, synthetic, archive = full
    assert truth_path(path).exists()
    truth = read_truth(path)
    assert truth == synthetic.truth
    assert [t.index for t in truth] == list(range(167))
    for t, rec in zip(truth, synthetic.records):
        assert (t.case, t.run) == (rec["case"], rec["run"])
        assert math.isnan(rec["VB"]) or rec["VB"] == t.vb
        assert 0 < t.entry < t.stable[0] < t.stable[1] <= 9000
        assert (t.exit is None) == (t.stable[1] == 9000)
    assert any(t.exit is None for t in truth) and any(t.exit is not None for t in truth)


def test_corrupt_cuts_are_dropped_with_their_reason(full):
    _, synthetic, archive = full
    corrupt = [t for t in synthetic.truth if t.corrupt]
    assert [(t.case, t.run) for t in corrupt] == [(2, 1), (12, 1)]
    assert [d.index for d in archive.dropped] == [t.index for t in corrupt]
    for d, t in zip(archive.dropped, corrupt):
        channel = t.corrupt.split()[1]
        assert f"'{channel}'" in d.reason
    assert "flatlined" in archive.dropped[0].reason
    assert "drops out" in archive.dropped[1].reason


def test_every_corruption_kind_is_caught_and_clean_cuts_are_not():
    synthetic = synthesize(seed=5, cases=[1, 7], max_runs=4, n_corrupt=3)
    kinds = sorted(t.corrupt.split(":")[0] for t in synthetic.truth if t.corrupt)
    assert kinds == ["dropout", "flatline", "nonfinite"]
    for rec, t in zip(synthetic.records, synthetic.truth):
        problem = find_corruption(np.stack([rec[name] for name in CHANNELS], axis=1))
        assert (problem is not None) == (t.corrupt is not None), (t, problem)


def test_class_counts_and_unmeasured_wear_as_targeted(full):
    _, synthetic, _ = full
    counts = np.bincount(classes_of(synthetic.records), minlength=3)
    # The real archive: 63 healthy, 92 degraded, 12 failed.
    assert 50 <= counts[0] <= 76 and 80 <= counts[1] <= 105 and 8 <= counts[2] <= 18, counts
    unmeasured = [r for r in synthetic.records if math.isnan(r["VB"])]
    assert 0.08 <= len(unmeasured) / 167 <= 0.18
    for spec in CASES:
        vb = [r["VB"] for r in synthetic.records if r["case"] == spec.case]
        assert not math.isnan(vb[0]) and not math.isnan(vb[-1])


def test_wear_grows_monotonically_to_each_cases_largest_vb(full):
    _, synthetic, _ = full
    for spec in CASES:
        vb = np.array([t.vb for t in synthetic.truth if t.case == spec.case])
        assert np.all(np.diff(vb) >= 0), (spec.case, vb)
        assert vb[0] <= 0.1 and vb[-1] == pytest.approx(spec.vb_max)


def test_detector_meets_its_targets_on_the_full_archive(full):
    _, synthetic, archive = full
    agreement = stable_agreement(archive.cuts, synthetic.truth)
    assert agreement.precision >= 0.95, agreement
    assert agreement.recall >= 0.90, agreement


def test_detector_meets_its_targets_on_another_seed(tmp_path):
    path = tmp_path / "mill.mat"
    synthetic = write_synthetic(path, seed=7, max_runs=5, n_corrupt=1)
    archive = read_archive(path)
    assert len(archive.dropped) == 1
    agreement = stable_agreement(archive.cuts, synthetic.truth)
    assert agreement.precision >= 0.95 and agreement.recall >= 0.90, agreement


def test_deterministic_for_a_seed_and_subsets_hold_the_full_archives_cuts():
    a = synthesize(seed=3, cases=[13], max_runs=3)
    b = synthesize(seed=3, cases=[13], max_runs=3)
    c = synthesize(seed=4, cases=[13], max_runs=3)
    whole = synthesize(seed=3, cases=[13])
    assert a.truth == b.truth
    last = whole.records[-1]
    for name in CHANNELS:
        assert np.array_equal(a.records[0][name], b.records[0][name])
        assert not np.array_equal(a.records[0][name], c.records[0][name])
        assert np.array_equal(a.records[-1][name], last[name])
    assert [r["run"] for r in a.records] == [1, 8, 15]


def test_small_archives_keep_healthy_and_failed_cuts():
    synthetic = synthesize(seed=0, cases=[1, 13], max_runs=4)
    assert [(t.case, t.run) for t in synthetic.truth] == [
        (1, 1), (1, 6), (1, 12), (1, 17), (13, 1), (13, 6), (13, 10), (13, 15)
    ]
    classes = classes_of(synthetic.records)
    assert HEALTHY in classes and FAILED in classes
    assert not any(t.corrupt for t in synthetic.truth)  # no corruption unless asked
    assert list(select_runs(5, None)) == [1, 2, 3, 4, 5]


def test_signals_follow_engagement_and_cutting_parameters():
    synthetic = synthesize(seed=1, cases=[3, 5], max_runs=1)
    levels = {}
    for rec, t in zip(synthetic.records, synthetic.truth):
        x = np.asarray(rec["smcDC"])
        air, cutting = x[: t.entry].mean(), x[t.stable[0] : t.stable[1]].mean()
        assert cutting > air + 0.15
        levels[t.case] = cutting - air
        for name in ("AE_table", "AE_spindle"):
            assert np.all(np.asarray(rec[name]) > 0)
    # case 5 (1.5 mm, 0.5 mm/rev, steel) loads the spindle far more than case 3 (0.75, 0.25, iron)
    assert levels[5] > 2 * levels[3]


def test_shorter_cuts_keep_the_timeline_inside_the_recording():
    synthetic = synthesize(seed=2, cases=[4], max_runs=3, n_samples=4500)
    for rec, t in zip(synthetic.records, synthetic.truth):
        assert len(rec["smcAC"]) == 4500
        assert 512 < t.entry < t.stable[0] < t.stable[1] <= 4500


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cases=[17]), "unknown case 17"),
        (dict(n_samples=1000), "n_samples must be at least"),
        (dict(max_runs=0), "max_runs must be at least 1"),
        (dict(cases=[6], n_corrupt=2), "n_corrupt must be between 0 and 1"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(**kwargs)


def test_read_truth_names_a_missing_sidecar(tmp_path):
    with pytest.raises(FileNotFoundError, match="truth.json"):
        read_truth(tmp_path / "mill.mat")
    truth = CutTruth(0, 1, 1, 0.1, 5, (6, 7), None, None)
    assert CutTruth.from_dict(truth.to_dict()) == truth
