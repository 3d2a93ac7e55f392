"""The measured broker: one mosquitto with persistence in its own directory, its saves timed with
inotify, the chunks it is fed, and the waits around them."""

from __future__ import annotations

import ctypes
import getpass
import os
import random
import select
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...core.channels import CHANNELS
from ..broker import HOST, NOT_INSTALLED, find_mosquitto, free_port, log_tail, stop_gracefully, wait_accepting
from ..procs import read_usage

ROOT = "mill"
CHUNK_BYTES = 5006  # the conf's average chunk: 250 full-precision samples of JSON
CHUNKS_PER_MACHINE = 6  # messages/s: 6 channels x 1 chunk/s
RATE_20 = 20 * CHUNKS_PER_MACHINE
DESIGN_HOUR = 439_200  # the conf's design point: 20 machines x 6.1 messages/s x 3600 s
MAX_QUEUED_BYTES = 2147483647
FULL_QUEUE = MAX_QUEUED_BYTES // CHUNK_BYTES  # chunks that max_queued_bytes lets in
SEQ_AT = slice(10, 22)  # where a chunk's sequence number is: {"cut": "s000000000123", ...
BIG_START = 600.0  # seconds to wait for a broker loading a large database


# ---------------------------------------------------------------------------------------- chunks

def chunk_template(seed: int) -> tuple[bytes, bytes]:
    """(prefix, rest) of a chunk of exactly CHUNK_BYTES once a 12-digit sequence number is put
    between them: valid JSON of the protocol's signal chunk, 250 samples."""
    rnd = random.Random(seed)
    values = [f"{rnd.uniform(-1, 1):.15f}" for _ in range(250)]
    prefix = b'{"cut": "s'

    def rest() -> bytes:
        return ('", "offset": 0, "samples": [' + ", ".join(values) + "]}").encode()

    i = 0
    while len(prefix) + 12 + len(rest()) < CHUNK_BYTES:  # one more digit on the next sample
        values[i % 250] += str(rnd.randrange(10))
        i += 1
    while len(prefix) + 12 + len(rest()) > CHUNK_BYTES:
        values[i % 250] = values[i % 250][:-1]
        i += 1
    return prefix, rest()


TEMPLATES = [chunk_template(seed) for seed in range(8)]


def chunk(seq: int) -> bytes:
    prefix, rest = TEMPLATES[seq % len(TEMPLATES)]
    return prefix + b"%012d" % seq + rest


def chunk_topic(seq: int, machines: int) -> str:
    return f"{ROOT}/m{(seq // CHUNKS_PER_MACHINE) % machines:03d}/signal/{CHANNELS[seq % len(CHANNELS)]}"


# ---------------------------------------------------------------------------------------- broker

class Broker:
    """One mosquitto with persistence in its own directory; the port stays the same across
    restarts, so that clients reconnect to the restarted broker."""

    def __init__(self, workdir: Path, name: str, **persistence: object) -> None:
        self.executable = find_mosquitto()
        if self.executable is None:
            raise RuntimeError(NOT_INSTALLED)
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.db = self.dir / "mosquitto.db"
        self.process: subprocess.Popen | None = None
        settings = {"autosave_interval": 0, "autosave_on_changes": "false"}
        settings.update(persistence)
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            f"user {getpass.getuser()}",
            "set_tcp_nodelay true",
            # the conf's queues
            "max_queued_messages 500000",
            f"max_queued_bytes {MAX_QUEUED_BYTES}",
            "max_inflight_messages 20",
            "queue_qos0_messages false",
            "persistent_client_expiration 1d",
            "persistence true",
            f"persistence_location {self.dir}/",
            *(f"{k} {v}" for k, v in settings.items()),
            f"log_dest file {self.log}",
            # "Saving in-memory database" is an information line; debug (log_type all) would log
            # every PUBLISH of a 400,000-message queue.
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
        ]
        self.conf.write_text("\n".join(lines))

    def start(self) -> float:
        """Start (from the database if there is one); seconds until it accepts connections."""
        t0 = time.monotonic()
        self.process = subprocess.Popen([self.executable, "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        problem = wait_accepting(self.process, HOST, self.port, BIG_START)
        if problem is not None:
            self.kill()
            raise RuntimeError(f"mosquitto {problem} on port {self.port}{log_tail(self.log)}")
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL: a crash; the database stays as the last save left it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its database on the way out."""
        if self.process is not None:
            stop_gracefully(self.process, 120.0)
        self.process = None

    def save(self) -> None:
        self.process.send_signal(signal.SIGUSR1)

    def cpu_seconds(self) -> float:
        return read_usage(self.process.pid)[0]

    def rss_bytes(self) -> int:
        return read_usage(self.process.pid)[1] * 1024

    def logged_saves(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("Saving in-memory database")
        except OSError:
            return 0


@dataclass
class Save:
    started: float  # time.monotonic(): mosquitto.db.new created
    written: float  # ... closed (written and fsynced)
    done: float  # ... renamed to mosquitto.db
    size: int  # bytes of the new mosquitto.db

    @property
    def seconds(self) -> float:
        return self.done - self.started


class SaveWatcher:
    """Every save of one broker directory, timed with inotify (a thread reading its events)."""

    IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x8, 0x80, 0x100

    def __init__(self, broker: Broker) -> None:
        self.db = broker.db
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(
                self.fd, os.fsencode(broker.dir), self.IN_CLOSE_WRITE | self.IN_MOVED_TO | self.IN_CREATE) < 0:
            raise RuntimeError(f"inotify on {broker.dir}: {os.strerror(ctypes.get_errno())}")
        self.saves: list[Save] = []
        self.creations = 0  # saves started (mosquitto.db.new created)
        self.changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="save-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        new, db = self.db.name + ".new", self.db.name
        started = written = None
        while not self._stop:
            if not poller.poll(50):
                continue
            # inotify events carry no time: all the events of one read get the time of the read
            now = time.monotonic()
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            at = 0
            while at + 16 <= len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, at)  # struct inotify_event
                name = data[at + 16:at + 16 + length].rstrip(b"\0").decode(errors="replace")
                at += 16 + length
                if name == new and mask & self.IN_CREATE:
                    started, written = now, None
                    with self.changed:
                        self.creations += 1
                        self.changed.notify_all()
                elif name == new and mask & self.IN_CLOSE_WRITE:
                    written = now
                elif name == db and mask & self.IN_MOVED_TO:
                    try:
                        size = self.db.stat().st_size
                    except OSError:
                        size = -1
                    with self.changed:
                        self.saves.append(Save(started or now, written or now, now, size))
                        self.changed.notify_all()
                    started = written = None

    def count(self) -> int:
        return len(self.saves)

    def wait_for(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.saves) >= n, timeout)

    def wait_started(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.creations >= n, timeout)

    def last_done(self) -> float | None:
        return self.saves[-1].done if self.saves else None

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        os.close(self.fd)


def wait_idle(broker: Broker, watcher: SaveWatcher, timeout: float = 600.0, quiet: float = 0.5) -> float:
    """Until the broker has had nothing to do for ``quiet`` s (< 4 % CPU, no save under way):
    Mosquitto 2.0.11 sends a reconnecting subscriber its whole queue without waiting for the
    acknowledgements, so it may still be processing PUBACKs (and counting changes, and saving)
    seconds after the subscriber has received everything. Returns when the quiet period began."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        t0, cpu = time.monotonic(), broker.cpu_seconds()
        time.sleep(quiet)
        if broker.cpu_seconds() - cpu < 0.04 * quiet and watcher.creations == watcher.count():
            return t0
    return time.monotonic()


def save_now(broker: Broker, watcher: SaveWatcher, timeout: float = 600.0) -> tuple[Save, float]:
    """SIGUSR1, wait for the save to end: (the save, CPU seconds the broker used meanwhile).

    Mosquitto 2.0.11 clears its "save requested" flag after a save, so a SIGUSR1 that lands while
    a save is finishing is lost (seen here when signalling right after the previous rename): the
    signal is sent again when no save has started within a second."""
    n, started = watcher.count(), watcher.creations
    cpu = broker.cpu_seconds()
    for _ in range(10):
        broker.save()
        if watcher.wait_started(started + 1, 1.0):
            break
    if not watcher.wait_for(n + 1, timeout):
        raise RuntimeError(f"no save within {timeout:g} s of SIGUSR1{log_tail(broker.log)}")
    return watcher.saves[n], broker.cpu_seconds() - cpu


def wait_until(predicate, timeout: float) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
