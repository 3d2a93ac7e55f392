"""Checkpoints written and acknowledged off the main loop.

At a checkpoint the main loop only takes the snapshot: each changed machine's open cut and every
alarm state, as plain data copied from the pipelines (:class:`SnapshotJob`, about 10 µs a
machine). Encoding it as the state file's text, writing and syncing the file and acknowledging
the inputs it covers happen here, on a thread of its own, once the broker has the epoch's results
(checkpoint.py: the order and the guarantees are the same). At 1 000 machines that work took the
main loop 150-190 ms every second (measured, docs/performance.md), and every window waiting
behind it came late; now the loop turns while the file is written.

The writer keeps each machine's last encoded snapshot: a machine that did not change since the
last checkpoint is not encoded again. Snapshots are applied in the order taken, also when several
epochs are confirmed at once, and again after a write that failed: the cache only ever moves
forward.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.alarm import AlarmPolicy
from .checkpoint import Checkpoints, Progress
from .state_format import Record, encode_record
from .state import StateFile

POLL_S = 0.01  # how often the writer looks whether the broker took an epoch's results
RETRY_S = 1.0  # after a write that failed


@dataclass(frozen=True)
class SnapshotJob:
    """What one checkpoint took, not yet encoded."""

    streams: dict[str, dict]  # machine -> MachinePipeline.to_state(), the machines that changed
    live: frozenset[str]  # machines with a pipeline: the open cuts the file keeps
    alarms: dict[str, dict]  # the alarm state of every machine of ``group`` (Fleet.snapshots)
    model: str
    windowing: dict | None
    scoring: str
    policy: AlarmPolicy | None
    # The machines this snapshot is of (checkpoint groups, checkpoint.py); None: every machine. The
    # others keep what their last snapshot said: their open cut, their alarm state.
    group: frozenset[str] | None = None


class SnapshotEncoder:
    """The state file's bytes from the jobs, with each machine's open cut encoded once per change."""

    def __init__(self, state_file: StateFile) -> None:
        self.state_file = state_file
        self._records: dict[str, Record] = {}  # machine -> its open cut, encoded at its last change
        self._alarms: dict[str, dict] = {}  # machine -> its alarm state at its last snapshot

    def parts(self, jobs: list[SnapshotJob]) -> list:
        """The file's bytes, in pieces (:meth:`.StateFile.compose`)."""
        records = self._records
        for job in jobs:
            for machine, state in job.streams.items():
                records[machine] = encode_record(state)
            # left memory: no open cut to keep (its alarm state stays); a machine of another
            # group keeps its record until its own snapshot says so
            group = records if job.group is None else job.group
            for machine in [m for m in group if m in records and m not in job.live]:
                del records[machine]
            if job.group is None:
                self._alarms = dict(job.alarms)
            else:  # as a whole snapshot would: the group's machines with no alarm state have none
                for machine in job.group:
                    state = job.alarms.get(machine)
                    if state is None:
                        self._alarms.pop(machine, None)
                    else:
                        self._alarms[machine] = state
        last = jobs[-1]
        return self.state_file.compose(self._alarms, records, last.model, last.windowing,
                                       last.scoring, last.policy)

    def write(self, jobs: list[SnapshotJob]) -> None:
        self.state_file.write(self.parts(jobs))


class CheckpointWriter:
    """A thread confirming ``checkpoints`` as the broker takes their results: writing the state
    file (``encoder``) and acknowledging the inputs. ``on_progress(Progress)`` after each write,
    ``on_error(exc)`` when the file cannot be written (retried every ``RETRY_S``). Anything else
    going wrong stops the thread and is kept in :attr:`failure`, for the main loop to raise: a
    writer that stopped would hold every acknowledgement back."""

    def __init__(self, checkpoints: Checkpoints, encoder: SnapshotEncoder, connection: Callable[[], int],
                 ack_lock: threading.Lock, on_progress: Callable[[Progress], Any],
                 on_error: Callable[[Exception], Any]) -> None:
        self.checkpoints, self.encoder = checkpoints, encoder
        self.connection, self.ack_lock = connection, ack_lock
        self.on_progress, self.on_error = on_progress, on_error
        self.failure: BaseException | None = None
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)

    def start(self) -> "CheckpointWriter":
        self._thread.start()
        return self

    def wake(self) -> None:
        """An epoch was closed: look at it."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def flush(self, until: float, still: Callable[[], bool] = lambda: True) -> bool:
        """Wait (up to the monotonic time ``until``, and while ``still()``) for every closed epoch
        to be written and acknowledged; whether they were."""
        while not self.checkpoints.idle and time.monotonic() < until and still() and self.alive:
            self._wake.set()
            time.sleep(POLL_S)
        return self.checkpoints.idle

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop:
                if self.checkpoints.waiting:
                    self._wake.wait(POLL_S)  # for the broker's acknowledgements
                else:
                    self._wake.wait()
                self._wake.clear()
                if self._stop:
                    break
                try:
                    progress = self.checkpoints.confirm(self.connection, self.ack_lock, self.encoder.write)
                except (OSError, ValueError) as exc:
                    self.on_error(exc)
                    self._wake.wait(RETRY_S)
                    continue
                if progress.confirmed:
                    self.on_progress(progress)
        except BaseException as exc:  # noqa: BLE001 - kept for the main loop, which stops the monitor
            self.failure = exc
