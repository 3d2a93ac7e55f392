"""The benchmark's child processes, and what they cost: CPU and memory read from ``/proc``.

:class:`Child` is a started process whose output lines are collected by a thread, and which is
always stopped (SIGTERM, then SIGKILL). :class:`ProcSampler` reads ``/proc/<pid>/stat``
(utime + stime) and ``/proc/<pid>/status`` (VmRSS) of each process every second: cores used and
resident memory over time, without psutil.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..service.metrics import CLOCK_TICKS, stat_cpu_seconds



class Child:
    """``args`` as a process. stdout lines go to :meth:`line`; stderr (and stdout with ``log``) to a file."""

    def __init__(self, name: str, args: list[str], *, log: Path, stdin: bool = False,
                 capture: bool = True, env: dict | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log
        self._lines: queue.Queue[str | None] = queue.Queue()
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else err, stderr=err, env=env, text=capture or None, cwd=cwd,
            )
        if capture:
            threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float) -> str | None:
        """The next line of its stdout; None at its end or after ``timeout`` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def send(self, text: str) -> None:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout`` seconds; the exit code."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.process.kill()
        code = self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n-- {self.name} log ({self.log_path}) --\n" + "\n".join(text) if text else ""


def read_usage(pid: int | str | None) -> tuple[float, int] | None:
    """(CPU seconds used so far, resident KiB) of ``pid``; None once it is gone. ``pid`` None: the
    whole box's busy CPU seconds (``/proc/stat``), which shows load from outside the benchmark; a
    string ``PID/task/TID``: one thread of a process (its CPU only)."""
    if pid is None:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS, 0  # all but idle and iowait
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text() if isinstance(pid, int) else ""
    except OSError:
        return None
    cpu = stat_cpu_seconds(stat)
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return cpu, rss


@dataclass
class Usage:
    """One process's samples: monotonic time, CPU seconds so far, resident KiB."""

    t: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    def cores_between(self, start: float, end: float) -> float | None:
        """Mean cores used between the first sample at or after ``start`` and the last at or before ``end``."""
        inside = [i for i, t in enumerate(self.t) if start <= t <= end]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        return (self.cpu[b] - self.cpu[a]) / (self.t[b] - self.t[a])

    @property
    def cpu_used(self) -> float:
        """CPU seconds between the first and the last sample."""
        return self.cpu[-1] - self.cpu[0] if self.cpu else 0.0

    def series(self, since: float) -> dict:
        """Seconds since ``since``, cores over each interval (at its end) and RSS in MiB."""
        cores = [None] + [round((self.cpu[i] - self.cpu[i - 1]) / (self.t[i] - self.t[i - 1]), 3)
                          for i in range(1, len(self.t))]
        return {"t": [round(t - since, 3) for t in self.t], "cores": cores,
                "rss_mib": [round(r / 1024, 1) for r in self.rss_kib]}


class ProcSampler:
    """Samples each of ``pids`` (name -> pid; None: the whole box) every ``interval`` seconds on a
    thread of its own."""

    def __init__(self, pids: dict[str, int | str | None], interval: float = 1.0) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.usage = {name: Usage() for name in pids}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def start(self) -> "ProcSampler":
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        with self._lock:
            for name, pid in self.pids.items():
                now, got = time.monotonic(), read_usage(pid)
                if got is not None:
                    u = self.usage[name]
                    u.t.append(now)
                    u.cpu.append(got[0])
                    u.rss_kib.append(got[1])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Stop sampling, with a last sample (once: the figures span the same interval for all)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
