"""Batching windows across machines for one inference call: pure, the clock is passed in.

A batch is ready when ``max_batch`` items wait, or when the oldest has waited ``max_wait_ms``,
whichever comes first. Items leave in arrival order, so each machine's windows are scored in the
order its pipeline handed them out.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """FIFO of items with their arrival times (seconds, any monotonic clock)."""

    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        if type(max_batch) is not int or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if type(max_wait_ms) not in (int, float) or not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be a number of milliseconds >= 0, got {max_wait_ms!r}")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._items: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[T], now: float) -> None:
        self._items.extend((now, item) for item in items)

    def deadline(self) -> float | None:
        """When the oldest item will have waited long enough (None when empty): how long the
        caller may wait for more input before it must call :meth:`take`."""
        return self._items[0][0] + self.max_wait if self._items else None

    def ready(self, now: float) -> bool:
        if not self._items:
            return False
        return len(self._items) >= self.max_batch or now >= self._items[0][0] + self.max_wait

    def take(self, now: float, force: bool = False) -> list[T]:
        """The next batch (oldest first, at most ``max_batch``) if one is ready, or if ``force``
        (shutting down) whatever waits, up to ``max_batch``; else an empty list."""
        if not (force or self.ready(now)):
            return []
        n = min(len(self._items), self.max_batch)
        return [self._items.popleft()[1] for _ in range(n)]
