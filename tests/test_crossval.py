"""Cross-validation by tool: folds of whole tools, out-of-fold scores from models that never saw the
tool, every tool replayed once per repeat, figures with their spread."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_monitor.archive.mill import read_archive, write_archive
from edge_monitor.archive.synthetic import synthesize
from training import fit as fit_module
from training.crossval import crossval
from training.dataset import prepare_windows
from training.operating import OperatingRule
from training.outoffold import case_folds, fold_split
from training.wear import FAILED

CASES = [1, 9, 11, 13]  # 9, 11 and 13 reach the failed class in the synthetic archive


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("crossval") / "mill.mat"
    write_archive(path, synthesize(seed=3, cases=CASES, max_runs=5, n_samples=4500).records)
    return path


def test_folds_hold_whole_tools_and_spread_the_failing_ones(archive_path):
    archive = read_archive(archive_path)
    ws = prepare_windows(archive)
    failing = {c.case for c, k in zip(archive.cuts, ws.cut_class) if k == FAILED}
    assert failing == {9, 11, 13}
    cases = [c.case for c in archive.cuts]
    everywhere = np.arange(len(ws))
    for seed in range(5):
        folds = case_folds(cases, failing, 2, seed)
        assert sorted(c for f in folds for c in f) == CASES
        assert sorted(len(set(f) & failing) for f in folds) == [1, 2]  # dealt evenly
        split = fold_split(ws, folds[0], seed, everywhere)
        case_of_window = ws.cut_field("case")
        trained_on = set(case_of_window[np.concatenate([split.train, split.val])].tolist())
        assert trained_on <= set(folds[0]) and ws.healthy[split.train].all() and ws.healthy[split.val].all()
        assert not set(ws.cut[split.train]) & set(ws.cut[split.val])  # early stopping on other cuts
    assert sorted(case_folds(cases, failing, 4, 0)) == [[c] for c in CASES]  # leave one case out
    with pytest.raises(ValueError, match="--folds must be 2 to the number of cases"):
        case_folds(cases, failing, 5, 0)
    # within: training windows only from the windows given (fit keeps its test cuts out)
    first_cuts = np.flatnonzero(ws.cut_field("run") <= 2)
    split = fold_split(ws, CASES, 0, first_cuts)
    assert set(np.concatenate([split.train, split.val]).tolist()) <= set(first_cuts.tolist())


@pytest.mark.slow
def test_crossval_reports_every_tool_once_per_repeat(archive_path, tmp_path, monkeypatch):
    quick = fit_module.PRESETS["quick"]
    tiny = fit_module.Preset("tiny", quick.hyperparams, fit_module.TrainingConfig(max_epochs=3, patience=2, batch_size=256))
    monkeypatch.setitem(fit_module.PRESETS, "tiny", tiny)
    report = crossval(archive_path, tmp_path, preset="tiny", folds=2, repeats=2)
    assert json.loads((tmp_path / "crossval.json").read_text())["summary"] == report["summary"]
    saved = np.load(tmp_path / "oof_scores.npz")
    assert saved["recon"].shape == (2, saved["cut"].size) and np.isfinite(saved["recon"]).all()
    assert [r["seed"] for r in report["repeats"]] == [0, 1]
    for rep in report["repeats"]:
        assert sorted(t["case"] for t in rep["tools"]) == CASES  # every tool, once
        assert sorted(c for f in rep["folds"] for c in f) == CASES
        assert [t["cases"] for t in rep["thresholds"]] == rep["folds"]  # thresholds per fold
        figures = rep["figures"]
        assert figures["failing_tools"] == 3
        assert figures["failing_caught_in_time"] + figures["failing_alarmed_late"] + figures["failing_missed"] == 3
        assert 0 <= figures["pr_auc_recon"] <= 1 and figures["no_skill"] > 0
    caught = report["summary"]["failing_caught_in_time"]
    assert caught["values"] == [r["figures"]["failing_caught_in_time"] for r in report["repeats"]]
    assert caught["mean"] == pytest.approx(np.mean(caught["values"]))
    assert caught["sd"] == pytest.approx(np.std(caught["values"], ddof=1))
    assert (tmp_path / "trade_off.png").read_bytes().startswith(b"\x89PNG")
    assert report["trade_off"]["rule"] == {"max_false_alarms": 0.1, "max_false_warnings": 0.2}

    # Decided again on the stored scores, without training: the same rule gives the same thresholds
    # and outcomes (the stored cut medians are what the replay judged), another rule other ones.
    again = crossval(archive_path, tmp_path / "again", preset="tiny", from_dir=tmp_path)
    for old, new in zip(report["repeats"], again["repeats"]):
        assert [t["alarm"] for t in new["thresholds"]] == [t["alarm"] for t in old["thresholds"]]
        assert new["figures"]["failing_caught_in_time"] == old["figures"]["failing_caught_in_time"]
        assert new["figures"]["tools_alarmed_on_a_healthy_cut"] == old["figures"]["tools_alarmed_on_a_healthy_cut"]
    # The evidence study's row of the daemon's own figure is what crossval decided
    from training.evidence_study import FIGURES, format_study, study_archive

    study = study_archive(tmp_path, OperatingRule())
    daemon_row = study[FIGURES[0].name]
    for key in ("failing_caught_in_time", "failing_missed", "tools_alarmed_on_a_healthy_cut", "never_failed_tools_alarmed"):
        assert daemon_row[key] == [r["figures"][key] for r in report["repeats"]], key
    assert FIGURES[-1].name in format_study("test", study)
    looser = crossval(archive_path, tmp_path / "looser", from_dir=tmp_path, rule=OperatingRule(0.5, 0.6))
    assert all(n["alarm"] <= o["alarm"] for r_old, r_new in zip(report["repeats"], looser["repeats"])
               for o, n in zip(r_old["thresholds"], r_new["thresholds"]))
    with pytest.raises(ValueError, match="crossval.json is missing"):
        crossval(archive_path, tmp_path / "x", from_dir=tmp_path / "nothing")


@pytest.mark.slow
def test_fit_chooses_thresholds_on_every_dealing_of_the_tools(archive_path, monkeypatch):
    from edge_monitor.model.vae import VAEHyperParams
    from training.splits import make_split

    ws = prepare_windows(read_archive(archive_path))
    split = make_split("cut", ws.cut, ws.cut_class, 0)
    hp = VAEHyperParams(beta=2.0, codings=4, tcn_layers=1, filters=8, kernel_size=3, dilations=(1, 2))
    config = fit_module.TrainingConfig(max_epochs=2, patience=1, batch_size=256)
    point, metrics = fit_module.fold_thresholds(ws, split, hp, config, folds=2, seed=7, repeats=2)
    thresholds = point.thresholds
    assert [d["seed"] for d in metrics["dealings"]] == [7, 8]
    test_cuts = set(ws.cut[split.test].tolist())
    for d in metrics["dealings"]:
        replayed = {c for t in d["tools"]["tools"] for c in t["levels"]}
        assert not replayed & {ws.archive.cuts[p].cut_id for p in test_cuts}  # the test cuts stay out
    summary = metrics["summary"]
    assert summary["failing_tools"]["sd"] is not None and summary["pr_auc_recon"]["mean"] is not None
    assert thresholds.warning <= thresholds.alarm
    # chosen on both dealings at once, within the stated share of healthy tool lives alarmed; the
    # trade-off's counts at the alarm are what the daemon's tracker decided on each dealing's tools
    assert {life["dealing"] for life in metrics["lives"]} == {0, 1}
    assert point.alarm["healthy_share_alarmed"]["mean"] <= 0.1
    for j, d in enumerate(metrics["dealings"]):
        totals = d["tools"]["totals"]
        i = int(np.argmin(np.abs(point.table.thresholds - thresholds.alarm)))
        for key in ("failing_caught_in_time", "failing_missed", "tools_alarmed_on_a_healthy_cut"):
            assert point.table.counts[key][i, j] == totals[key], key
    with pytest.raises(ValueError, match="--repeats must be at least 1"):
        fit_module.fold_thresholds(ws, split, hp, config, folds=2, seed=7, repeats=0)
