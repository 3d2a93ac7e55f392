"""Shared fixtures: a real Mosquitto broker started by the tests (see ``tests/broker.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from broker import NOT_INSTALLED, Broker, find_mosquitto


def _new_broker(workdir) -> Broker:
    if find_mosquitto() is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    return Broker(workdir)


@pytest.fixture
def broker(tmp_path_factory) -> Iterator[Broker]:
    """A fresh broker for one test, persistence on (so ``broker.restart()`` keeps sessions)."""
    b = _new_broker(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory) -> Iterator[Broker]:
    """One broker shared by a test module: tests must use their own topic roots and client ids.
    Do not stop or restart it; use ``broker`` for that."""
    b = _new_broker(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield b
    finally:
        b.kill()
