"""Metrics, thresholds, plots and the summary of the evaluation, on hand-made score arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_monitor.core.alarm import AlarmPolicy, Thresholds
from edge_monitor.core.scores import WindowScores
from training.evaluate import format_summary
from training.metrics import anomaly_metrics, metrics_by_param
from training.plots import plot_curves, plot_score_distributions, plot_score_trend
from training.thresholds import choose_thresholds

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_scores(kl, recon=None) -> WindowScores:
    kl = np.asarray(kl, dtype=float)
    recon = kl.copy() if recon is None else np.asarray(recon, dtype=float)
    return WindowScores(recon=recon, kl=kl, channels=np.tile(recon[:, None], (1, 6)))


def three_classes(rng: np.random.Generator, n: int = 600, separation: float = 1.0):
    """Labels 0/1/2 (failed ~10%) and an informative score rising with the class, plus noise."""
    labels = rng.choice(3, size=n, p=[0.4, 0.5, 0.1])
    informative = labels * separation + rng.normal(size=n)
    noise = rng.normal(size=n)
    return labels, informative, noise


# --- metrics ---------------------------------------------------------------------------------


def test_perfect_score_gives_unit_aucs():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    kl = labels + 0.1 * np.arange(10) / 10  # failed windows rank above every other
    m = anomaly_metrics(make_scores(kl, -kl), labels)
    assert m["pr_auc_kl"] == pytest.approx(1.0)
    assert m["roc_auc_kl"] == pytest.approx(1.0)
    assert m["roc_auc_recon"] == pytest.approx(0.0)
    assert m["n_windows"] == 10 and m["n_failed"] == 3
    assert m["no_skill"] == pytest.approx(0.3)


def test_random_score_is_near_no_skill():
    rng = np.random.default_rng(1)
    labels = np.where(rng.random(20000) < 0.08, 2, rng.integers(0, 2, 20000))
    m = anomaly_metrics(make_scores(rng.random(20000), rng.random(20000)), labels)
    assert m["no_skill"] == pytest.approx(0.08, abs=0.01)
    for name in ("kl", "recon"):
        assert m[f"pr_auc_{name}"] == pytest.approx(m["no_skill"], abs=0.015)
        assert m[f"roc_auc_{name}"] == pytest.approx(0.5, abs=0.03)


def test_undefined_metrics_are_none_and_json_null():
    labels = np.array([0, 1, 1, 0])
    m = anomaly_metrics(make_scores([0.1, 0.2, 0.3, 0.4]), labels)
    assert m["n_failed"] == 0 and m["no_skill"] == 0.0
    assert all(m[k] is None for k in ("pr_auc_kl", "pr_auc_recon", "roc_auc_kl", "roc_auc_recon"))
    assert "null" in json.dumps(m, allow_nan=False)
    only_failed = anomaly_metrics(make_scores([1.0, 2.0]), np.array([2, 2]))
    assert only_failed["pr_auc_kl"] is None and only_failed["no_skill"] == 1.0
    empty = anomaly_metrics(make_scores([]), np.array([], dtype=int))
    assert empty["n_windows"] == 0 and empty["no_skill"] is None


def test_unlabelled_windows_are_left_out_and_bad_scores_are_named():
    m = anomaly_metrics(make_scores([0.0, 1.0, 5.0, 9.0]), np.array([0, 2, -1, -1]))
    assert m["n_windows"] == 2 and m["pr_auc_kl"] == pytest.approx(1.0)
    inf = anomaly_metrics(make_scores([0.0, np.inf, 1.0]), np.array([0, 2, 0]))
    assert inf["pr_auc_kl"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kl score: 1 window"):
        anomaly_metrics(make_scores([0.0, np.nan], [0.0, 1.0]), np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        anomaly_metrics(make_scores([0.0, 1.0]), np.array([0, 2, 1]))


def test_metrics_by_param_breaks_down_by_doc_feed_and_material():
    rng = np.random.default_rng(2)
    n = 400
    doc = rng.choice([0.75, 1.5], n)
    feed = rng.choice([0.25, 0.5], n)
    material = rng.choice([1, 2], n)
    # Failed windows only at the shallow cut, where the score separates them perfectly.
    labels = np.where(doc == 0.75, rng.choice([0, 2], n), rng.choice([0, 1], n))
    kl = (labels == 2) + rng.random(n) * 0.5
    out = metrics_by_param(make_scores(kl, rng.random(n)), labels, doc + 1e-12, feed, material)
    assert set(out) == {"doc", "feed", "material"}
    assert set(out["doc"]) == {"0.75", "1.5"}
    assert set(out["feed"]) == {"0.25", "0.5"}
    assert set(out["material"]) == {"cast_iron", "steel"}
    shallow, deep = out["doc"]["0.75"], out["doc"]["1.5"]
    assert shallow["pr_auc_kl"] == pytest.approx(1.0)
    assert shallow["no_skill"] == pytest.approx(shallow["n_failed"] / shallow["n_windows"])
    assert deep["n_failed"] == 0 and deep["pr_auc_kl"] is None and deep["roc_auc_recon"] is None
    for param in out.values():
        assert sum(g["n_windows"] for g in param.values()) == n
        assert sum(g["n_failed"] for g in param.values()) == int((labels == 2).sum())
    json.dumps(out, allow_nan=False)


# --- thresholds ------------------------------------------------------------------------------


def each_its_own_cut(labels):
    return np.arange(len(labels))


def per_cut(scores, labels, cuts):
    """Thresholds with every cut its own tool and the rule judging each cut's median by itself."""
    cuts = np.asarray(cuts)
    return choose_thresholds(scores, labels, cuts, tools=cuts, order=np.zeros(cuts.size), regimes=np.zeros(cuts.size),
                             policy=AlarmPolicy(persist_cuts=1, reference_cuts=0, min_windows=1)).thresholds


def test_thresholds_pick_the_better_score():
    labels, informative, noise = three_classes(np.random.default_rng(3), separation=2.0)
    on_kl = per_cut(make_scores(informative, noise), labels, each_its_own_cut(labels))
    on_recon = per_cut(make_scores(noise, informative), labels, each_its_own_cut(labels))
    assert on_kl.score == "kl" and on_recon.score == "recon"
    assert "higher held-out PR-AUC of failed vs rest" in on_kl.rule
    for t in (on_kl, on_recon):
        assert isinstance(t, Thresholds)
        assert t.warning <= t.alarm
        assert "share of healthy tool lives alarmed is at most 10%" in t.rule
        assert "median score of a cut's windows" in t.rule
        assert t.operating["rule"] == {"max_false_alarms": 0.1, "max_false_warnings": 0.2}


def test_thresholds_are_chosen_on_cut_medians():
    # three cuts per class, ten windows each, every cut its own tool judged by its median alone
    labels = np.repeat([0, 0, 0, 1, 1, 1, 2, 2, 2], 10)
    cuts = np.repeat(np.arange(9), 10)
    medians = np.array([0.8, 1.1, 0.9, 2.0, 2.5, 3.0, 5.0, 6.0, 5.5])
    rng = np.random.default_rng(5)
    kl = np.repeat(medians, 10) + np.tile(np.linspace(-0.4, 0.4, 10), 9)
    kl[0] = 50.0  # an outlier window of a healthy cut: the cut's median is unmoved
    t = per_cut(make_scores(kl, rng.random(90)), labels, cuts)
    assert t.score == "kl"
    # one healthy tool of three alarmed is a third, above the 10 % allowed: the most sensitive
    # threshold alarming none lies between the highest healthy cut (1.1) and the next cut (2.0)
    assert t.alarm == pytest.approx(1.55)
    assert t.warning == t.alarm and t.levels == 1 and "One level" in t.rule  # 20 % allows no more either


def test_fallback_thresholds_when_classes_are_missing():
    rng = np.random.default_rng(4)
    healthy = rng.exponential(size=500)
    only_healthy = per_cut(make_scores(healthy), np.zeros(500, int), np.arange(500))
    assert "default latent-space score" in only_healthy.rule and only_healthy.score == "kl"
    share = (healthy > only_healthy.alarm).mean()
    assert share <= 0.1 and (healthy > only_healthy.alarm * 0.95).mean() > 0.09  # at the stated share
    with pytest.raises(ValueError, match="healthy held-out windows"):
        per_cut(make_scores([1.0, 2.0]), np.array([1, 2]), np.arange(2))


def test_thresholds_judge_each_tool_against_its_first_cut():
    # Four tools of six cuts, one window each: healthy, healthy, healthy, degraded, failed, failed.
    # Tool k scores k+1 times as high throughout (another insert, another clamping), and wears the same.
    growth = np.array([1.0, 1.05, 0.95, 1.6, 3.0, 3.5])
    labels = np.tile([0, 0, 0, 1, 2, 2], 4)
    kl = np.concatenate([(k + 1) * growth for k in range(4)])
    tools, order = np.repeat(np.arange(4), 6), np.tile(np.arange(6), 4)
    cuts = np.arange(kl.size)
    policy = AlarmPolicy(persist_cuts=2, reference_cuts=1, min_windows=1)
    point = choose_thresholds(make_scores(kl, np.zeros_like(kl)), labels, cuts, tools=tools, order=order,
                              regimes=np.zeros(kl.size), policy=policy)
    t = point.thresholds
    # judged by their growth over the first cut, the healthy cuts never grow (0.95 twice in a row)
    # and the degraded and first failed cut grow to 1.6: the most sensitive threshold is the least
    # a rule may take, any growth at all, and it catches all four failing tools at their first failed cut
    assert t.alarm == 1.0
    assert point.alarm["failing_caught_in_time"]["mean"] == 4 and point.alarm["tools_alarmed_on_a_healthy_cut"]["mean"] == 0
    assert "over that of the tool's first 1 cut(s) in the same regime" in t.rule
    # judged by the median alone, the fourth tool's healthy cuts (3.8-4.2) sit above every failed cut of the first
    absolute = choose_thresholds(make_scores(kl, np.zeros_like(kl)), labels, cuts, tools=tools, order=order,
                                 regimes=np.zeros(kl.size), policy=AlarmPolicy(persist_cuts=2, reference_cuts=0, min_windows=1))
    assert absolute.thresholds.alarm > 3.5


def test_short_tool_lives_fall_back_to_a_default_growth():
    # Two cuts per tool: the healthy first one is the reference, the second is failed.
    labels = np.tile([0, 2], 3)
    kl = np.array([1.0, 4.0, 2.0, 9.0, 0.5, 1.5])
    tools, order = np.repeat(np.arange(3), 2), np.tile(np.arange(2), 3)
    policy = AlarmPolicy(persist_cuts=1, reference_cuts=1, min_windows=1)
    t = choose_thresholds(make_scores(kl, np.zeros_like(kl)), labels, np.arange(6), tools=tools, order=order,
                          regimes=np.zeros(6), policy=policy).thresholds
    assert t.warning == t.alarm == pytest.approx(1.5) and "no held-out healthy cut is judged" in t.rule
    with pytest.raises(ValueError, match="stable windows"):
        choose_thresholds(make_scores(kl, np.zeros_like(kl)), labels, np.arange(6), tools=tools, order=order,
                          regimes=np.zeros(6), policy=AlarmPolicy(persist_cuts=1, reference_cuts=0, min_windows=2))


# --- plots and summary -----------------------------------------------------------------------


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_plots_are_written(tmp_path):
    labels, informative, noise = three_classes(np.random.default_rng(6))
    scores = make_scores(np.exp(informative), noise - noise.min() + 1e-3)
    thresholds = per_cut(scores, labels, np.arange(labels.size))
    _assert_png(plot_curves(scores, labels, tmp_path / "curves.png"))
    _assert_png(plot_curves(scores, np.zeros_like(labels), tmp_path / "undefined.png"))
    _assert_png(plot_score_distributions(scores, labels, tmp_path / "dist.png"))
    case = np.repeat(np.arange(1, 6), 8)
    run = np.tile(np.arange(1, 9), 5)
    cut_class = np.minimum(run // 3, 2)
    median = np.exp(cut_class + np.random.default_rng(7).normal(size=case.size) * 0.3)
    path = plot_score_trend(
        case, run, cut_class, median, tmp_path / "sub" / "trend.png",
        score_name=thresholds.score, thresholds=thresholds, evaluated=run % 3 == 0,
    )
    _assert_png(path)


def test_format_summary_reads_the_metrics():
    labels, informative, noise = three_classes(np.random.default_rng(8))
    scores = make_scores(informative, noise)
    thresholds = per_cut(scores, labels, np.arange(labels.size))
    n = labels.size
    metrics = {
        "model_id": "abc123", "archive": "data/mill.mat", "split": "test (cut split, seed 0)",
        "n_cuts": 7, **anomaly_metrics(scores, labels),
        "by_param": metrics_by_param(scores, labels, np.full(n, 0.75), np.full(n, 0.5), np.ones(n)),
        "alarm_score": thresholds.score,
        "thresholds": {"score": thresholds.score, "warning": thresholds.warning,
                       "alarm": thresholds.alarm, "rule": thresholds.rule},
        "cut_levels": {"healthy": {"normal": 3, "warning": 0, "alarm": 0},
                       "degraded": {"normal": 1, "warning": 2, "alarm": 0},
                       "failed": {"normal": 0, "warning": 0, "alarm": 1}},
    }
    text = format_summary(metrics)
    assert "test (cut split, seed 0)" in text and "<- alarm score" in text
    assert "doc 0.75" in text and "material cast_iron" in text
    assert f"{metrics['pr_auc_kl']:.3f}" in text
