"""The cross-machine batcher: size or age, whichever first; FIFO; the clock is passed in."""

from __future__ import annotations

import pytest

from edge_monitor.core.batching import Batcher


def test_ready_when_full():
    b = Batcher(max_batch=3, max_wait_ms=1000)
    b.add(["a1", "b1"], now=0.0)
    assert not b.ready(0.5) and b.take(0.5) == []
    b.add(["a2", "b2"], now=0.5)
    assert b.ready(0.5)
    assert b.take(0.5) == ["a1", "b1", "a2"]  # oldest first, at most max_batch
    assert len(b) == 1 and not b.ready(0.6)


def test_ready_when_the_oldest_has_waited():
    b = Batcher(max_batch=100, max_wait_ms=50)
    assert b.deadline() is None and not b.ready(10.0)
    b.add(["x"], now=10.0)
    b.add(["y"], now=10.04)
    assert b.deadline() == pytest.approx(10.05)
    assert not b.ready(10.049)
    assert b.take(10.05) == ["x", "y"]
    assert b.deadline() is None


def test_zero_wait_and_force():
    b = Batcher(max_batch=2, max_wait_ms=0)
    b.add([1], now=1.0)
    assert b.ready(1.0)
    b = Batcher(max_batch=10, max_wait_ms=1e6)
    b.add(range(25), now=0.0)
    assert b.take(0.0) == list(range(10))  # full
    assert b.take(0.0) == list(range(10, 20))
    assert b.take(0.0) == [] and b.take(0.0, force=True) == list(range(20, 25))


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
