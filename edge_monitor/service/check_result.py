"""One line of ``edge-monitor check``: a status and what was checked."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    status: str  # "ok", "FAIL", "WARN" (does not fail the check) or "skip"
    text: str

    def line(self) -> str:
        return f"{self.status:<6}{self.text}"


ok, fail, warn, skip = (functools.partial(Result, status) for status in ("ok", "FAIL", "WARN", "skip"))
