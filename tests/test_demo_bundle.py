"""The bundle `make demo` ships (deploy/demo-bundle/): valid, current with the code that scores
with it, and taken only for the archive it was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.core.channels import CHANNELS
from edge_monitor.model.bundle import export_bundle
from edge_monitor.model.meta import ONNX_FILE, read_bundle_meta
from edge_monitor.model.onnx_inference import OnnxInference
from training.demo_bundle import SHIPPED, provide, shipped_fits

REFIT = "make demo-bundle (or, for a change of the scoring graph alone, python -m training export --bundle deploy/demo-bundle)"


def test_the_shipped_bundle_is_a_valid_quick_bundle_with_an_export():
    meta = read_bundle_meta(SHIPPED)  # checks the format, the files and the model id
    assert meta.serving is not None and (SHIPPED / ONNX_FILE).exists()
    assert meta.training["preset"] == "quick" and meta.channels == CHANNELS


def test_its_exported_graph_scores_as_the_code_would_export_it(tmp_path):
    """Each window's scores to the last bit: a change of the scoring graph (say, how the channels'
    errors are averaged) must come with a new export of the shipped bundle."""
    meta = read_bundle_meta(SHIPPED)
    rng = np.random.default_rng(3)
    raw = rng.uniform(meta.scaler.minimum, meta.scaler.maximum, (96, meta.window.length, len(meta.channels)))
    copy = tmp_path / "bundle"
    shutil.copytree(SHIPPED, copy)
    export_bundle(copy, raw)
    x = meta.scaler.transform(raw[:48]).astype(np.float32)
    shipped, current = OnnxInference(SHIPPED / ONNX_FILE)(x), OnnxInference(copy / ONNX_FILE)(x)
    for name, a, b in zip(("recon", "kl", "channels"), shipped, current):
        assert np.array_equal(a, b), f"{name}: deploy/demo-bundle was exported by other scoring code: {REFIT}"


def _synthetic(tmp_path: Path, name: str, seed: int, options: dict) -> Path:
    archive = tmp_path / name
    archive.write_bytes(b"")  # only its truth sidecar is looked at
    (tmp_path / f"{name}.truth.json").write_text(json.dumps({"archive": name, "seed": seed, "options": options}))
    return archive


def test_the_demo_takes_the_shipped_bundle_only_for_the_archive_it_was_trained_on(tmp_path, capsys):
    archive = _synthetic(tmp_path, "synthetic-mill.mat", 0, {})
    out = provide(archive, tmp_path / "runs" / "bundle")
    assert read_bundle_meta(out).model_id == read_bundle_meta(SHIPPED).model_id
    assert "the shipped one" in capsys.readouterr().out
    assert provide(archive, out) == out and "there already" in capsys.readouterr().out
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.keras").write_bytes(b"a fit stopped half-way")
    with pytest.raises(SystemExit, match=r"half holds files but no bundle.json; remove it"):
        provide(archive, half)
    assert (half / "model.keras").read_bytes() == b"a fit stopped half-way"  # left as it was
    real = tmp_path / "mill.mat"
    real.write_bytes(b"")
    assert shipped_fits(real) == f"{real} is not the synthetic archive (no mill.mat.truth.json beside it)"
    assert "seed 7" in shipped_fits(_synthetic(tmp_path, "s7.mat", 7, {}))
    assert "{'n_cases': 4}" in shipped_fits(_synthetic(tmp_path, "small.mat", 0, {"n_cases": 4}))
