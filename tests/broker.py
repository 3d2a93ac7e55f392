"""A real Mosquitto broker for the tests: started on a free port, stopped, restarted, killed;
and :class:`Subscriber`, a client that records what it receives.

No mocked broker anywhere: the daemon and the replay talk MQTT 5 to Debian's ``mosquitto``.
The broker listens on 127.0.0.1 only, with persistence in its own directory, so that a
:meth:`Broker.restart` keeps sessions and queued QoS 1 messages like a real broker does.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_monitor.bench.broker import (
    NOT_INSTALLED,
    find_mosquitto,
    free_port,
    log_tail,
    stop_gracefully,
    wait_accepting,
)
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client


class BrokerError(RuntimeError):
    """The test broker could not be started; the message includes the end of its log."""


class Broker:
    """One mosquitto process. ``host``/``port`` stay the same across :meth:`restart`."""

    def __init__(self, workdir: Path, *, persistence: bool = True, port: int | None = None,
                 executable: str | None = None) -> None:
        self.executable = executable or find_mosquitto()
        if self.executable is None:
            raise BrokerError(NOT_INSTALLED)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT``, as ``--broker`` takes it."""
        return f"{self.host}:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # Started as root, mosquitto would switch to the user "mosquitto", which cannot write
            # the log and persistence files in our directory.
            f"user {getpass.getuser()}",
            "set_tcp_nodelay true",  # Nagle would add ~40 ms to each small message
            # A persistent subscriber that is away must not lose what it missed: the default
            # queue of 1000 messages is a few minutes of one machine's chunks.
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines += ["persistence false"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Broker":
        if self.running:
            raise BrokerError(f"broker on port {self.port} is already running")
        self._write_conf()
        self.process = subprocess.Popen(
            [self.executable, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_accepting(timeout)
        return self

    def _wait_accepting(self, timeout: float) -> None:
        assert self.process is not None
        problem = wait_accepting(self.process, self.host, self.port, timeout)
        if problem is None:
            return
        err = ""
        if self.process.poll() is not None and self.process.stderr:
            err = ": " + self.process.stderr.read().decode(errors="replace")
        self.kill()
        raise BrokerError(f"mosquitto {problem} on port {self.port}{err}{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto writes its persistence file on the way out."""
        if not self.running:
            self.process = None
            return
        assert self.process is not None
        stop_gracefully(self.process, timeout)
        self._close()

    def kill(self) -> None:
        """Abrupt death (SIGKILL): whatever was not saved yet is lost."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._close()

    def save(self, timeout: float = 10.0) -> None:
        """Have the running broker write its database now (SIGUSR1), as its autosave does, and wait
        until the new file is in place (Mosquitto writes a temporary file and renames it)."""
        assert self.persistence and self.running and self.process is not None
        db = self.workdir / "mosquitto.db"

        def identity():
            try:
                st = db.stat()
            except FileNotFoundError:
                return None
            return st.st_ino, st.st_mtime_ns, st.st_size

        before = identity()
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while identity() == before:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not write {db} within {timeout} s of SIGUSR1{self.log_tail()}")
            time.sleep(0.01)

    def restart(self, down_seconds: float = 0.0, timeout: float = 10.0) -> None:
        """Stop gracefully, stay away ``down_seconds``, start again on the same port with the same
        persistence directory (sessions and queued messages survive)."""
        self.stop()
        if down_seconds > 0:
            time.sleep(down_seconds)
        self.start(timeout)

    def _close(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def __enter__(self) -> "Broker":
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A test subscriber (MQTT 5, through ``edge_monitor.service.mqtt``) that records what it receives.

    Subscribes on every connection (so it also works with a clean session) and returns from
    :meth:`start` once the broker has granted the subscriptions."""

    def __init__(self, broker: Broker, filters: list[str] | str, *, client_id: str | None = None,
                 clean_start: bool = True, qos: int = 1, session_expiry: int = 300) -> None:
        self.filters = [filters] if isinstance(filters, str) else list(filters)
        self.qos = qos
        self.clean_start = clean_start
        self.settings = BrokerSettings(broker.host, broker.port, client_id or f"test-sub-{id(self):x}",
                                       session_expiry=session_expiry)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = None
        self.connections = 0  # successful connections (more than one: it reconnected)

    def start(self, timeout: float = 10.0) -> "Subscriber":
        self.client = make_client(self.settings, clean_start=self.clean_start)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.connected = connect(self.client, timeout)
        if not self._subscribed.wait(timeout):
            raise BrokerError(f"no SUBACK for {self.filters} within {timeout} s")
        return self

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            self.connections += 1
            client.subscribe([(f, self.qos) for f in self.filters])

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos,
                                          bool(msg.dup)))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(messages)`` holds (checked on every arrival); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def snapshot(self) -> list["Received"]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        if self.client is not None:
            disconnect(self.client)
            self.client = None

    def __enter__(self) -> "Subscriber":
        return self.start() if self.client is None else self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    dup: bool = False  # the broker marked it a redelivery

    def json(self):
        return json.loads(self.payload)
