"""The scores of windows: plain arrays, free of TensorFlow so pure modules can use them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_NAMES: tuple[str, ...] = ("recon", "kl")


@dataclass
class WindowScores:
    recon: np.ndarray  # (n,) reconstruction MSE in the scaled space, mean over time and channels
    kl: np.ndarray  # (n,) KL divergence of the window's codings from N(0, I)
    channels: np.ndarray  # (n, C) per-channel reconstruction MSE (mean over time)

    def __len__(self) -> int:
        return int(self.recon.size)

    def score(self, name: str) -> np.ndarray:
        if name not in SCORE_NAMES:
            raise ValueError(f"unknown score {name!r}; expected one of {', '.join(SCORE_NAMES)}")
        return getattr(self, name)

    def subset(self, idx: np.ndarray) -> "WindowScores":
        return WindowScores(self.recon[idx], self.kl[idx], self.channels[idx])
