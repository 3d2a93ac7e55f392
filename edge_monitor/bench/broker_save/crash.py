"""Table 4: what a broker crash (SIGKILL) loses under each candidate setting, the monitor keeping
up and the monitor away."""

from __future__ import annotations

import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...service.mqtt import disconnect
from .clients import Monitor, Publisher, plain_client, read_retained, set_retained
from .harness import RATE_20, ROOT, Broker, SaveWatcher, wait_until


@dataclass
class Candidate:
    name: str
    conf: dict
    usr1_every: float = 0.0  # an external helper sending SIGUSR1 this often (while the db is small)
    usr1_below: int = 64 * 1024 * 1024  # ... i.e. while the last save was smaller than this


CANDIDATES = [
    Candidate("interval 300 (deployed)", {"autosave_interval": 300}),
    Candidate("interval 5", {"autosave_interval": 5}),
    Candidate("on_changes, 600", {"autosave_interval": 600, "autosave_on_changes": "true"}),
    Candidate("interval 300 + SIGUSR1/5 s", {"autosave_interval": 300}, usr1_every=5.0),
]


@dataclass
class CrashResult:
    candidate: Candidate
    mode: str  # "steady" or "away"
    window: float
    killed_at: float  # time.monotonic() of the SIGKILL
    session_present: bool | None
    last_save_age: float | None  # seconds between the end of the last save and the kill
    saves: int
    save_bytes: int
    restart: float
    period: float | None = None  # median seconds between two saves in the window
    # filled by settle(), once the phase is over:
    accepted_before_kill: int = 0  # chunks the broker acknowledged before the kill
    lost: int = 0  # acknowledged by the broker, never received by the monitor
    lost_before_kill: int = 0
    duplicates: int = 0
    retained: dict = field(default_factory=dict)  # label -> "kept" / "older value" / "gone"
    new_session: bool | None = None


class Usr1Helper:
    """What a systemd timer could do: SIGUSR1 every ``every`` s while the last save was small."""

    def __init__(self, broker: Broker, watcher: SaveWatcher, every: float, below: int) -> None:
        self.broker, self.watcher, self.every, self.below = broker, watcher, every, below
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            last = self.watcher.saves[-1].size if self.watcher.saves else 0
            process = self.broker.process  # None or dead while the broker is killed and restarted
            if last < self.below and process is not None and process.poll() is None:
                try:
                    process.send_signal(signal.SIGUSR1)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def crash_window(workdir: Path, candidate: Candidate, window: float, index: int) -> list[CrashResult]:
    broker = Broker(workdir, f"crash-{index}", **candidate.conf)
    watcher = helper = monitor = publisher = None
    results = []
    try:
        broker.start()
        watcher = SaveWatcher(broker)
        monitor = Monitor(broker.port).start()
        for m in (0, 1):
            set_retained(broker.port, f"{ROOT}/m{m:03d}/alarm", b"old")
        # A box that has been running for a while: the session and the alarms are in the database.
        broker.stop()
        broker.start()
        if not wait_until(lambda: len(monitor.sessions) >= 2, 20):
            raise RuntimeError("the monitor did not reconnect after the clean restart")
        if candidate.usr1_every:
            helper = Usr1Helper(broker, watcher, candidate.usr1_every, candidate.usr1_below)

        # (a) steady state: the monitor keeps up
        publisher = Publisher(broker.port, 20).start()
        t0 = time.monotonic()
        publisher.pace(RATE_20, 0)
        t_kill = t0 + window
        time.sleep(max(0.0, t_kill - 7 - time.monotonic()))
        set_retained(broker.port, f"{ROOT}/m000/alarm", b"set 7 s before the kill")
        dashboard, _ = plain_client(broker.port, "dashboard-new", clean_start=False)
        dashboard.subscribe(f"{ROOT}/+/score", 1)
        time.sleep(0.2)
        disconnect(dashboard)
        time.sleep(max(0.0, t_kill - 1 - time.monotonic()))
        set_retained(broker.port, f"{ROOT}/m001/alarm", b"set 1 s before the kill")
        time.sleep(max(0.0, t_kill - time.monotonic()))
        result = crash(broker, watcher, candidate, "steady", window, t0, monitor)
        time.sleep(3)  # traffic after the restart
        seq = publisher.unpace()
        publisher.wait_acknowledged(30)
        settle(result, publisher, monitor)
        kept = read_retained(broker.port, f"{ROOT}/+/alarm")
        for m, label in ((0, "alarm -7 s"), (1, "alarm -1 s")):
            value = kept.get(f"{ROOT}/m{m:03d}/alarm")
            result.retained[label] = ("gone" if value is None else "older value" if value == b"old" else "kept")
        dashboard, connected = plain_client(broker.port, "dashboard-new", clean_start=False)
        result.new_session = connected.session_present
        disconnect(dashboard)
        results.append(result)

        # (b) the monitor away: its queue grows
        monitor.stop()
        publisher.phase = len(publisher.accepted)
        t0 = time.monotonic()
        publisher.pace(RATE_20, seq)
        time.sleep(window)
        result = crash(broker, watcher, candidate, "away", window, t0, None)
        publisher.unpace()
        publisher.wait_acknowledged(30)
        monitor = Monitor(broker.port).start()
        result.session_present = monitor.sessions[0]
        results.append(settle(result, publisher, monitor))
        return results
    finally:
        for closing in (helper, publisher, monitor):
            if closing is not None:
                try:
                    closing.stop()
                except Exception:
                    pass
        if watcher is not None:
            watcher.close()
        broker.stop()


def crash(broker: Broker, watcher: SaveWatcher, candidate: Candidate, mode: str, window: float, t0: float,
          monitor: Monitor | None) -> CrashResult:
    """SIGKILL now, restart from the database a second later, wait for the monitor (if it was
    connected) to be back; the figures that need the end of the phase are filled by settle()."""
    killed = time.monotonic()
    broker.kill()
    last = watcher.last_done()
    saves = [s for s in watcher.saves if t0 <= s.done <= killed]
    time.sleep(1.0)
    restart = broker.start()
    session = None
    if monitor is not None:
        connections = len(monitor.sessions)
        if not wait_until(lambda: len(monitor.sessions) > connections, 30):
            raise RuntimeError("the monitor did not reconnect to the restarted broker")
        session = monitor.sessions[-1]
    gaps = [b.done - a.done for a, b in zip(saves, saves[1:])]
    return CrashResult(candidate, mode, window, killed, session, None if last is None else killed - last,
                       len(saves), sum(s.size for s in saves), restart,
                       statistics.median(gaps) if gaps else None)


def settle(result: CrashResult, publisher: Publisher, monitor: Monitor) -> CrashResult:
    phase = publisher.accepted[publisher.phase:]
    accepted = {seq for seq, _ in phase}
    before = {seq for seq, when in phase if when < result.killed_at}
    monitor.wait_drained(accepted, idle=3, timeout=60)
    got = set(monitor.received)
    first = min(accepted) if accepted else 0
    in_phase = [s for s in monitor.received if s >= first]
    result.accepted_before_kill = len(before)
    result.lost = len(accepted - got)
    result.lost_before_kill = len(before - got)
    result.duplicates = len(in_phase) - len(set(in_phase))
    return result
