"""Parse hooks for configuration values that are more than their type (``parse`` of
:func:`~edge_monitor.core.spec.setting`): paths relative to the configuration file, files that must
exist, names the broker accepts. Each takes the raw value and the file's directory and raises
ValueError with the problem."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def local_path(value: Any, base: Path) -> Path:
    """A path; a relative one is relative to ``base`` (the daemon may run from any directory)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def existing_file(value: Any, base: Path) -> Path:
    path = local_path(value, base)
    if not path.is_file():
        raise ValueError(f"no such file {str(path)!r}")
    return path


def text(what: str, accepts: Callable[[str], bool]) -> Callable[[Any, Any], str]:
    """A hook for a string that ``accepts`` takes; the problem says the value must be ``what``."""

    def parse(value: Any, _base: Any) -> str:
        if not isinstance(value, str) or not value or not accepts(value):
            raise ValueError(f"must be {what}, got {value!r}")
        return value

    return parse


host = text("a host name or address", lambda s: not any(c.isspace() for c in s))
client_id = text("a non-empty string without spaces", lambda s: s.isprintable() and " " not in s)
user_name = text("a non-empty string or null", lambda s: True)
