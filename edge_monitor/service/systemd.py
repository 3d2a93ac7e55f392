"""The service manager's notification protocol (``sd_notify``), in the standard library.

Under ``Type=notify`` systemd passes the path of a datagram socket in ``NOTIFY_SOCKET`` (a
leading ``@`` means Linux's abstract namespace) and, with ``WatchdogSec=``, the watchdog period in
``WATCHDOG_USEC`` (and the process it is meant for in ``WATCHDOG_PID``). Each notification is one
datagram of newline-separated ``KEY=value`` lines: ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op that returns False, so the daemon
calls these functions unconditionally. A socket that cannot be reached also returns False rather
than raising: a lost notification must never take the monitor down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The address to send notifications to, or None when not run by a service manager (or the
    address is of a kind not supported here, such as ``vsock:``)."""
    path = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace: no file on disk
    if path.startswith("/"):
        return path
    return None


def notify(*lines: str) -> bool:
    """Send ``KEY=value`` lines as one notification; True if it was delivered."""
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"a notification line is one KEY=value without newlines, got {line!r}")
    address = socket_address()
    if address is None or not lines:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode("utf-8"), address)
    except OSError:
        return False
    return True


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: newlines would end the value


def ready(status: str | None = None) -> bool:
    """Start-up is complete (``Type=notify`` units become active only now)."""
    return notify("READY=1", *([_status_line(status)] if status else []))


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status`` (whitespace runs are collapsed)."""
    return notify(_status_line(text))


def watchdog() -> bool:
    """Keep-alive: without one every ``WatchdogSec`` the service is considered hung and restarted."""
    return notify("WATCHDOG=1")


def reloading(status: str | None = None) -> bool:
    """A reload began; :func:`ready` says it ended, whichever way (``MONOTONIC_USEC``: what
    ``Type=notify-reload`` on systemd 253 and later requires)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *([_status_line(status)] if status else []))


def stopping(status: str | None = None) -> bool:
    """The service is shutting down."""
    return notify("STOPPING=1", *([_status_line(status)] if status else []))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog period in seconds, or None when no watchdog applies to this process (none
    configured, an unparseable value, or ``WATCHDOG_PID`` naming another process, e.g. when the
    variables were inherited by a child)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
        pid = int(env[WATCHDOG_PID]) if env.get(WATCHDOG_PID) else os.getpid()
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 1_000_000


class WatchdogPinger:
    """Sends ``WATCHDOG=1`` at half the watchdog period, but only from :meth:`tick`, which the
    owner calls from its main loop: a loop that stops iterating stops the pings, and systemd
    restarts the service. No thread of its own, on purpose (a thread would keep pinging for a
    hung loop)."""

    def __init__(self, interval: float | None) -> None:
        self.period = None if interval is None else interval / 2.0
        self._next: float | None = None

    @property
    def enabled(self) -> bool:
        return self.period is not None

    def tick(self, now: float) -> bool:
        """Ping if one is due at monotonic time ``now``; True if a ping was sent."""
        if self.period is None or (self._next is not None and now < self._next):
            return False
        self._next = now + self.period
        return watchdog()
