"""structlog set-up: JSON lines under a service manager, readable console output in a terminal.

``format: auto`` picks the console renderer only when the stream is a terminal and no service
manager runs us (systemd sets ``INVOCATION_ID`` and ``JOURNAL_STREAM``); everywhere else one JSON
object per line, which journald, Docker and log shippers store and search as they are.
"""

from __future__ import annotations

import logging as stdlib_logging
import os
import sys
from typing import TextIO

import structlog

FORMATS: tuple[str, ...] = ("auto", "json", "console")
LEVELS: dict[str, int] = {
    "debug": stdlib_logging.DEBUG,
    "info": stdlib_logging.INFO,
    "warning": stdlib_logging.WARNING,
    "error": stdlib_logging.ERROR,
}


def under_service_manager() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``json`` or ``console`` for ``fmt`` (``auto`` decides from the stream and environment)."""
    if fmt not in FORMATS:
        raise ValueError(f"logging.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    tty = hasattr(stream, "isatty") and stream.isatty()
    return "console" if tty and not under_service_manager() else "json"


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> str:
    """Configure structlog for the process; returns the format in use (``json`` or ``console``)."""
    if level not in LEVELS:
        raise ValueError(f"logging.level must be one of {', '.join(LEVELS)}, got {level!r}")
    stream = stream or sys.stderr
    chosen = resolve_format(fmt, stream)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if chosen == "json":
        renderer: list = [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(default=_jsonable),
        ]
    else:
        colors = hasattr(stream, "isatty") and stream.isatty()
        renderer = [structlog.dev.ConsoleRenderer(colors=colors)]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return chosen


def get_logger() -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger()


def _jsonable(value: object) -> object:
    """numpy scalars, paths and the like in log fields: as plain values, else their text."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)
