"""Batching windows across machines for one inference call: pure, the clock is passed in.

Items are runs of windows (anything with ``len`` and ``split(n) -> (first n, rest)``), so windows
travel as arrays from the pipelines to the scorer. A batch is ready when ``max_batch`` windows
wait, or when the oldest has waited ``max_wait_ms``, whichever comes first. Windows leave in
arrival order; a run that does not fit is split and its rest leads the next batch, so each
machine's windows are scored in the order its pipeline handed them out.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar


class Splittable(Protocol):
    def __len__(self) -> int: ...

    def split(self, n: int) -> tuple["Splittable", "Splittable"]: ...


T = TypeVar("T", bound=Splittable)


class Batcher(Generic[T]):
    """FIFO of runs of windows with their arrival times (seconds, any monotonic clock)."""

    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        if type(max_batch) is not int or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if type(max_wait_ms) not in (int, float) or not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be a number of milliseconds >= 0, got {max_wait_ms!r}")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._items: deque[tuple[float, T]] = deque()
        self._windows = 0

    def __len__(self) -> int:
        """Windows waiting."""
        return self._windows

    def add(self, item: T, now: float) -> None:
        if len(item):
            self._items.append((now, item))
            self._windows += len(item)

    def deadline(self) -> float | None:
        """When the oldest window will have waited long enough (None when empty): how long the
        caller may wait for more input before it must call :meth:`take`."""
        return self._items[0][0] + self.max_wait if self._items else None

    def ready(self, now: float) -> bool:
        if not self._items:
            return False
        return self._windows >= self.max_batch or now >= self._items[0][0] + self.max_wait

    def take(self, now: float, force: bool = False) -> list[T]:
        """The next batch (oldest first, at most ``max_batch`` windows) if one is ready, or if
        ``force`` (shutting down) whatever waits, up to ``max_batch``; else an empty list."""
        if not (force or self.ready(now)):
            return []
        batch: list[T] = []
        room = self.max_batch
        while self._items and room:
            arrived, item = self._items.popleft()
            if len(item) > room:
                item, rest = item.split(room)
                self._items.appendleft((arrived, rest))
            batch.append(item)
            room -= len(item)
        self._windows -= self.max_batch - room
        return batch
