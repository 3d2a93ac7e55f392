"""The model bundle: save/load round trip, atomic replacement and every validation error."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.core.calibration import GLOBAL, Reference, ScoreCalibration
from edge_monitor.core.channels import CHANNELS
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import WindowSpec
from edge_monitor.model.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    Thresholds,
    _meta_from_dict,
    _model_id,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)
from edge_monitor.model.scaling import MinMaxScaler
from edge_monitor.model.tf_inference import tf_scorer
from edge_monitor.model.vae import VAEHyperParams, build_beta_vae

WINDOW = 16
HP = VAEHyperParams(beta=2.0, codings=4, tcn_layers=1, filters=8, kernel_size=2, dilations=(1, 2))
RAW = np.random.default_rng(0).normal(5.0, 2.0, (12, WINDOW, len(CHANNELS)))


@pytest.fixture(scope="module")
def model():
    return build_beta_vae(HP, WINDOW, len(CHANNELS), seed=2)


def bundle_args(**changes) -> dict:
    args = dict(
        channels=CHANNELS,
        window=WindowSpec(WINDOW, WINDOW),
        stable_region=StableRegionSpec(),
        scaler=MinMaxScaler.fit(RAW),
        calibration=ScoreCalibration({GLOBAL: Reference(0.01, 2.0, (0.01,) * len(CHANNELS), 10)}),
        hyperparams=HP,
        thresholds=Thresholds(1.5, 3.0, score="kl", rule="test rule"),
        metrics={"validation": {"pr_auc_kl": np.float64(0.5), "undefined": float("nan")}},
        training={"seed": np.int64(3), "dilations": (1, 2)},
        archive_sha256="ab" * 32,
    )
    return {**args, **changes}


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "bundle"
    save_bundle(path, model, **bundle_args())
    return path


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    """A private copy of the saved bundle that a test may damage."""
    target = tmp_path / "bundle"
    shutil.copytree(saved, target)
    return target


def edit_meta(path: Path, rehash: bool = False, **changes) -> None:
    """Change keys of bundle.json; ``rehash`` recomputes the model id, so only the change is wrong."""
    data = json.loads((path / "bundle.json").read_text())
    data.update(changes)
    (path / "bundle.json").write_text(json.dumps(data))
    if rehash:
        data["model_id"] = _model_id((path / "model.keras").read_bytes(), meta=read_meta_unchecked(data))
        (path / "bundle.json").write_text(json.dumps(data))


def read_meta_unchecked(data: dict):
    return _meta_from_dict(data, Path("unused"))


# --- round trip ----------------------------------------------------------------------------------


def test_save_writes_the_documented_layout(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["bundle.json", "model.keras"]
    data = json.loads((saved / "bundle.json").read_text())
    assert data["format"] == 3 and data["channels"] == list(CHANNELS)
    assert len(data["model_id"]) == 16 and int(data["model_id"], 16) >= 0
    assert data["metrics"]["validation"] == {"pr_auc_kl": 0.5, "undefined": None}  # NaN -> null
    assert data["training"] == {"seed": 3, "dilations": [1, 2]}
    assert set(data["versions"]) == {"edge_monitor", "tensorflow", "keras", "keras-tcn"}
    assert data["versions"]["keras-tcn"] == "3.5.6"
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_round_trip_gives_identical_meta_and_scores(model, saved):
    bundle = load_bundle(saved)
    meta = bundle.meta
    assert meta.to_dict() == read_bundle_meta(saved).to_dict()  # (the scaler's arrays defeat ==)
    assert meta.channels == CHANNELS and meta.window == WindowSpec(WINDOW, WINDOW)
    assert meta.hyperparams == HP and meta.stable_region == StableRegionSpec()
    assert meta.thresholds == Thresholds(1.5, 3.0, "kl", "test rule")
    assert np.array_equal(meta.scaler.minimum, MinMaxScaler.fit(RAW).minimum)
    assert meta.archive_sha256 == "ab" * 32
    expected = tf_scorer(model, bundle_args()["scaler"]).raw_scores(RAW)
    got = bundle.scorer().raw_scores(RAW)
    for name in ("recon", "kl", "channels"):
        assert np.array_equal(getattr(got, name), getattr(expected, name))
    assert bundle.scorer() is bundle.scorer()  # one compiled function per batch size


def test_round_trip_in_a_fresh_process(model, saved, tmp_path):
    np.save(tmp_path / "raw.npy", RAW)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from edge_monitor.model.bundle import load_bundle
        s = load_bundle({str(saved)!r}).scorer().raw_scores(np.load({str(tmp_path / "raw.npy")!r}))
        np.savez({str(tmp_path / "scores.npz")!r}, recon=s.recon, kl=s.kl, channels=s.channels)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    got = np.load(tmp_path / "scores.npz")
    expected = tf_scorer(model, bundle_args()["scaler"]).raw_scores(RAW)
    for name in ("recon", "kl", "channels"):
        assert np.array_equal(got[name], getattr(expected, name))


def test_save_replaces_an_existing_bundle(model, copy):
    old_id = read_bundle_meta(copy).model_id
    meta = save_bundle(copy, model, **bundle_args(thresholds=Thresholds(0.1, 0.2, "recon", "other")))
    assert meta.model_id != old_id and read_bundle_meta(copy).to_dict() == meta.to_dict()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["bundle"]


def test_save_refuses_to_replace_something_else(model, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(BundleError, match="notes: exists and is not a bundle"):
        save_bundle(tmp_path / "notes", model, **bundle_args())
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"channels": tuple(reversed(CHANNELS))}, "key 'channels' is .*edge_monitor expects exactly"),
        ({"window": WindowSpec(32, 32)}, r"model.keras takes windows of shape \(16, 6\), but bundle.json"),
        ({"scaler": MinMaxScaler(np.zeros(5), np.ones(5))}, "key 'scaler' has 5 channels, expected 6"),
        ({"metrics": {"curve": object()}}, "key metrics.curve: object is not JSON data"),
        ({"training": [1, 2]}, "key training must be a dict"),
    ],
)
def test_save_validates_before_writing(model, tmp_path, changes, message):
    with pytest.raises(BundleError, match=message):
        save_bundle(tmp_path / "b", model, **bundle_args(**changes))
    assert not list(tmp_path.iterdir())


def test_thresholds_validate():
    with pytest.raises(ValueError, match=r"thresholds.score: must be one of recon \| kl, got 'mse'"):
        Thresholds(1.0, 2.0, "mse", "r")
    with pytest.raises(ValueError, match=r"thresholds.warning: must not exceed thresholds.alarm \(2.0\), got 3.0"):
        Thresholds(3.0, 2.0, "kl", "r")
    with pytest.raises(ValueError, match="thresholds.alarm: must be a finite number"):
        Thresholds(1.0, math.inf, "kl", "r")


# --- validation on load --------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match=f"bundle {tmp_path / 'nope'}: no such directory"):
        load_bundle(tmp_path / "nope")


@pytest.mark.parametrize("name", ["bundle.json", "model.keras"])
def test_missing_file(copy, name):
    (copy / name).unlink()
    with pytest.raises(BundleError, match=f"bundle {copy}: {name} is missing"):
        load_bundle(copy)


def test_bad_json(copy):
    (copy / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match=f"bundle {copy}: bundle.json is not valid JSON"):
        read_bundle_meta(copy)


def test_wrong_channel_order(copy):
    swapped = list(CHANNELS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    edit_meta(copy, channels=swapped)
    with pytest.raises(BundleError, match="key 'channels' is \\['smcDC', 'smcAC'.*expects exactly"):
        load_bundle(copy)


def test_newer_format(copy):
    edit_meta(copy, format=BUNDLE_FORMAT + 1)
    with pytest.raises(BundleError, match=f"format {BUNDLE_FORMAT + 1} is newer .*; upgrade edge_monitor"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "1"}, "key 'format' is invalid (format: must be a positive integer, got '1')"),
        ({"scaler": {"min": [0.0] * 6}}, "key 'scaler' is invalid (scaler: expected lists 'min' and 'max'"),
        ({"hyperparams": {"codings": -1}}, "key 'hyperparams' is invalid (hyperparams.codings: must be a positive"),
        ({"thresholds": {"score": "kl"}}, "key 'thresholds' is invalid (thresholds: lacks key(s) warning, alarm"),
        ({"window": {"length": 1, "stride": 1}}, "key 'window' is invalid (window.length: must be an integer at"),
        ({"channels": ["smcAC", 5]}, "key 'channels' is invalid (channels[1]: must be a string, got 5)"),
        ({"extra": 1}, "key 'extra' is invalid (extra: unknown key; known keys: model_id, channels"),
    ],
)
def test_invalid_keys(copy, changes, message):
    edit_meta(copy, **changes)
    with pytest.raises(BundleError, match=re.escape(message)):
        read_bundle_meta(copy)


def test_missing_key(copy):
    data = json.loads((copy / "bundle.json").read_text())
    del data["thresholds"]
    (copy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="bundle.json lacks key\\(s\\) thresholds"):
        read_bundle_meta(copy)


# --- format 1: before the stable-region look-ahead was a setting -----------------------------------


def as_format_1(path: Path, half_width: int = 2) -> dict:
    """Rewrite a bundle as a format 1 bundle was written: no ``stable_region.lookahead``, and the
    model id over exactly that file (the hash as format 1 computed it, written out here)."""
    data = json.loads((path / "bundle.json").read_text())
    data["format"] = 1
    data["stable_region"] = {**data["stable_region"], "half_width": half_width}
    del data["stable_region"]["lookahead"]
    content = {k: v for k, v in data.items() if k not in ("model_id", "created")}
    digest = hashlib.sha256((path / "model.keras").read_bytes())
    digest.update(json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    data["model_id"] = digest.hexdigest()[:16]
    (path / "bundle.json").write_text(json.dumps(data, indent=2))
    return data


def test_new_bundles_state_the_look_ahead(saved):
    data = json.loads((saved / "bundle.json").read_text())
    assert data["format"] == 3 and BUNDLE_FORMAT == 4  # 4 only with an operating point (thresholds.operating)
    assert data["stable_region"]["lookahead"] == StableRegionSpec().lookahead


def test_a_format_1_bundle_loads_with_its_symmetric_neighbourhood_and_its_id(copy):
    data = as_format_1(copy, half_width=2)
    bundle = load_bundle(copy)
    region = bundle.meta.stable_region
    assert (region.half_width, region.lookahead) == (2, 2)  # as it was trained and calibrated
    assert bundle.meta.model_id == data["model_id"] and bundle.meta.format == 1
    assert bundle.meta.to_dict()["stable_region"] == data["stable_region"]  # written back as it was


def test_a_format_1_bundle_is_still_checked_against_edits(copy):
    data = as_format_1(copy)
    data["stable_region"]["half_width"] = 4
    (copy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="modified after saving"):
        read_bundle_meta(copy)


def test_a_format_1_bundle_cannot_state_another_look_ahead(copy):
    data = as_format_1(copy, half_width=3)
    data["stable_region"]["lookahead"] = 1
    (copy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format 1 has no 'stable_region' key 'lookahead'.*look-ahead is 1"):
        read_bundle_meta(copy)


def test_a_format_2_bundle_must_state_its_look_ahead(copy):
    data = json.loads((copy / "bundle.json").read_text())
    del data["stable_region"]["lookahead"]
    (copy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=re.escape("key 'stable_region' is invalid (stable_region: lacks key(s) "
                                                    "lookahead)")):
        read_bundle_meta(copy)


def test_tampered_model(copy):
    blob = bytearray((copy / "model.keras").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "model.keras").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="does not match the content of model.keras and bundle.json"):
        load_bundle(copy)


def test_tampered_thresholds(copy):
    edit_meta(copy, thresholds={"score": "kl", "warning": 0.0, "alarm": 100.0, "rule": "edited"})
    with pytest.raises(BundleError, match="modified after saving"):
        read_bundle_meta(copy)


def test_unloadable_model(copy):
    (copy / "model.keras").write_bytes(b"not a keras archive")
    edit_meta(copy, rehash=True)
    with pytest.raises(BundleError, match=f"bundle {copy}: model.keras cannot be loaded"):
        load_bundle(copy)


def test_model_shape_mismatch(copy):
    edit_meta(copy, rehash=True, window={"length": 32, "stride": 32})
    with pytest.raises(BundleError, match=r"model.keras takes windows of shape \(16, 6\).*say \(32, 6\)"):
        load_bundle(copy)


def test_one_thresholds_implementation():
    from edge_monitor.core import alarm, scores

    assert Thresholds is alarm.Thresholds  # bundle re-exports the pure module's class
    assert alarm.SCORE_NAMES is scores.SCORE_NAMES  # the scores a bundle can alarm on are the scorer's
