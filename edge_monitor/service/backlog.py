"""How far behind the monitor is: the lag that the status reports and that turns it ``degraded``.

Two ways to be behind, and the lag is the larger: input waiting in the monitor (or, the inbox
full, for it: :meth:`.inbox.Inbox.lag`), and input that waited at the broker before it came, which
only its data shows: the age of the freshest data applied since the last look (when its last
sample was taken, from the cut's start ``ts`` and the chunk's offset). The freshest counts, so a
machine whose clock runs behind cannot make the monitor look late while others' data is fresh;
this assumes the machines' clocks are set, as their timestamps are.
"""

from __future__ import annotations

import time

from ..core.inbound import CutStart, SignalChunk, SignalFrame
from .checkpoint import Checkpoints
from .inbox import Inbox


class Backlog:
    def __init__(self, inbox: Inbox, checkpoints: Checkpoints, session_expiry: float, degraded_lag_s: float) -> None:
        self.inbox, self.checkpoints = inbox, checkpoints
        self.session_expiry = session_expiry
        self.degraded_lag_s = degraded_lag_s
        self._freshest: float | None = None  # age of the freshest data applied since the last look

    def note(self, cut: CutStart | None, message: object) -> None:
        """An input was applied to the machine whose open cut is ``cut``: how old is its data?"""
        if cut is None or not isinstance(message, (SignalChunk, SignalFrame)):
            return
        age = time.time() - (cut.ts + (message.offset + len(message.samples)) / cut.fs)
        if age > self.session_expiry:
            return  # older than the broker keeps input: a clock that is not set (or a test's), not a lag
        self._freshest = age if self._freshest is None else min(self._freshest, age)

    def lag(self) -> float:
        """Seconds behind (see the module's docstring)."""
        data_age = max(0.0, self._freshest) if self._freshest is not None else 0.0
        return max(self.inbox.lag(time.monotonic()), data_age)

    def figures(self) -> dict[str, float]:
        """The status message's ``backlog``: the lag, inputs waiting in the monitor, and inputs
        processed but not acknowledged yet."""
        return {"lag_s": self.lag(), "queued": self.inbox.qsize(), "unacknowledged": self.checkpoints.unacknowledged}

    def state(self) -> str:
        """What the status says: ``degraded`` while the lag reaches ``delivery.degraded_lag_s``."""
        return "degraded" if self.lag() >= self.degraded_lag_s else "online"

    def new_look(self) -> None:
        """From now on only data applied from now on counts."""
        self._freshest = None
