"""Archive reader: layout, typed records, clear errors, corrupt cuts, wear labels."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from edge_monitor.archive.cut_quality import find_corruption
from edge_monitor.archive.mill import (
    MAT_HEADER_TEXT,
    ArchiveError,
    read_archive,
    records_from_cuts,
    write_archive,
)
from edge_monitor.core.channels import CHANNELS
from training.wear import DEGRADED, FAILED, HEALTHY, interpolate_vb, tool_class

N = 900


def record(case=1, run=1, vb=0.1, n=N, seed=0, **signals):
    rng = np.random.default_rng(seed)
    rec = {"case": case, "run": run, "VB": vb, "time": 2.0, "DOC": 1.5, "feed": 0.5, "material": 1}
    for j, name in enumerate(CHANNELS):
        rec[name] = signals.get(name, rng.normal(j, 0.1, n))
    return rec


def test_round_trip_typed_records(tmp_path):
    path = write_archive(tmp_path / "mill.mat", [record(1, 1, 0.0), record(1, 2, np.nan, seed=1)])
    raw = scipy.io.loadmat(path)["mill"]
    assert raw.shape == (1, 2)
    assert raw[0, 0]["smcAC"].shape == (N, 1) and raw[0, 0]["VB"].shape == (1, 1)
    archive = read_archive(path)
    assert len(archive) == 2 and not archive.dropped and archive.n_samples == N
    cut = archive.cuts[1]
    assert (cut.case, cut.run, cut.doc, cut.feed, cut.material_name) == (1, 2, 1.5, 0.5, "cast_iron")
    assert np.isnan(cut.vb) and cut.cut_id == "c01-r02"
    assert cut.signals.shape == (N, 6)
    np.testing.assert_array_equal(cut.signals[:, 3], record(1, 2, seed=1)["vib_spindle"])
    again = write_archive(tmp_path / "again.mat", records_from_cuts(archive.cuts))
    np.testing.assert_array_equal(read_archive(again).cuts[0].signals, archive.cuts[0].signals)
    assert len(archive.sha256) == 64
    # the same records, the same file: no time of writing in it (SciPy would put one in the header)
    assert path.read_bytes()[:116] == MAT_HEADER_TEXT and MAT_HEADER_TEXT.startswith(b"MATLAB 5.0 MAT-file")
    assert read_archive(write_archive(tmp_path / "same.mat", records_from_cuts(archive.cuts))).sha256 == \
        read_archive(again).sha256


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ArchiveError, match=r"nope\.mat: archive not found"):
        read_archive(tmp_path / "nope.mat")


def test_not_a_mat_file(tmp_path):
    path = tmp_path / "mill.mat"
    path.write_text("this is not MATLAB")
    with pytest.raises(ArchiveError, match="not a MATLAB MAT file"):
        read_archive(path)


def test_no_mill_variable(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"data": np.zeros(3)})
    with pytest.raises(ArchiveError, match=r"no variable 'mill'.*data"):
        read_archive(path)


def test_missing_field_is_named(tmp_path):
    rec = record()
    names = [k for k in rec if k != "AE_spindle"]
    mill = np.empty((1, 1), dtype=[(n, object) for n in names])
    for n in names:
        mill[0, 0][n] = np.asarray(rec[n], float).reshape(-1, 1)
    path = tmp_path / "mill.mat"
    scipy.io.savemat(path, {"mill": mill})
    with pytest.raises(ArchiveError, match="missing field.*AE_spindle"):
        read_archive(path)


def test_wrong_signal_length_drops_cut_naming_field(tmp_path):
    recs = [record(1, r, 0.1, seed=r) for r in (1, 2, 3)]
    recs[1]["vib_table"] = recs[1]["vib_table"][:-10]
    archive = read_archive(write_archive(tmp_path / "mill.mat", recs))
    assert [c.run for c in archive.cuts] == [1, 3]
    (dropped,) = archive.dropped
    assert dropped.run == 2
    assert "mill.mat" in str(dropped) and "'vib_table'" in str(dropped) and f"expected {N}" in str(dropped)
    assert "cut 1 (case 1, run 2)" in str(dropped)


def test_all_cuts_corrupt_is_an_error(tmp_path):
    rec = record()
    rec["smcDC"] = np.zeros(N)
    with pytest.raises(ArchiveError, match="every cut is corrupt.*smcDC"):
        read_archive(write_archive(tmp_path / "mill.mat", [rec]))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda x: x.__setitem__(slice(100, 101), np.nan), "non-finite"),
        (lambda x: x.__setitem__(slice(None), 0.0), "flatlined"),
        (lambda x: x.__setitem__(slice(300, 600), 0.0), "drops out"),
        (lambda x: x.__setitem__(slice(300, 600), 1.25), "drops out"),
    ],
)
def test_corruption_found_from_signals(damage, reason):
    signals = np.random.default_rng(0).normal(size=(N, 6))
    assert find_corruption(signals) is None
    damage(signals[:, 4])
    found = find_corruption(signals)
    assert found is not None and reason in found and "'AE_table'" in found


def test_short_constant_runs_are_not_dropouts():
    signals = np.random.default_rng(1).normal(size=(N, 6))
    signals[100:300, 2] = 0.5  # 0.8 s at 250 Hz: below the 1 s drop-out limit
    assert find_corruption(signals) is None


def test_tool_classes_at_boundaries():
    vb = [0.0, 0.199, 0.2, 0.69, 0.7, 1.5, np.nan]
    assert tool_class(vb).tolist() == [HEALTHY, HEALTHY, DEGRADED, DEGRADED, FAILED, FAILED, -1]


def test_vb_interpolated_within_case_only():
    cases = [1, 1, 1, 1, 2, 2, 3]
    runs = [1, 2, 3, 4, 1, 2, 1]
    vb = [0.1, np.nan, 0.3, np.nan, np.nan, 0.5, np.nan]
    filled = interpolate_vb(cases, runs, vb)
    np.testing.assert_allclose(filled[:6], [0.1, 0.2, 0.3, 0.3, 0.5, 0.5])  # held at the ends, no extrapolation
    assert np.isnan(filled[6])  # a case never measured stays unlabelled
