"""The cross-machine batcher: size or age, whichever first; FIFO; runs split to fit; the clock is
passed in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edge_monitor.core.batching import Batcher


@dataclass(frozen=True)
class Run:
    """A run of windows as the pipelines hand them out (here: just their names)."""

    names: tuple

    def __len__(self) -> int:
        return len(self.names)

    def split(self, n: int):
        return Run(self.names[:n]), Run(self.names[n:])


def runs(*names):
    return [Run(tuple(n)) for n in names]


def add(b, items, now):
    for item in items:
        b.add(Run((item,)) if not isinstance(item, Run) else item, now)


def flat(batch):
    return [name for run in batch for name in run.names]


def test_ready_when_full():
    b = Batcher(max_batch=3, max_wait_ms=1000)
    add(b, ["a1", "b1"], now=0.0)
    assert not b.ready(0.5) and b.take(0.5) == []
    add(b, ["a2", "b2"], now=0.5)
    assert b.ready(0.5)
    assert flat(b.take(0.5)) == ["a1", "b1", "a2"]  # oldest first, at most max_batch
    assert len(b) == 1 and not b.ready(0.6)


def test_ready_when_the_oldest_has_waited():
    b = Batcher(max_batch=100, max_wait_ms=50)
    assert b.deadline() is None and not b.ready(10.0)
    add(b, ["x"], now=10.0)
    add(b, ["y"], now=10.04)
    assert b.deadline() == pytest.approx(10.05)
    assert not b.ready(10.049)
    assert flat(b.take(10.05)) == ["x", "y"]
    assert b.deadline() is None


def test_zero_wait_and_force():
    b = Batcher(max_batch=2, max_wait_ms=0)
    add(b, [1], now=1.0)
    assert b.ready(1.0)
    b = Batcher(max_batch=10, max_wait_ms=1e6)
    add(b, range(25), now=0.0)
    assert flat(b.take(0.0)) == list(range(10))  # full
    assert flat(b.take(0.0)) == list(range(10, 20))
    assert b.take(0.0) == [] and flat(b.take(0.0, force=True)) == list(range(20, 25))


def test_runs_are_split_to_fit_and_keep_their_order_and_age():
    b = Batcher(max_batch=4, max_wait_ms=100)
    b.add(Run(("a0", "a1", "a2")), now=0.0)
    b.add(Run(("b0", "b1", "b2", "b3", "b4", "b5")), now=0.05)
    b.add(Run(()), now=0.06)  # an empty run is no item
    assert len(b) == 9
    first = b.take(0.06)
    assert [len(r) for r in first] == [3, 1] and flat(first) == ["a0", "a1", "a2", "b0"]
    assert len(b) == 5 and b.deadline() == pytest.approx(0.15)  # the rest keeps its arrival time
    assert flat(b.take(0.07)) == ["b1", "b2", "b3", "b4"]
    assert len(b) == 1 and not b.ready(0.07)
    assert flat(b.take(0.16)) == ["b5"] and len(b) == 0 and b.deadline() is None


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"max_batch": 0, "max_wait_ms": 1}, "max_batch must be a positive integer"),
        ({"max_batch": 2.0, "max_wait_ms": 1}, "max_batch must be a positive integer"),
        ({"max_batch": 2, "max_wait_ms": -1}, "max_wait_ms must be a number of milliseconds >= 0"),
        ({"max_batch": 2, "max_wait_ms": "5"}, "max_wait_ms"),
    ],
)
def test_arguments_are_validated(kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        Batcher(**kwargs)
