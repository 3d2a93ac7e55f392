"""Sensor faults: a machine whose windows keep scoring non-finite shows ``sensor_fault``.

Samples so large that the model overflows (a sensor out of range, a scaling error upstream) give
scores no alarm rule can judge. One such window is reported; ``FAULT_WINDOWS`` in a row raise the
fault, and as many finite windows in a row clear it. The wear state underneath is not touched.
Pure; not checkpointed (a fault that lasts is detected again after a restart).
"""

from __future__ import annotations

FAULT_WINDOWS = 4  # consecutive windows scoring non-finite (or finite again) that raise (or clear) the fault


class SensorFault:
    """Follows one machine's windows; :attr:`shown` is whether the fault is shown."""

    def __init__(self) -> None:
        self.shown = False
        self.since: float | None = None  # the window that raised (or cleared) it
        self.cut: str | None = None
        self._run = 0  # consecutive windows against what is shown

    @property
    def quiet(self) -> bool:
        """No fault shown and none building up: a batch of finite scores changes nothing."""
        return not self.shown and not self._run

    def follow(self, finite: bool, cut: str, ts: float) -> bool:
        """One window's score; whether the fault was raised or cleared by it."""
        self._run = self._run + 1 if finite == self.shown else 0
        if self._run < FAULT_WINDOWS:
            return False
        self.shown, self._run, self.since, self.cut = not self.shown, 0, ts, cut
        return True
