"""Checkpoint, then acknowledge: at least once from a machine's publish to the published results.

The monitor acknowledges its inputs by hand (paho's ``manual_ack``). Every ``interval`` it closes
an *epoch*: it scores every window still waiting, publishes the results, and takes a snapshot of
every machine (alarm state and open cut) as the text of the state file. An epoch is *confirmed*
once the broker has taken all of its results (QoS 1: acknowledged; QoS 0: written to the socket);
then the newest confirmed snapshot is written to the state file atomically, and only then are the
epoch's inputs acknowledged.

So after a crash at any moment, the state file covers exactly the inputs that were acknowledged:
the broker sends the others again, the pipelines resume from the snapshot, and what is redelivered
but already covered is dropped as a duplicate by its (machine, cut, channel, offset). Results
published between the last snapshot and the crash come out once more, identical.

An input's packet id belongs to the connection it came on: inputs of an earlier connection are not
acknowledged (the broker sends them again on the new one, and they are acknowledged then).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import orjson
import paho.mqtt.client as paho

from ..core.snapshot import SnapshotError
from .inbox import Delivery

MAX_UNCONFIRMED = 8  # epochs waiting for the broker: beyond this the current one grows instead
ARRAY_DTYPES = {"float64": np.float64, "int64": np.int64, "bool": np.bool_}


def encode_arrays(value: Any) -> Any:
    """A snapshot as JSON-able data: every numpy array becomes {"array": dtype, "shape", "data"}
    with its bytes in base64 (exact, and far faster than a list of numbers)."""
    return _encode(value, [])


def _encode(value: Any, nonfinite: list) -> Any:
    """:func:`encode_arrays`, appending to ``nonfinite`` each float outside the arrays that is NaN
    or infinite: one walk of the snapshot, not two (at 1 000 machines every second counts)."""
    kind = type(value)
    if kind is np.ndarray:
        name = _DTYPE_NAMES.get(value.dtype)  # dtype.name is slow Python: a checkpoint asks it thousands of times
        if name is None:
            raise TypeError(f"cannot checkpoint an array of {value.dtype.name}")
        # tobytes() is C order whatever the strides; the file's bytes are little-endian
        data = value.tobytes() if _LITTLE_ENDIAN else value.astype(value.dtype.newbyteorder("<")).tobytes()
        return {"array": name, "shape": list(value.shape), "data": binascii.b2a_base64(data, newline=False).decode("ascii")}
    if kind is float:
        if not math.isfinite(value):
            nonfinite.append(value)
        return value
    if kind is dict:
        return {str(k): v if type(v) in _EXACT else _encode(v, nonfinite) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _EXACT else _encode(v, nonfinite) for v in value]
    if isinstance(value, np.generic):  # a numpy scalar (np.float64 from a median, say): the Python number
        return _encode(value.item(), nonfinite)
    if isinstance(value, float):  # a subclass of float
        return _encode(float(value), nonfinite)
    if isinstance(value, np.ndarray):  # a subclass
        return _encode(np.asarray(value), nonfinite)
    if isinstance(value, dict):
        return _encode(dict(value), nonfinite)
    if isinstance(value, (list, tuple)):
        return _encode(list(value), nonfinite)
    return value


def snapshot_text(state: Any) -> str:
    """A machine's snapshot as compact JSON text (arrays as :func:`encode_arrays` makes them).

    orjson writes it about six times faster than the json module, but writes NaN and infinity as
    null; a snapshot holding such a number outside its arrays (an air level of a cut whose first
    samples were all lost) goes through the json module, whose NaN the state file's reader reads
    back."""
    nonfinite: list = []
    encoded = _encode(state, nonfinite)
    if not nonfinite:
        try:
            return orjson.dumps(encoded).decode("utf-8")
        except TypeError:  # what the json module writes and orjson refuses: an int beyond 64 bits, a lone surrogate
            pass
    return json.dumps(encoded, separators=(",", ":"))


_DTYPE_NAMES = {np.dtype(t): name for name, t in ARRAY_DTYPES.items()}
_EXACT = {int, str, bool, type(None)}  # nothing to convert or check (exact types: not subclasses)
_LITTLE_ENDIAN = sys.byteorder == "little"


def decode_arrays(value: Any, where: str = "snapshot") -> Any:
    """The inverse of :func:`encode_arrays`; :class:`SnapshotError` for an array that does not
    decode (unknown type, shape and bytes that disagree, bad base64)."""
    if isinstance(value, dict):
        if "array" in value and set(value) == {"array", "shape", "data"}:
            return _array(value, where)
        return {k: decode_arrays(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [decode_arrays(v, where) for v in value]
    return value


def _array(value: dict, where: str) -> np.ndarray:
    dtype, shape, data = value["array"], value["shape"], value["data"]
    if type(dtype) is not str or dtype not in ARRAY_DTYPES or not isinstance(shape, list) or not isinstance(data, str) or any(
        type(n) is not int or not 0 <= n < 2**31 for n in shape
    ):
        raise SnapshotError(f"{where}: not an array")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise SnapshotError(f"{where}: the array's data is not base64 ({exc})") from None
    kind = np.dtype(ARRAY_DTYPES[dtype]).newbyteorder("<")
    if len(shape) > 3 or len(raw) != kind.itemsize * math.prod(shape):
        raise SnapshotError(f"{where}: {len(raw)} bytes do not hold a {dtype} array of shape {shape}")
    return np.frombuffer(raw, dtype=kind).reshape(shape).astype(ARRAY_DTYPES[dtype])


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
        self.waiting: deque[Epoch] = deque()
        self.working: Epoch | None = None  # confirmed, being written and acknowledged
        self.dropped = 0  # results paho dropped or lost with a connection (QoS 0)
        self._lock = threading.Lock()

    @property
    def unacknowledged(self) -> int:
        # The epochs are copied first (a tuple of a deque is taken at once, holding the GIL): the
        # metrics scrape thread and the writer change them while the main loop reads this.
        working = self.working
        return (len(self.open.acks) + sum(len(e.acks) for e in tuple(self.waiting))
                + (0 if working is None else len(working.acks)))

    @property
    def idle(self) -> bool:
        """Nothing closed waits to be confirmed, written or acknowledged."""
        return not self.waiting and self.working is None

    def applied(self, delivery: Delivery) -> None:
        """An input was applied (or refused): acknowledge it with the next confirmed checkpoint."""
        if delivery.qos:
            self.open.acks.append(delivery)

    def published(self, infos: list[paho.MQTTMessageInfo]) -> None:
        self.open.outputs += infos

    def can_close(self) -> bool:
        return len(self.waiting) < MAX_UNCONFIRMED

    def close(self, snapshot: Any | None) -> None:
        """Close the open epoch with ``snapshot``, taken after every window of it was scored."""
        epoch, self.open = self.open, Epoch()
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
