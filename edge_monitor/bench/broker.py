"""Finding and starting Mosquitto: the benchmark's own broker, on a free port of 127.0.0.1.

Queueing is configured as on the edge box (deploy/mosquitto/edge-monitor.conf): a backlog at the
largest load must wait at the broker, never be dropped. Persistence is off: nothing outlives a run.
The tests' broker (tests/broker.py) finds, starts, waits for and stops Mosquitto with the same
functions.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
NOT_INSTALLED = (
    "mosquitto is not installed (looked for it on PATH and in /usr/sbin): run `make install`, "
    "which installs the Debian packages mosquitto and mosquitto-clients"
)
HOST = "127.0.0.1"


class BrokerStartError(RuntimeError):
    """Mosquitto could not be started; the message includes the end of its log."""


def find_mosquitto() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_accepting(process: subprocess.Popen, host: str, port: int, timeout: float) -> str | None:
    """None once the started mosquitto accepts connections on ``host:port``; else why not ("exited
    at start", or "did not accept connections within ``timeout`` s"), for the caller's error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return "exited at start"
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.02)
    return f"did not accept connections within {timeout:g} s"


def stop_gracefully(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (mosquitto saves its persistence on the way out), SIGKILL after ``timeout`` s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(log: Path, lines: int = 20) -> str:
    """The end of mosquitto's log, to append to an error ("" when there is none)."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n-- mosquitto log --\n" + "\n".join(text) if text else ""


def bench_conf(port: int, log: Path) -> str:
    return "\n".join([
        f"listener {port} {HOST}",
        "allow_anonymous true",
        # Started as root, mosquitto would switch to the user "mosquitto", which cannot write our log.
        f"user {getpass.getuser()}",
        "set_tcp_nodelay true",
        "max_queued_messages 500000",
        "max_queued_bytes 2147483647",  # the largest value Mosquitto 2.0 reads correctly
        "max_inflight_messages 20",
        "persistence false",
        f"log_dest file {log}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "",
    ])


class BenchBroker:
    """One mosquitto process for the whole benchmark; a context manager that always stops it."""

    def __init__(self, workdir: Path, executable: str | None = None) -> None:
        self.executable = executable or find_mosquitto()
        if self.executable is None:
            raise BrokerStartError(NOT_INSTALLED)
        self.workdir = Path(workdir)
        self.host = HOST
        self.port = 0
        self.log = self.workdir / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 10.0) -> "BenchBroker":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(bench_conf(self.port, self.log))
        self.process = subprocess.Popen([self.executable, "-c", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        problem = wait_accepting(self.process, self.host, self.port, timeout)
        if problem is None:
            return self
        self.stop()
        raise BrokerStartError(f"mosquitto {problem} on port {self.port}{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_gracefully(self.process, timeout)
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def __enter__(self) -> "BenchBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
