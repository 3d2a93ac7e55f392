"""End to end through the command line: synth, a quick fit, evaluate, search (resumable).

Real TensorFlow on the CPU; the slowest file of the suite (about two minutes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.archive.synthetic import write_synthetic
from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.model.bundle import load_bundle
from training.__main__ import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# glog's prefixes, absl's banner, and what TensorFlow says about oneDNN and CUDA
NATIVE = re.compile(r"^[IWEF]\d{4} |absl|oneDNN|cuda|cuInit", re.IGNORECASE)
_fit_run: dict[str, subprocess.CompletedProcess] = {}


def run_cli(*args: str) -> int:
    return main(list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    archive = tmp / "mill.mat"
    assert run_cli("synth", "--out", str(archive), "--seed", "3") == 0
    bundle = tmp / "bundle"
    # Two folds of tools for the thresholds and fewer epochs: the suite's time, not the product's.
    # As `make demo` runs it: its own process, TensorFlow's logging as it comes (output checked below).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    fit = subprocess.run([sys.executable, "-m", "training", "fit", "--archive", str(archive), "--out", str(bundle),
                          "--quick", "--folds", "2", "--max-epochs", "20"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert fit.returncode == 0, fit.stdout + fit.stderr
    _fit_run["fit"] = fit
    return tmp, archive, bundle


def test_fit_prints_no_tensorflow_lines(trained):
    """Nothing of TensorFlow's or absl's own on stdout or stderr (edge_monitor/service/native_log.py)."""
    fit = _fit_run["fit"]
    assert [line for line in (fit.stdout + fit.stderr).splitlines() if NATIVE.search(line)] == []
    assert "trained " in fit.stdout and "bundle " in fit.stdout  # its own output is all there


def test_quick_fit_writes_a_loadable_bundle(trained):
    _, archive, bundle = trained
    loaded = load_bundle(bundle)
    meta = loaded.meta
    assert meta.training["preset"] == "quick" and meta.training["split"] == "cut"
    assert meta.thresholds.warning <= meta.thresholds.alarm
    assert meta.thresholds.score in ("kl", "recon") and meta.thresholds.rule
    # thresholds chosen out of fold on whole tools, the test cuts kept out
    (dealing,) = meta.metrics["out_of_fold"]["dealings"]
    dealt = [c for f in dealing["folds"] for c in f]
    assert len(dealing["folds"]) == 2 and len(dealt) == len(set(dealt)) >= 12 and set(dealt) <= set(range(1, 17))
    assert dealing["tools"]["totals"]["failing_tools"] >= 1 and "over that of the tool's first 1 cut(s)" in meta.thresholds.rule
    assert meta.training["alarm_policy"] == AlarmPolicy().to_dict()
    assert len(meta.training["dropped_cuts"]) == 2  # the synthetic archive's corrupt cuts
    # the operating point: chosen by the stated rule, its trade-off printed, drawn and stored
    out = _fit_run["fit"].stdout
    assert "trade-off on held-out tool lives" in out and "<- alarm" in out
    assert meta.thresholds.operating["rule"] == {"max_false_alarms": 0.1, "max_false_warnings": 0.2}
    assert meta.format == 4  # the format that adds thresholds.operating
    assert (bundle / "trade_off.png").read_bytes().startswith(b"\x89PNG")
    lives = meta.metrics["out_of_fold"]["lives"]
    assert sorted(life["case"] for life in lives) == sorted(dealt)
    # and the progress of its three models, each named, with what is left
    for n in (1, 2, 3):
        assert f"model {n}/3 (" in out
    assert "model 2/3 (fold 1 of 2, dealing seed 0): training, at most 20 epochs; about" in out


def test_evaluate_on_its_own_archive_uses_the_test_split(trained, capsys):
    tmp, archive, bundle = trained
    out = tmp / "eval-own"
    assert run_cli("evaluate", "--bundle", str(bundle), "--archive", str(archive), "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"].startswith("test (cut split")
    for key in ("pr_auc_kl", "pr_auc_recon", "roc_auc_kl", "roc_auc_recon", "no_skill", "by_param"):
        assert key in metrics
    assert set(metrics["by_param"]) == {"doc", "feed", "material"}
    for png in ("pr_roc_curves.png", "score_distributions.png", "trend_kl.png", "trend_recon.png"):
        assert (out / png).stat().st_size > 10_000
    assert "PR-AUC" in capsys.readouterr().out


def test_evaluate_on_an_unseen_archive_beats_no_skill(trained):
    """On an archive the model never saw, every stable window is scored; failed tools score higher."""
    tmp, _, bundle = trained
    unseen = tmp / "unseen.mat"
    write_synthetic(unseen, seed=11)
    out = tmp / "eval-unseen"
    assert run_cli("evaluate", "--bundle", str(bundle), "--archive", str(unseen), "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "all windows" and metrics["n_failed"] > 0
    best = max(metrics["pr_auc_kl"], metrics["pr_auc_recon"])
    assert best > 1.3 * metrics["no_skill"], metrics


def test_search_is_reproducible_and_resumes(tmp_path):
    from edge_monitor.archive.mill import write_archive
    from edge_monitor.archive.synthetic import synthesize

    # Four tools of five short cuts: each trial trains two fold models and, when best, one more.
    archive = tmp_path / "small.mat"
    write_archive(archive, synthesize(seed=3, cases=[1, 9, 11, 13], max_runs=5, n_samples=4500).records)
    out = tmp_path / "search"
    args = ("search", "--archive", str(archive), "--out", str(out), "--max-epochs", "2", "--seed", "5", "--folds", "2")
    assert run_cli(*args, "--iterations", "1") == 0
    first = [json.loads(l) for l in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in first] == [0]
    assert run_cli(*args, "--iterations", "2") == 0  # resumes: runs only trial 1
    trials = [json.loads(l) for l in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in trials] == [0, 1] and trials[0] == first[0]
    assert "| rank | trial | healthy tools alarmed | failing caught in time |" in (out / "results.md").read_text()
    # judged on whole tools out of fold (the split's test cuts kept out, failed ones among them)
    assert all(t.get("error") or 1 <= t["failing_tools"] <= 3 for t in trials)
    best = load_bundle(out / "best").meta
    assert 1 <= best.metrics["out_of_fold"]["summary"]["failing_tools"]["mean"] <= 3
    # Changing the settings of an existing search is refused, naming what changed.
    assert run_cli("search", "--archive", str(archive), "--out", str(out), "--max-epochs", "2",
                   "--seed", "6", "--iterations", "2") == 2


def test_cli_errors_name_the_thing_to_fix(tmp_path, capsys):
    assert run_cli("fit", "--archive", str(tmp_path / "missing.mat"), "--out", str(tmp_path / "b")) == 2
    assert "missing.mat: archive not found" in capsys.readouterr().err
    assert run_cli("evaluate", "--bundle", str(tmp_path / "nobundle"), "--archive", str(tmp_path / "x.mat")) == 2
    assert "nobundle" in capsys.readouterr().err


def test_fit_on_an_archive_without_stable_cutting_names_the_detector_channel(tmp_path, capsys):
    from edge_monitor.archive.mill import write_archive
    from edge_monitor.core.channels import CHANNELS

    rng = np.random.default_rng(0)
    records = [
        {"case": 1, "run": r, "VB": 0.1 * r, "time": r, "DOC": 1.5, "feed": 0.5, "material": 1,
         **{name: rng.normal(0, 1, 2000) for name in CHANNELS}}  # noise only: the tool never cuts
        for r in range(1, 5)
    ]
    archive = write_archive(tmp_path / "air.mat", records)
    assert run_cli("fit", "--archive", str(archive), "--out", str(tmp_path / "b"), "--quick") == 2
    captured = capsys.readouterr()
    assert "4 cut(s) without a stable cutting region" in captured.out
    assert "no stable cutting in any cut" in captured.err and "'smcDC'" in captured.err
