"""Serving without TensorFlow: the scoring graph exported to ONNX, proven against TensorFlow, kept in
the bundle under its model id, and chosen by ``runtime: auto``; a bundle without an export says
which command makes one. (The daemon end to end without TensorFlow: tests/test_daemon_onnx.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.core.alarm import Thresholds
from edge_monitor.core.calibration import GLOBAL, Reference, ScoreCalibration
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import WindowSpec
from edge_monitor.model.bundle import BundleError, export_bundle, load_bundle, save_bundle
from edge_monitor.model.export import ExportError, export_onnx
from edge_monitor.model.meta import ONNX_FILE, PARITY_TOLERANCE, SCORE_OUTPUTS, read_bundle_meta
from edge_monitor.model.onnx_inference import OnnxInference, call_rows, call_sizes
from edge_monitor.model.runtime import ServingError, choose_runtime
from edge_monitor.model.scaling import MinMaxScaler
from edge_monitor.model.scorer import INFERENCE_ROWS, WindowScorer, call_plan
from edge_monitor.model.serving import ServingModel, call_size_warning, load_serving
from edge_monitor.model.tf_inference import tf_scorer
from edge_monitor.model.vae import VAEHyperParams, build_beta_vae

REPO = Path(__file__).resolve().parents[1]
WINDOW = 16
HP = VAEHyperParams(beta=2.0, codings=4, tcn_layers=1, filters=8, kernel_size=2, dilations=(1, 2))
RAW = np.random.default_rng(0).normal(5.0, 2.0, (300, WINDOW, len(CHANNELS)))
SCALER = MinMaxScaler.fit(RAW)


@pytest.fixture(scope="module")
def model():
    m = build_beta_vae(HP, WINDOW, len(CHANNELS), seed=4)
    m.fit(SCALER.transform(RAW), SCALER.transform(RAW), epochs=2, batch_size=32, verbose=0)  # weights off their init
    return m


def bundle_args(**changes) -> dict:
    args = dict(
        channels=CHANNELS, window=WindowSpec(WINDOW, WINDOW), stable_region=StableRegionSpec(), scaler=SCALER,
        calibration=ScoreCalibration({GLOBAL: Reference(0.01, 2.0, (0.01,) * len(CHANNELS), 10)}),
        hyperparams=HP, thresholds=Thresholds(1.5, 3.0, score="recon", rule="test"), metrics={}, training={},
        archive_sha256="cd" * 32,
    )
    return {**args, **changes}


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serving") / "bundle"
    save_bundle(path, model, **bundle_args(), parity_windows=SCALER.transform(RAW))
    return path


@pytest.fixture(scope="module")
def unexported(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serving") / "old"
    save_bundle(path, model, **bundle_args())
    return path


def test_the_export_scores_as_tensorflow_within_the_stated_tolerance(model, exported):
    meta = read_bundle_meta(exported)
    record = meta.serving
    assert (record.format, record.file, record.tolerance, record.windows) == ("onnx", ONNX_FILE, PARITY_TOLERANCE, len(RAW))
    assert set(record.parity) == set(SCORE_OUTPUTS)
    assert all(0 <= d["max_rel"] <= PARITY_TOLERANCE for d in record.parity.values()), record.parity
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"} <= set(record.versions)
    # and again, here, on windows the export never saw (raw: through the bundle's scaler)
    fresh = np.random.default_rng(9).normal(5.0, 2.5, (200, WINDOW, len(CHANNELS)))
    served = load_serving(exported, choose_runtime("onnxruntime", "cpu", meta, str(exported)))
    assert served.runtime.runtime == "onnxruntime" and served.scorer().runtime == "onnxruntime"
    got = served.scorer().score(fresh, "any regime")
    want = tf_scorer(model, SCALER, meta.calibration).score(fresh, "any regime")
    for name in SCORE_OUTPUTS:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=PARITY_TOLERANCE, atol=1e-9,
                                   err_msg=name)


def test_a_windows_onnx_scores_do_not_depend_on_its_batch(exported):
    """Duplicates after a crash are published byte for byte: whichever batch a window is in."""
    inference = OnnxInference(exported / ONNX_FILE)
    # exact at the full call size, not by falling back to small calls (which the next lines would pass)
    assert inference.rows == INFERENCE_ROWS
    scorer = WindowScorer(inference, SCALER)
    x = SCALER.transform(RAW[:100])
    whole = scorer.score_scaled(x)
    for i, j in ((0, 1), (1, 8), (8, 57), (57, 100)):
        part = scorer.score_scaled(x[i:j])
        for name in SCORE_OUTPUTS:
            assert np.array_equal(getattr(part, name), getattr(whole, name)[i:j]), (name, i, j)


def test_an_export_that_scores_differently_fails_and_leaves_no_file(model, tmp_path):
    with pytest.raises(ExportError, match=r"scores differently from TensorFlow: \w+ differs by .* relative .* "
                                          r"on 300 held-out windows, more than the tolerance 1e-12"):
        export_onnx(model, tmp_path, SCALER.transform(RAW), tolerance=1e-12)
    assert not (tmp_path / ONNX_FILE).exists()


def test_the_model_id_covers_the_exported_file(exported, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(exported, copy)
    data = bytearray((copy / ONNX_FILE).read_bytes())
    data[-1] ^= 1
    (copy / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"does not match the content of model.keras, scoring.onnx and bundle.json"):
        read_bundle_meta(copy)
    (copy / ONNX_FILE).unlink()
    with pytest.raises(BundleError, match=r"scoring.onnx is missing .* `python -m training export --bundle "):
        read_bundle_meta(copy)


def test_a_bundle_without_an_export_names_the_command_that_makes_one(unexported):
    meta = read_bundle_meta(unexported)
    assert meta.serving is None
    with pytest.raises(ServingError, match=r"has no exported scoring graph .* `python -m training export --bundle "):
        choose_runtime("onnxruntime", "cpu", meta, str(unexported))
    auto = choose_runtime("auto", "cpu", meta, str(unexported))  # TensorFlow is installed here: it serves
    assert auto.runtime == "tensorflow" and "python -m training export" in auto.reason


def test_without_tensorflow_a_bundle_without_an_export_is_refused_with_the_command(unexported, exported):
    code = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
import no_tensorflow
no_tensorflow.block()
from edge_monitor.model.meta import read_bundle_meta
from edge_monitor.model.runtime import ServingError, choose_runtime
from edge_monitor.model.serving import load_serving
try:
    choose_runtime("auto", "auto", read_bundle_meta({str(unexported)!r}), {str(unexported)!r})
except ServingError as exc:
    print("refused:", exc)
served = load_serving({str(exported)!r}, choose_runtime("auto", "auto", read_bundle_meta({str(exported)!r})))
print("served:", served.runtime.runtime, served.runtime.device, len(served.scorer().raw_scores(__import__("numpy").zeros((3, {WINDOW}, 6)))))
print("tensorflow loaded:", "tensorflow" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: bundle " in done.stdout and "TensorFlow is not installed" in done.stdout
    assert "export one with `python -m training export --bundle" in done.stdout
    assert "served: onnxruntime cpu 3" in done.stdout
    assert "tensorflow loaded: False" in done.stdout


def test_exporting_an_older_bundle_gives_it_a_new_id_and_the_same_scores(model, unexported, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(unexported, old)
    data = json.loads((old / "bundle.json").read_text())
    before = data["model_id"]
    meta = export_bundle(old, RAW)
    assert meta.format == 3 and meta.serving is not None and meta.model_id != before
    assert read_bundle_meta(old).model_id == meta.model_id
    tf_scores = load_bundle(old).scorer().score(RAW[:20], "r")
    onnx = load_serving(old, choose_runtime("onnxruntime", "cpu", meta)).scorer().score(RAW[:20], "r")
    np.testing.assert_allclose(onnx.recon, tf_scores.recon, rtol=PARITY_TOLERANCE)


def test_the_command_line_exports_a_bundle(unexported, tmp_path, model):
    from edge_monitor.archive.synthetic import write_synthetic

    old = tmp_path / "old"
    shutil.copytree(unexported, old)
    archive = tmp_path / "mill.mat"
    write_synthetic(archive, seed=0)
    from training.__main__ import main

    assert main(["export", "--bundle", str(old), "--archive", str(archive)]) == 0
    assert read_bundle_meta(old).serving is not None


class _OddRowsDiffer:
    """A runtime whose windows get other last bits at odd rows when their values say so, as ONNX
    Runtime's CPU kernels do for a tiny model on AVX-512: the probe must see it on any CPU."""

    window_length, n_channels = 4, len(CHANNELS)

    def __init__(self, from_rows: int = 0) -> None:
        self.from_rows = from_rows  # position-dependent only in calls of at least this many rows

    def __call__(self, x):
        recon = x.sum(axis=(1, 2)).astype(np.float32)
        if len(x) >= self.from_rows:
            odd = (np.arange(len(x)) % 2 == 1) & (x[:, 0, 0] > 0.5)
            recon[odd] = np.nextafter(recon[odd], np.float32(np.inf))
        return recon, recon.copy(), np.repeat(recon[:, None], self.n_channels, axis=1)


class _EightDiffers(_OddRowsDiffer):
    """Exact at every position, but a call of 8 rounds otherwise."""

    rows = INFERENCE_ROWS

    def __call__(self, x):
        recon, kl, channels = super().__call__(x)
        if len(x) == 8:
            recon = np.nextafter(recon, np.float32(np.inf))
        return recon, kl, channels


def test_small_calls_are_offered_only_where_they_score_as_a_full_call():
    assert call_sizes(_EightDiffers(from_rows=10 ** 6)) == (2, 4, 16, INFERENCE_ROWS)


def test_a_few_windows_cost_a_small_call_and_the_same_bits(exported):
    inference = OnnxInference(exported / ONNX_FILE)
    calls = []

    class Recording:
        runtime, rows, sizes, call_cost_rows = inference.runtime, inference.rows, inference.sizes, inference.call_cost_rows
        window_length, n_channels = inference.window_length, inference.n_channels

        def __call__(self, x):
            calls.append(len(x))
            return inference(x)

    # which sizes are exact depends on the CPU's kernels (here: 2, 4, 8, 16 and 48)
    assert inference.sizes[-1] == INFERENCE_ROWS and list(inference.sizes) == sorted(set(inference.sizes))
    x = SCALER.transform(RAW[:60])
    whole = WindowScorer(Recording(), SCALER).score_scaled(x)
    few = WindowScorer(Recording(), SCALER).score_scaled(x[:5])
    plan = lambda n: list(call_plan(n, inference.sizes, inference.call_cost_rows))  # noqa: E731
    assert calls == [INFERENCE_ROWS, *plan(12), *plan(5)]
    for name in SCORE_OUTPUTS:
        assert np.array_equal(getattr(few, name), getattr(whole, name)[:5]), name
    # what is left of a batch in several exact calls, each window with the bits of a full call
    calls.clear()
    x = SCALER.transform(RAW[:INFERENCE_ROWS + 40])
    split = WindowScorer(Recording(), SCALER).score_scaled(x)
    assert calls[0] == INFERENCE_ROWS and sum(calls[1:]) >= 40 and calls[1:] == plan(40)
    one = WindowScorer(Recording(), SCALER)
    for name in SCORE_OUTPUTS:
        alone = np.concatenate([getattr(one.score_scaled(x[i : i + INFERENCE_ROWS]), name) for i in (0, INFERENCE_ROWS)])
        assert np.array_equal(getattr(split, name), alone), name


def test_what_is_left_of_a_batch_goes_in_the_cheapest_calls():
    sizes = (2, 4, 8, 16, 48)
    assert call_plan(0, sizes, 2.0) == ()
    assert call_plan(32, sizes, 2.0) == (16, 16)  # 36 rows' worth, not 50 for one of 48
    assert call_plan(40, sizes, 2.0) == (16, 16, 8)
    assert call_plan(47, sizes, 2.0) == (48,)  # five calls and a padded one would cost more
    assert call_plan(5, sizes, 2.0) == (8,)  # as dear as 4 + 2: the fewer calls
    assert call_plan(32, sizes, 48.0) == (48,)  # the call is the cost (a GPU): one padded call
    assert call_plan(5, (48,), 0.0) == (48,)  # one size (TensorFlow)
    for n in range(1, 49):
        plan = call_plan(n, sizes, 2.0)
        assert sum(plan[:-1]) < n <= sum(plan)  # only the last call holds padding


def test_the_call_size_is_one_a_runtime_scores_every_window_alike_at():
    assert call_rows(_OddRowsDiffer()) == 1
    assert call_rows(_OddRowsDiffer(from_rows=17)) == 16
    assert call_rows(_OddRowsDiffer(from_rows=10 ** 6)) == 48


def test_a_runtime_that_must_score_in_small_calls_is_reported_with_the_fix(exported):
    meta = read_bundle_meta(exported)
    choice = choose_runtime("onnxruntime", "cpu", meta, str(exported))
    assert call_size_warning(load_serving(exported, choice)) is None
    inference = _OddRowsDiffer()
    inference.rows = call_rows(inference)
    slow = ServingModel(exported, meta, choice, WindowScorer(inference, SCALER), scoring_id="x")
    assert call_size_warning(slow) == (
        f"on this CPU, ONNX Runtime gives the windows of bundle {exported} other last bits at other places in a "
        "batch, so every call scores 1 window instead of 48: exact, but more CPU per window. Exports made before "
        "2026-12-06 averaged the channels' errors in a way that does this on AVX-512 CPUs (docs/performance.md); "
        f"if this bundle's is one, exporting it again removes that cause: `python -m training export --bundle {exported}`")
