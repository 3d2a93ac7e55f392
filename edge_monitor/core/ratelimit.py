"""A token bucket: at most ``rate`` events per second after a burst of ``burst``; the clock is
passed in. The errors topic uses it, so a flood of bad input is counted and logged but only
partly echoed to MQTT."""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self._tokens, self._last = float(burst), None

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
