"""Scores relative to a healthy tool in the same operating regime.

A cut's depth of cut, feed and material set its signal levels far more than tool wear does: cutting
force grows with depth and feed, steel takes more power than cast iron. A worn tool on a light cut
therefore reconstructs about as well as a sharp tool on a heavy cut, and a raw score ranks the heavy
healthy cut as the more anomalous. Condition monitoring compares a machine with itself under the
same operating conditions, so each raw score is divided by the median score of healthy training
windows of the same regime (depth of cut, feed, material). A calibrated score of 1 is a typical
healthy window for that kind of cut; 3 is three times that.

Regimes with too few healthy training windows, and cuts whose parameters are unknown (a cut start
without ``params``), use the median over all healthy training windows instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .channels import MATERIALS
from .scores import SCORE_NAMES, WindowScores

#: Fewest healthy training windows a regime needs for its own reference.
MIN_REGIME_WINDOWS = 32
GLOBAL = "*"


def regime_key(doc: float | None, feed: float | None, material: int | str | None) -> str:
    """Canonical name of an operating regime, e.g. ``doc=0.75 feed=0.5 material=steel``;
    :data:`GLOBAL` when any parameter is unknown."""
    if doc is None or feed is None or material is None:
        return GLOBAL
    if not isinstance(material, str):
        material = MATERIALS.get(int(material), f"material_{int(material)}")
    return f"doc={float(doc):g} feed={float(feed):g} material={material}"


@dataclass(frozen=True)
class Reference:
    """Median healthy scores of one regime."""

    recon: float
    kl: float
    channels: tuple[float, ...]
    n: int

    def to_dict(self) -> dict:
        return {"recon": self.recon, "kl": self.kl, "channels": list(self.channels), "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Reference":
        return cls(float(d["recon"]), float(d["kl"]), tuple(float(v) for v in d["channels"]), int(d["n"]))


def _positive(x: float) -> float:
    return float(x) if x > 0 and np.isfinite(x) else 1.0  # a degenerate reference leaves scores raw


def _reference(scores: WindowScores, mask: np.ndarray) -> Reference:
    return Reference(
        recon=_positive(np.median(scores.recon[mask])),
        kl=_positive(np.median(scores.kl[mask])),
        channels=tuple(_positive(v) for v in np.median(scores.channels[mask], axis=0)),
        n=int(mask.sum()),
    )


@dataclass(frozen=True)
class ScoreCalibration:
    references: Mapping[str, Reference] = field(default_factory=dict)  # always holds GLOBAL

    @classmethod
    def fit(
        cls, healthy: WindowScores, regimes: Sequence[str], min_windows: int = MIN_REGIME_WINDOWS
    ) -> "ScoreCalibration":
        """References from the raw scores of healthy training windows and each window's regime."""
        regimes = np.asarray(regimes, dtype=object)
        if len(regimes) != healthy.recon.size or healthy.recon.size == 0:
            raise ValueError("calibration needs one regime per healthy window, and at least one window")
        refs = {GLOBAL: _reference(healthy, np.ones(regimes.size, bool))}
        for key in sorted(set(regimes.tolist()) - {GLOBAL}):
            mask = regimes == key
            if mask.sum() >= min_windows:
                refs[key] = _reference(healthy, mask)
        return cls(refs)

    def reference(self, regime: str) -> Reference:
        return self.references.get(regime, self.references[GLOBAL])

    def apply(self, raw: WindowScores, regimes: Sequence[str] | str) -> WindowScores:
        """Calibrated scores; ``regimes`` is one regime for all windows or one per window."""
        n = raw.recon.size
        keys = [regimes] * n if isinstance(regimes, str) else list(regimes)
        if len(keys) != n:
            raise ValueError(f"need one regime per window: {len(keys)} regimes for {n} windows")
        refs = [self.reference(k) for k in keys]
        recon = np.array([r.recon for r in refs]).reshape(n)
        kl = np.array([r.kl for r in refs]).reshape(n)
        channels = np.array([r.channels for r in refs]).reshape(n, raw.channels.shape[1])
        return WindowScores(recon=raw.recon / recon, kl=raw.kl / kl, channels=raw.channels / channels)

    def to_dict(self) -> dict:
        return {"rule": "score / median healthy training score of the regime",
                "references": {k: r.to_dict() for k, r in self.references.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ScoreCalibration":
        """From :meth:`to_dict`'s output; errors leave naming the key (``calibration``) to the caller."""
        try:
            refs = {str(k): Reference.from_dict(v) for k, v in d["references"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed references ({exc})") from exc
        if GLOBAL not in refs:
            raise ValueError(f"the global reference {GLOBAL!r} is missing")
        return cls(refs)


__all__ = ["GLOBAL", "Reference", "ScoreCalibration", "SCORE_NAMES", "regime_key"]
