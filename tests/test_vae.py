"""The β-VAE, its scorer and device selection (CPU; tiny models so the file runs in seconds)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from edge_monitor.core.scores import WindowScores
from edge_monitor.model.device import DeviceError, select_device
from edge_monitor.model.scaling import MinMaxScaler
from edge_monitor.model.scorer import WindowScorer
from edge_monitor.model.tf_inference import tf_scorer
from edge_monitor.model.vae import (
    VAEHyperParams,
    build_beta_vae,
    kl_divergence,
    load_vae,
)

WINDOW, CHANNELS = 16, 6
TINY = VAEHyperParams(beta=2.0, codings=4, tcn_layers=1, filters=8, kernel_size=2, dilations=(1, 2))


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, WINDOW, CHANNELS)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return build_beta_vae(TINY, WINDOW, CHANNELS, seed=1)


@pytest.fixture(scope="module")
def scorer(model) -> WindowScorer:
    return tf_scorer(model, MinMaxScaler(np.zeros(CHANNELS), np.ones(CHANNELS)))


# --- hyperparameters -----------------------------------------------------------------------------


def test_hyperparams_round_trip_through_json():
    hp = VAEHyperParams(beta=3.5, codings=20, tcn_layers=3, filters=40, kernel_size=5, dilations=(1, 2, 4, 8))
    assert VAEHyperParams.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
    assert VAEHyperParams.from_dict({}) == VAEHyperParams()


def test_hyperparams_normalise_numpy_and_lists():
    hp = VAEHyperParams(beta=np.float64(1.5), codings=np.int64(7), dilations=[np.int64(1), 2])
    assert hp.codings == 7 and type(hp.codings) is int
    assert hp.dilations == (1, 2) and type(hp.beta) is float
    json.dumps(hp.to_dict())  # plain data


@pytest.mark.parametrize(
    "data, message",
    [
        ({"betta": 2.0}, "hyperparams.betta: unknown key (did you mean 'beta'?)"),
        ({"codings": 0}, "hyperparams.codings: must be a positive integer, got 0"),
        ({"codings": 2.5}, "hyperparams.codings: must be a positive integer, got 2.5"),
        ({"tcn_layers": True}, "hyperparams.tcn_layers: must be a positive integer, got True"),
        ({"beta": -1.0}, "hyperparams.beta: must be a number at least 0, got -1.0"),
        ({"beta": float("nan")}, "hyperparams.beta: must be a number at least 0, got nan"),
        ({"learning_rate": 0.0}, "hyperparams.learning_rate: must be a number greater than 0, got 0.0"),
        ({"dilations": []}, "hyperparams.dilations: must be a non-empty list, got []"),
        ({"dilations": "124"}, "hyperparams.dilations: must be a non-empty list, got '124'"),
        ({"dilations": [1, 0]}, "hyperparams.dilations[1]: must be a positive integer, got 0"),
    ],
)
def test_hyperparams_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VAEHyperParams.from_dict(data)


# --- model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_model_shapes(layers):
    hp = VAEHyperParams(codings=5, tcn_layers=layers, filters=8, kernel_size=2, dilations=(1, 2))
    model = build_beta_vae(hp, WINDOW, CHANNELS, seed=0)
    x = windows(3)
    assert model(x).shape == (3, WINDOW, CHANNELS)
    mu, log_var = model.get_layer("encoder")(x)
    assert mu.shape == log_var.shape == (3, 5)
    recon = model.get_layer("decoder")(mu)
    assert recon.shape == (3, WINDOW, CHANNELS)
    assert 0.0 <= float(tf.reduce_min(recon)) and float(tf.reduce_max(recon)) <= 1.0  # sigmoid
    pools = [l for l in model.get_layer("encoder").layers if isinstance(l, keras.layers.MaxPooling1D)]
    assert len(pools) == layers


def test_window_must_divide_by_the_pooling():
    with pytest.raises(ValueError, match=r"window length 20 must be a positive multiple of 2\*\*tcn_layers = 8"):
        build_beta_vae(VAEHyperParams(tcn_layers=3), window_length=20)


def test_same_seed_same_weights():
    a = build_beta_vae(TINY, WINDOW, CHANNELS, seed=7).get_weights()
    b = build_beta_vae(TINY, WINDOW, CHANNELS, seed=7).get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_loss_is_bce_plus_beta_weighted_kl():
    """Keras 3 really adds the Sampling layer's latent loss: same weights and ε, only β differs."""
    x = windows(32)
    losses, train, kls = {}, {}, {}
    for beta in (0.0, 4.0):
        model = build_beta_vae(VAEHyperParams(**{**TINY.to_dict(), "beta": beta}), WINDOW, CHANNELS, seed=3)
        mu, log_var = model.get_layer("encoder")(x, training=False)
        kls[beta] = float(np.mean(kl_divergence(mu, log_var)))
        losses[beta] = model.evaluate(x, x, batch_size=32, verbose=0)
        train[beta] = float(model.train_on_batch(x, x))  # the loss the optimiser follows
    assert kls[0.0] == pytest.approx(kls[4.0])
    assert losses[4.0] - losses[0.0] == pytest.approx(4.0 * kls[0.0] / (WINDOW * CHANNELS), rel=1e-4)
    assert train[4.0] > train[0.0] + 0.1


def test_kl_divergence_values():
    mu = np.zeros((2, 3), np.float32)
    assert np.allclose(kl_divergence(mu, mu), 0.0)
    mu[1, 0], log_var = 2.0, np.full((2, 3), np.log(4.0), np.float32)
    expected = -0.5 * np.sum(1 + np.log(4.0) - 4.0 - mu**2, axis=1)
    assert np.allclose(kl_divergence(mu, log_var), expected)


def test_saved_model_loads_in_a_fresh_process(model, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    x = windows(5)
    np.save(tmp_path / "x.npy", x)
    expected = model.get_layer("encoder")(x, training=False)[0].numpy()
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        import edge_monitor.model.vae  # registers the custom layers
        model = keras.saving.load_model({str(path)!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        assert model.optimizer is not None and model.get_layer("decoder") is not None
        model.evaluate(x, x, verbose=0)
        np.save({str(tmp_path / "mu.npy")!r}, model.get_layer("encoder")(x, training=False)[0].numpy())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    assert np.array_equal(np.load(tmp_path / "mu.npy"), expected)
    assert np.array_equal(load_vae(path, compile=False).get_layer("encoder")(x)[0].numpy(), expected)


# --- scorer --------------------------------------------------------------------------------------


def test_scores_are_deterministic_and_non_negative(scorer):
    x = windows(20)
    a, b = scorer.score_scaled(x), scorer.score_scaled(x)
    for name in ("recon", "kl", "channels"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.recon.shape == a.kl.shape == (20,) and a.channels.shape == (20, CHANNELS)
    assert (a.kl >= 0).all() and (a.recon >= 0).all()
    assert np.allclose(a.recon, a.channels.mean(axis=1))
    assert a.score("kl") is a.kl and a.score("recon") is a.recon
    with pytest.raises(ValueError, match="unknown score 'mse'"):
        a.score("mse")


def test_scores_use_the_coding_mean(model, scorer):
    x = windows(6)
    mu, log_var = model.get_layer("encoder")(x, training=False)
    recon = model.get_layer("decoder")(mu, training=False).numpy()
    s = scorer.score_scaled(x)
    assert np.allclose(s.channels, ((x - recon) ** 2).mean(axis=1), rtol=1e-5, atol=1e-7)
    assert np.allclose(s.kl, kl_divergence(mu, log_var), rtol=1e-5)


def test_a_windows_scores_do_not_depend_on_its_batch_to_the_last_bit(model):
    """TensorFlow's CPU kernels give a row other last bits at another batch size: the scorer
    infers at one shape, so a window scored again in other company (after a crash) is published
    byte for byte the same. Traced once, whatever the batch sizes."""
    from edge_monitor.model.scorer import INFERENCE_ROWS

    scorer = tf_scorer(model, MinMaxScaler(np.zeros(CHANNELS), np.ones(CHANNELS)))
    x = windows(INFERENCE_ROWS + 21)
    whole = scorer.score_scaled(x)  # two calls, the second padded
    cuts = ((0, 1), (1, 4), (4, 21), (21, INFERENCE_ROWS + 2), (INFERENCE_ROWS + 2, INFERENCE_ROWS + 21))
    parts = [scorer.score_scaled(x[i:j]) for i, j in cuts]
    assert scorer.inference.traces == 1
    for field in ("recon", "kl", "channels"):
        assert np.array_equal(np.concatenate([getattr(p, field) for p in parts]), getattr(whole, field)), field
    # at every position of a call, among any companions, one window scores the same
    one = x[:1]
    for position in range(INFERENCE_ROWS):
        company = windows(INFERENCE_ROWS, seed=position + 1)
        company[position] = one[0]
        s = scorer.score_scaled(company)
        assert s.recon[position] == whole.recon[0] and np.array_equal(s.channels[position], whole.channels[0]), position
    shuffled = np.random.default_rng(3).permutation(len(x))
    again = scorer.score_scaled(x[shuffled])
    assert np.array_equal(again.channels, whole.channels[shuffled]) and np.array_equal(again.kl, whole.kl[shuffled])


def test_scorer_scales_raw_windows(model):
    scaler = MinMaxScaler(np.linspace(-1, 0, CHANNELS), np.linspace(1, 5, CHANNELS))
    scorer = tf_scorer(model, scaler)
    raw = windows(4) * 3 - 1
    assert np.array_equal(scorer.raw_scores(raw).kl, scorer.score_scaled(scaler.transform(raw)).kl)


def test_scorer_empty_and_bad_shapes(scorer):
    empty = scorer.raw_scores(np.empty((0, WINDOW, CHANNELS)))
    assert isinstance(empty, WindowScores) and len(empty) == 0
    assert empty.recon.shape == empty.kl.shape == (0,) and empty.channels.shape == (0, CHANNELS)
    with pytest.raises(ValueError, match=r"windows must have shape \(n, 16, 6\), got \(2, 32, 6\)"):
        scorer.score_scaled(np.zeros((2, 32, CHANNELS), np.float32))


def test_scorer_rejects_a_mismatched_scaler(model):
    with pytest.raises(ValueError, match="scaler has 3 channels but the model takes 6"):
        tf_scorer(model, MinMaxScaler(np.zeros(3), np.ones(3)))


# --- device --------------------------------------------------------------------------------------


def test_select_device_on_this_machine():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("these expectations are for a machine without a GPU")
    assert select_device("auto") == "cpu"
    assert select_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="device: gpu was requested but TensorFlow finds no GPU"):
        select_device("gpu")
    with pytest.raises(ValueError, match="device: expected one of auto, cpu, gpu, got 'tpu'"):
        select_device("tpu")


def test_the_device_choice_says_why():
    from edge_monitor.model.device import choose_device, sees_no_gpu

    if not sees_no_gpu():  # memory growth cannot be set once this process's TensorFlow has started
        pytest.skip("on a GPU, tests/test_daemon_journal.py checks the reason in a fresh process")
    choice = choose_device("auto")
    assert choice.name == select_device("auto") == "cpu" and choice.kind == "cpu"
    assert choice.reason.startswith("requested auto; TensorFlow sees no GPU")
    assert choose_device("cpu").reason.startswith("requested cpu; TensorFlow sees no GPU")
