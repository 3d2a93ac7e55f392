"""Checkpoint, then acknowledge: at least once from a machine's publish to the published results.

The monitor acknowledges its inputs by hand (paho's ``manual_ack``). Every ``interval`` it closes
an *epoch*: it scores every window still waiting, publishes the results, and takes a snapshot of
every machine (alarm state and open cut) for the state file. An epoch is *confirmed*
once the broker has taken all of its results (QoS 1: acknowledged; QoS 0: written to the socket);
then the newest confirmed snapshot is written to the state file atomically, and only then are the
epoch's inputs acknowledged.

So after a crash at any moment, the state file covers exactly the inputs that were acknowledged:
the broker sends the others again, the pipelines resume from the snapshot, and what is redelivered
but already covered is dropped as a duplicate by its (machine, cut, channel, offset). Results
published between the last snapshot and the crash come out once more, identical.

An input's packet id belongs to the connection it came on: inputs of an earlier connection are not
acknowledged (the broker sends them again on the new one, and they are acknowledged then).

With ``delivery.checkpoint_groups`` above 1 an epoch snapshots one group of the machines only (the
monitor's choice): a machine's inputs are then *held* until an epoch that snapshots that machine
closes, and acknowledged with it. Each machine's snapshot and its acknowledged inputs still match,
which is all a restart needs; the state file holds every machine, each as of its last snapshot.
Acknowledgements still go out in the order the inputs came (MQTT asks it of a client): an input
snapshotted already waits for the older ones held for another group.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import paho.mqtt.client as paho

from .inbox import Delivery

MAX_UNCONFIRMED = 8  # epochs waiting for the broker: beyond this the current one grows instead


def taken(info: paho.MQTTMessageInfo) -> bool | None:
    """Whether the broker has taken a published message: True (QoS 1: acknowledged; QoS 0:
    written to the socket), False (not yet), None (never will be: paho dropped it, or a QoS 0
    message was lost with the connection)."""
    if info.rc in (paho.MQTT_ERR_QUEUE_SIZE, paho.MQTT_ERR_CONN_LOST):
        return None
    # paho's is_published() raises for a QoS 1 message published while disconnected, which paho
    # keeps and sends after reconnecting; its private flag says what we need.
    return bool(info._published)  # noqa: SLF001


@dataclass
class Epoch:
    """Inputs applied since the previous checkpoint, the results they led to, and the snapshot
    that covers them (none: no state file, nothing to write). Epochs confirmed together keep every
    snapshot, in order: each may hold only the machines that changed (checkpoint_writer.py)."""

    acks: list[Delivery] = field(default_factory=list)
    outputs: list[paho.MQTTMessageInfo] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)

    def merge(self, later: "Epoch") -> "Epoch":
        return Epoch(self.acks + later.acks, self.outputs + later.outputs, self.snapshots + later.snapshots)


@dataclass
class Progress:
    """What :meth:`Checkpoints.confirm` did."""

    acknowledged: int = 0
    forgotten: int = 0  # inputs of an earlier connection: the broker sends them again
    confirmed: int = 0  # checkpoints the broker had the results of: the newest one written (if a state file)


class Checkpoints:
    """The open epoch and the closed ones waiting for the broker (see the module docstring).

    The main loop applies inputs and closes epochs; :meth:`confirm` may run on another thread
    (checkpoint_writer.py): the closed epochs are handed over under a lock, and the open one is
    the main loop's alone."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.open = Epoch()
        # Inputs held for their machines' next snapshot, in arrival order: [delivery, snapshotted].
        # Acknowledged from the front, as far as every one is snapshotted: MQTT wants a client's
        # PUBACKs in the order it received the messages (MQTT 5.0, 4.6), whatever the groups.
        self._order: deque[list] = deque()
        self.held: dict[str, list[list]] = {}  # machine -> its entries of _order not yet snapshotted
        self.waiting: deque[Epoch] = deque()
        self.working: Epoch | None = None  # confirmed, being written and acknowledged
        self.dropped = 0  # results paho dropped or lost with a connection (QoS 0)
        self._lock = threading.Lock()

    @property
    def unacknowledged(self) -> int:
        # The epochs are copied first (a tuple of a deque is taken at once, holding the GIL): the
        # metrics scrape thread and the writer change them while the main loop reads this.
        working = self.working
        return (len(self.open.acks) + len(self._order) + sum(len(e.acks) for e in tuple(self.waiting))
                + (0 if working is None else len(working.acks)))

    @property
    def idle(self) -> bool:
        """Nothing closed waits to be confirmed, written or acknowledged."""
        return not self.waiting and self.working is None

    def applied(self, delivery: Delivery, machine: str | None = None) -> None:
        """An input was applied (or refused): acknowledge it with the next confirmed checkpoint
        that snapshots ``machine`` (None: the next one; an input that changed no machine)."""
        if not delivery.qos:
            return
        if machine is None and not self._order:
            self.open.acks.append(delivery)  # nothing before it waits
            return
        entry = [delivery, machine is None]
        self._order.append(entry)
        if machine is not None:
            held = self.held.get(machine)
            if held is None:
                self.held[machine] = [entry]
            else:
                held.append(entry)

    def holding(self) -> bool:
        """Inputs wait for their machines' next snapshot (or behind such an input)."""
        return bool(self._order)

    def published(self, infos: list[paho.MQTTMessageInfo]) -> None:
        self.open.outputs += infos

    def can_close(self) -> bool:
        return len(self.waiting) < MAX_UNCONFIRMED

    def close(self, snapshot: Any | None, machines: Iterable[str] | None = None) -> None:
        """Close the open epoch with ``snapshot``, taken after every window of it was scored, of
        ``machines`` (None: every machine): their held inputs are acknowledged with it."""
        epoch, self.open = self.open, Epoch()
        order = self._order
        if machines is None:
            epoch.acks += [entry[0] for entry in order]
            order.clear()
            self.held = {}
        else:
            held = self.held
            for machine in machines:
                for entry in held.pop(machine, ()):
                    entry[1] = True
            while order and order[0][1]:
                epoch.acks.append(order.popleft()[0])
        epoch.snapshots = [] if snapshot is None else [snapshot]
        with self._lock:
            self.waiting.append(epoch)

    def confirm(self, connection: Callable[[], int], lock: threading.Lock, write) -> Progress:
        """Write the snapshots of the epochs the broker has confirmed with ``write(snapshots)``
        (every one since the last write, oldest first: the newest is the file's) and acknowledge
        their inputs that came on the current ``connection()``; ``lock`` is held while
        acknowledging, so that the connection cannot change meanwhile. When ``write`` raises
        (OSError), nothing is acknowledged and the epochs wait for the next call."""
        done = Epoch()
        n = 0
        with self._lock:
            while self.waiting:
                head = self.waiting[0]
                # the broker acknowledges in order, mostly: drop what it has from the front, so
                # that each call looks at a few messages rather than the whole epoch's
                outputs = head.outputs
                i = 0
                while i < len(outputs) and (state := taken(outputs[i])) is not False:
                    self.dropped += state is None
                    i += 1
                del outputs[:i]
                if outputs:
                    break
                done = done.merge(self.waiting.popleft()) if n else self.waiting.popleft()
                n += 1
            self.working = done if n else None
        progress = Progress(confirmed=n)
        if not n:
            return progress
        try:
            if done.snapshots:
                write(done.snapshots)
        except BaseException:
            with self._lock:
                self.waiting.appendleft(done)  # its outputs are confirmed already
                self.working = None
            raise
        with lock:
            current = connection() if self.client.is_connected() else None
            for d in done.acks:
                if d.connection == current:
                    self.client.ack(d.mid, d.qos)
                    progress.acknowledged += 1
                else:  # the broker sends it again on the connection after
                    progress.forgotten += 1
        self.working = None
        return progress


class CheckpointGroups:
    """Which machines the next checkpoint snapshots (``delivery.checkpoint_groups``): every one,
    or with ``n`` groups one group in turn. A machine's group comes from a CRC of its id, the same
    in every run and spread evenly over many machines. ``machines()`` names the machines there are
    (the fleet's, those changed, those with inputs held).

    The first checkpoint takes every machine, and so does the one after :meth:`whole`: the state
    file must hold every machine before a group is written alone (at start the writer knows none),
    and a reload changes every alarm state."""

    def __init__(self, n: int, machines: Callable[[], Iterable[str]]) -> None:
        self.n = n
        self.machines = machines
        self._turn = 0
        self._whole = True

    def whole(self) -> None:
        """The next checkpoint takes every machine."""
        self._whole = True

    def next(self) -> frozenset[str] | None:
        """The machines of the next checkpoint; None: every machine."""
        if self.n == 1 or self._whole:
            self._whole = False
            return None
        turn, n = self._turn, self.n
        self._turn = (turn + 1) % n
        return frozenset(m for m in self.machines() if group_of(m, n) == turn)


def group_of(machine: str, n: int) -> int:
    return zlib.crc32(machine.encode("utf-8", "surrogatepass")) % n
