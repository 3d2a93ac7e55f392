"""Reading back the snapshots of the streaming state, defensively.

A machine's pipeline is checkpointed as plain data (``to_state``: dicts of numbers, strings,
lists and numpy arrays) so that it resumes after a restart where it stopped. A snapshot comes from
a file that may be truncated, edited, or written by another version: every read here checks the
type, shape and range of what it takes and raises :class:`SnapshotError` naming the field, never
anything else. Pure: the service turns snapshots into bytes and back.

Floats outside arrays are finite in every snapshot: a value that may be NaN (an air level of a
cut whose first samples were all lost) goes in an array, which keeps its bits exactly; the state
file's writer relies on it (service/state_format.py).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


class SnapshotError(ValueError):
    """A snapshot that cannot be restored; the message names the field and the problem."""


def section(state: Any, key: str, where: str) -> Mapping[str, Any]:
    value = _get(state, key, where)
    if not isinstance(value, Mapping):
        raise SnapshotError(f"{where}.{key}: expected an object, got {type(value).__name__}")
    return value


def mapping(state: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise SnapshotError(f"{where}: expected an object, got {type(state).__name__}")
    return state


def integer(state: Any, key: str, where: str, low: int = 0, high: int | None = None) -> int:
    value = _get(state, key, where)
    if isinstance(value, (np.integer,)):
        value = int(value)
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise SnapshotError(f"{where}.{key}: expected an integer {bound}, got {value!r}")
    return value


def optional_integer(state: Any, key: str, where: str, low: int = 0) -> int | None:
    return None if _get(state, key, where) is None else integer(state, key, where, low)


def number(state: Any, key: str, where: str, finite: bool = True) -> float:
    value = _get(state, key, where)
    if isinstance(value, (np.floating, np.integer)):
        value = float(value)
    try:
        number = float(value) if type(value) in (int, float) else None
    except OverflowError:  # an integer too large for a float
        number = None
    if number is None or (finite and not math.isfinite(number)):
        raise SnapshotError(f"{where}.{key}: expected a {'finite ' if finite else ''}number, got {str(value)[:40]}")
    return number


def boolean(state: Any, key: str, where: str) -> bool:
    value = _get(state, key, where)
    if type(value) is not bool:
        raise SnapshotError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def text(state: Any, key: str, where: str) -> str:
    value = _get(state, key, where)
    if type(value) is not str:
        raise SnapshotError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def texts(state: Any, key: str, where: str) -> list[str]:
    value = _get(state, key, where)
    if not isinstance(value, list) or any(type(v) is not str for v in value):
        raise SnapshotError(f"{where}.{key}: expected a list of strings")
    return list(value)


def array(state: Any, key: str, where: str, dtype: type, ndim: int, cols: int | None = None,
          max_rows: int | None = None) -> np.ndarray:
    """A numpy array of ``dtype`` with ``ndim`` dimensions (and ``cols`` columns), a copy."""
    value = _get(state, key, where)
    if not isinstance(value, np.ndarray):
        raise SnapshotError(f"{where}.{key}: expected an array, got {type(value).__name__}")
    if value.ndim != ndim or (cols is not None and value.shape[-1] != cols):
        want = f"{ndim}-d" + (f" with {cols} columns" if cols is not None else "")
        raise SnapshotError(f"{where}.{key}: expected a {want} array, got shape {value.shape}")
    if max_rows is not None and value.shape[0] > max_rows:
        raise SnapshotError(f"{where}.{key}: {value.shape[0]} rows, more than the {max_rows} possible")
    if not np.can_cast(value.dtype, dtype, casting="same_kind"):
        raise SnapshotError(f"{where}.{key}: expected {np.dtype(dtype).name} values, got {value.dtype.name}")
    return np.array(value, dtype=dtype)


def _get(state: Any, key: str, where: str) -> Any:
    if not isinstance(state, Mapping):
        raise SnapshotError(f"{where}: expected an object, got {type(state).__name__}")
    if key not in state:
        raise SnapshotError(f"{where}: missing {key!r}")
    return state[key]
