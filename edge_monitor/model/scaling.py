"""Min-max scaling of windows, fitted on training windows only and stored with the model.

Values are not clipped: a worn tool drives signals beyond the healthy training range, and that
excess is exactly what the scores must see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MinMaxScaler:
    minimum: np.ndarray  # (channels,)
    maximum: np.ndarray  # (channels,)

    @classmethod
    def fit(cls, windows: np.ndarray) -> "MinMaxScaler":
        """Per-channel min and max over (n, length, channels) training windows."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 3 or windows.shape[0] == 0:
            raise ValueError(f"need (n, length, channels) windows with n > 0, got {windows.shape}")
        return cls(windows.min(axis=(0, 1)), windows.max(axis=(0, 1)))

    @property
    def span(self) -> np.ndarray:
        span = self.maximum - self.minimum
        return np.where(span > 0, span, 1.0)  # a constant channel scales to 0, not to NaN

    def transform(self, windows: np.ndarray) -> np.ndarray:
        """Scaled float32 windows; the healthy training range maps to [0, 1]."""
        x = (np.asarray(windows, dtype=np.float64) - self.minimum) / self.span
        return x.astype(np.float32)

    def to_dict(self) -> dict:
        return {"min": [float(v) for v in self.minimum], "max": [float(v) for v in self.maximum]}

    @classmethod
    def from_dict(cls, data: dict) -> "MinMaxScaler":
        """From :meth:`to_dict`'s output; errors leave naming the key (``scaler``) to the caller."""
        try:
            lo = np.asarray(data["min"], dtype=np.float64)
            hi = np.asarray(data["max"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"expected lists 'min' and 'max' of numbers ({exc})") from exc
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError("'min' and 'max' must be lists of equal length")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError("'min' and 'max' must be finite")
        return cls(lo, hi)
