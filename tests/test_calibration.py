"""Score calibration per operating regime."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.calibration import GLOBAL, ScoreCalibration, regime_key
from edge_monitor.core.scores import WindowScores


def scores(recon, kl=None):
    recon = np.asarray(recon, float)
    kl = recon * 10 if kl is None else np.asarray(kl, float)
    return WindowScores(recon, kl, np.repeat(recon[:, None], 6, axis=1))


def test_regime_keys_are_canonical_and_unknown_params_fall_back():
    assert regime_key(0.75, 0.5, 2) == regime_key(0.75, 0.50, "steel") == "doc=0.75 feed=0.5 material=steel"
    assert regime_key(1.5, 0.25, 1) == "doc=1.5 feed=0.25 material=cast_iron"
    assert regime_key(None, 0.5, 1) == GLOBAL


def test_calibrated_scores_are_relative_to_healthy_of_the_same_regime():
    heavy, light = regime_key(1.5, 0.5, 2), regime_key(0.75, 0.25, 1)
    healthy = scores([4.0] * 40 + [1.0] * 40)
    cal = ScoreCalibration.fit(healthy, [heavy] * 40 + [light] * 40)
    # A worn tool on a light cut (raw 3) outranks a sharp tool on a heavy cut (raw 4).
    out = cal.apply(scores([4.0, 3.0]), [heavy, light])
    np.testing.assert_allclose(out.recon, [1.0, 3.0])
    np.testing.assert_allclose(out.kl, [1.0, 3.0])
    np.testing.assert_allclose(out.channels[1], [3.0] * 6)
    # Unknown parameters, or a regime never seen healthy, use the global healthy median.
    np.testing.assert_allclose(cal.apply(scores([5.0]), GLOBAL).recon, [5.0 / 2.5])
    np.testing.assert_allclose(cal.apply(scores([5.0]), regime_key(9, 9, 1)).recon, [2.0])


def test_regimes_with_few_windows_use_the_global_reference():
    cal = ScoreCalibration.fit(scores([1.0] * 40 + [100.0] * 3), ["a"] * 40 + ["b"] * 3)
    assert set(cal.references) == {GLOBAL, "a"}


def test_round_trip_and_errors():
    cal = ScoreCalibration.fit(scores([1.0, 2.0, 3.0]), ["x"] * 3, min_windows=1)
    again = ScoreCalibration.from_dict(cal.to_dict())
    assert again == cal
    with pytest.raises(ValueError, match="global reference"):
        ScoreCalibration.from_dict({"references": {}})
    with pytest.raises(ValueError, match="one regime per window"):
        cal.apply(scores([1.0, 2.0]), ["x"])
