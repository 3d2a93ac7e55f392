"""Wire protocol v1, inbound: strict parsing of what machines (and the retained alarms) send.

Every rejection raises :class:`~edge_monitor.core.topics.ProtocolError` whose ``reason`` says what
to fix, short enough for the errors topic and the log. Payloads are checked for size before they
are decoded. Pure: no MQTT, no model.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .channels import CHANNELS, MATERIALS
from . import json_input
from .json_input import json_type as _json_type
from .json_input import media_type as _media_type
from .outbound import LEVELS, SENSOR_FAULT, AlarmMessage
from .spec import Spec, setting
from .topics import ProtocolError, machine_id_problem, show

#: Cut ids: also allow ``.``, ``:`` and ``+`` so timestamps, UUIDs and job numbers fit as they are.
CUT_ID = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")
MATERIAL_NAMES: tuple[str, ...] = tuple(MATERIALS.values())


@dataclass(frozen=True)
class Limits(Spec):
    """Sanity limits on inbound messages and on what the monitor tracks; all configurable."""

    section = "limits"
    max_payload_bytes: int = setting(1 << 20, low=1, high=2**31 - 1)
    max_chunk: int = setting(4096, low=1, high=2**31 - 1)  # samples per signal message
    # Offsets and cut lengths beyond this are absurd; it also bounds what a gap can cost in memory
    # (a gap is filled with NaN rows). 10^6 samples ≈ 67 min at 250 Hz.
    max_cut_samples: int = setting(1_000_000, low=1, high=2**31 - 1)
    max_lead_seconds: float = setting(60.0, low=0.1)  # how far one channel may run ahead of another
    max_machines: int = setting(256, low=1, high=100_000)  # tracked at once: bounds the memory
    min_reset_interval_s: float = setting(1.0, low=0.0, high=3600.0)  # per machine: a flood of resets is refused
    cut_timeout_s: float = setting(600.0, low=1.0)  # an open cut with no input this long is closed as aborted
    idle_machine_s: float = setting(3600.0, low=1.0)  # a machine with no cut open this long leaves memory


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class CutParams:
    doc: float  # depth of cut, mm
    feed: float  # mm/rev
    material: str  # one of MATERIAL_NAMES


@dataclass(frozen=True)
class CutStart:
    cut: str
    ts: float  # unix seconds
    fs: float  # sample rate, Hz
    params: CutParams | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"event": "start", "cut": self.cut, "ts": self.ts, "fs": self.fs}
        if self.params is not None:
            p = self.params
            out["params"] = {"doc": p.doc, "feed": p.feed, "material": p.material}
        return out


@dataclass(frozen=True)
class CutEnd:
    cut: str
    ts: float
    samples: int  # samples in the cut, per channel

    def to_dict(self) -> dict:
        return {"event": "end", "cut": self.cut, "ts": self.ts, "samples": self.samples}


@dataclass(frozen=True, eq=False)  # eq on an ndarray field is ambiguous
class SignalChunk:
    cut: str
    offset: int  # index in the cut of samples[0]
    samples: np.ndarray  # (n,) float64, finite, read-only

    def to_dict(self) -> dict:
        return {"cut": self.cut, "offset": int(self.offset), "samples": np.asarray(self.samples, np.float64).tolist()}

    def to_f32(self) -> bytes:
        """The compact encoding (content type :data:`F32_CONTENT_TYPE`, docs/protocol.md)."""
        cut = self.cut.encode("ascii")
        samples = np.asarray(self.samples, dtype="<f4")
        return _F32_HEADER.pack(int(self.offset), len(cut)) + cut + samples.tobytes()


@dataclass(frozen=True, eq=False)
class SignalFrame:
    """Every channel of one machine for one block of samples (``R/<machine>/frame``): the rows
    ``offset .. offset + k`` of the cut, one column per channel in the monitor's order. What a
    data acquisition samples together, sent together: one message where chunks take six."""

    cut: str
    offset: int  # index in the cut of samples[0]
    samples: np.ndarray  # (k, 6) float64, finite, read-only, columns in CHANNELS order

    def to_dict(self) -> dict:
        rows = np.asarray(self.samples, np.float64)
        return {"cut": self.cut, "offset": int(self.offset),
                "channels": {name: rows[:, c].tolist() for c, name in enumerate(CHANNELS)}}

    def to_f32(self) -> bytes:
        """The compact encoding (content type :data:`F32_FRAME_CONTENT_TYPE`, docs/protocol.md):
        rows interleaved, as a data acquisition samples them."""
        cut = self.cut.encode("ascii")
        rows = np.ascontiguousarray(self.samples, dtype="<f4")
        return _F32_HEADER.pack(int(self.offset), len(cut)) + cut + bytes([rows.shape[1]]) + rows.tobytes()

    def chunks(self) -> list[tuple[str, SignalChunk]]:
        """The frame as the six chunks it stands for: how signal data enters a cut (a frame in order,
        whose chunks would each be next, enters in one step: frames.CutAssembler.add_level)."""
        return [(name, SignalChunk(self.cut, self.offset, self.samples[:, c])) for c, name in enumerate(CHANNELS)]


@dataclass(frozen=True)
class Command:
    cmd: str  # "reset"
    by: str
    id: str | None = None  # set by the sender: a command redelivered with an id already applied is not applied again

    def to_dict(self) -> dict:
        out = {"cmd": self.cmd, "by": self.by}
        if self.id is not None:
            out["id"] = self.id
        return out


InboundMessage = Union[CutStart, CutEnd, SignalChunk, SignalFrame, Command]


#: MQTT 5 content type of the compact encoding of a signal chunk: offset (uint32), cut id length
#: (uint8), the cut id (ASCII), then the samples as float32, all little-endian (docs/protocol.md).
#: Any other content type, or none, is JSON (as before the compact encoding existed).
F32_CONTENT_TYPE = "application/vnd.edge-monitor.chunk+f32le"
_F32_HEADER = struct.Struct("<IB")
#: MQTT 5 content type of the compact encoding of a frame: the chunk's header, the number of
#: channels (uint8, the monitor's six), then the rows interleaved as float32 (docs/protocol.md).
F32_FRAME_CONTENT_TYPE = "application/vnd.edge-monitor.frame+f32le"
BINARY_CONTENT_TYPES: tuple[str, ...] = (F32_CONTENT_TYPE, F32_FRAME_CONTENT_TYPE)  # signal data only


def decode_object(payload: bytes, limits: Limits = DEFAULT_LIMITS, content_type: str | None = None) -> dict:
    """A JSON input's object (``json_input.decode_object``), at most ``limits.max_payload_bytes``;
    the compact signal encodings are refused for it."""
    return json_input.decode_object(payload, limits.max_payload_bytes, content_type, BINARY_CONTENT_TYPES)


def parse_cut_event(payload: bytes, limits: Limits = DEFAULT_LIMITS, content_type: str | None = None) -> CutStart | CutEnd:
    obj = decode_object(payload, limits, content_type)
    event = _get(obj, "event")
    if event == "start":
        return CutStart(
            cut=_cut_id(obj),
            ts=_timestamp(obj),
            fs=_positive(_get(obj, "fs"), "fs"),
            params=_params(obj.get("params")),
        )
    if event == "end":
        samples = _integer(_get(obj, "samples"), "samples")
        if samples > limits.max_cut_samples:
            raise ProtocolError(f"samples {samples} is absurd: over the limit of {limits.max_cut_samples} per cut")
        return CutEnd(cut=_cut_id(obj), ts=_timestamp(obj), samples=samples)
    raise ProtocolError(f"event must be \"start\" or \"end\", got {show(event)}")


def parse_signal(payload: bytes, limits: Limits = DEFAULT_LIMITS, content_type: str | None = None) -> SignalChunk:
    """A chunk in JSON or, with the MQTT 5 content type :data:`F32_CONTENT_TYPE`, compact."""
    if content_type is not None and _media_type(content_type) == F32_CONTENT_TYPE:
        cut, offset, samples = _f32_chunk(payload, limits)
    else:
        obj = decode_object(payload, limits, content_type)
        cut = _cut_id(obj)
        offset = _integer(_get(obj, "offset"), "offset")
        samples = _samples(_get(obj, "samples"), limits)
    if offset + samples.size > limits.max_cut_samples:
        raise ProtocolError(
            f"offset {offset} is absurd: the chunk would end past the limit of {limits.max_cut_samples} samples per cut"
        )
    return SignalChunk(cut, offset, samples)


def parse_frame(payload: bytes, limits: Limits = DEFAULT_LIMITS, content_type: str | None = None) -> SignalFrame:
    """A frame in JSON (``channels``: each channel's samples by name) or, with the MQTT 5 content
    type :data:`F32_FRAME_CONTENT_TYPE`, compact. Every channel, equal lengths, finite values."""
    if content_type is not None and _media_type(content_type) == F32_FRAME_CONTENT_TYPE:
        cut, offset, rows = _f32_frame(payload, limits)
    else:
        obj = decode_object(payload, limits, content_type)
        cut = _cut_id(obj)
        offset = _integer(_get(obj, "offset"), "offset")
        rows = _frame_rows(_get(obj, "channels"), limits)
    if offset + rows.shape[0] > limits.max_cut_samples:
        raise ProtocolError(
            f"offset {offset} is absurd: the frame would end past the limit of {limits.max_cut_samples} samples per cut"
        )
    return SignalFrame(cut, offset, rows)


def _frame_rows(value: Any, limits: Limits) -> np.ndarray:
    if type(value) is not dict:
        raise ProtocolError(f"channels must be an object of each channel's samples, got {_json_type(value)}")
    unknown = [name for name in value if name not in CHANNELS]
    if unknown:
        raise ProtocolError(f"unknown channel {show(unknown[0])} in channels; expected {', '.join(CHANNELS)}")
    missing = [name for name in CHANNELS if name not in value]
    if missing:
        raise ProtocolError(f"channels lacks {', '.join(missing)}: a frame carries every channel "
                            "(send a channel alone as a chunk on signal/<channel>)")
    columns = []
    for name in CHANNELS:
        try:
            columns.append(_samples(value[name], limits))
        except ProtocolError as exc:
            raise ProtocolError(f"channels.{name}: {exc.reason}") from None
    lengths = {c.size for c in columns}
    if len(lengths) > 1:
        sizes = ", ".join(f"{name} {c.size}" for name, c in zip(CHANNELS, columns))
        raise ProtocolError(f"channels have unequal lengths ({sizes}): a frame is one block of samples of every channel")
    rows = np.stack(columns, axis=1)
    rows.setflags(write=False)
    return rows


def _f32_frame(payload: bytes, limits: Limits) -> tuple[str, int, np.ndarray]:
    """Cut id, offset and rows of a compact frame, checked as strictly as the JSON one."""
    size = memoryview(payload).nbytes
    cut, offset, start = _f32_header(payload, size, limits, "frame")
    if size < start + 1:
        raise ProtocolError("compact frame: the channel count is missing after the cut id")
    n_channels = payload[start]
    if n_channels != len(CHANNELS):
        raise ProtocolError(f"compact frame of {n_channels} channels: a frame carries the monitor's {len(CHANNELS)} "
                            f"({', '.join(CHANNELS)}, in that order)")
    body = size - start - 1
    row_bytes = 4 * n_channels
    if body % row_bytes:
        raise ProtocolError(f"compact frame: {body} bytes of samples is not a whole number of rows of "
                            f"{n_channels} float32 values")
    n = body // row_bytes
    if n == 0:
        raise ProtocolError("samples is empty")
    if n > limits.max_chunk:
        raise ProtocolError(f"frame has {n} rows, over the limit of {limits.max_chunk} per chunk")
    rows = np.frombuffer(payload, dtype="<f4", offset=start + 1).astype(np.float64).reshape(n, n_channels)
    # the sum is finite exactly when every value is (float32 values cannot add up past float64's
    # range), and costs a third of isfinite().all(); which value is not, only when one is not
    if not math.isfinite(rows.sum()):
        finite = np.isfinite(rows)
        row, c = divmod(int(np.argmin(finite.reshape(-1))), n_channels)
        raise ProtocolError(f"channels.{CHANNELS[c]}: samples[{row}] is not a finite number")
    rows.setflags(write=False)
    return cut, offset, rows


def parse_command(payload: bytes, limits: Limits = DEFAULT_LIMITS, content_type: str | None = None) -> Command:
    obj = decode_object(payload, limits, content_type)
    cmd = _get(obj, "cmd")
    if cmd != "reset":
        raise ProtocolError(f"unknown cmd {show(cmd)}; expected \"reset\"")
    by = _get(obj, "by")
    if type(by) is not str or not 1 <= len(by) <= 64 or not by.isprintable():
        raise ProtocolError("by must be a string of 1-64 printable characters naming who reset")
    command_id = obj.get("id")
    if command_id is not None and (type(command_id) is not str or not 1 <= len(command_id) <= 64
                                   or not command_id.isprintable()):
        raise ProtocolError("id must be a string of 1-64 printable characters, unique per command")
    return Command(cmd, by, command_id)


#: The payload parser of each input kind (the topic level after the machine id); each takes the
#: payload, the limits and the message's MQTT 5 content type (None when it has none).
PAYLOAD_PARSERS = {"cut": parse_cut_event, "signal": parse_signal, "frame": parse_frame, "cmd": parse_command}


def _f32_header(payload: bytes, size: int, limits: Limits, what: str) -> tuple[str, int, int]:
    """Cut id and offset of a compact chunk or frame, and where the rest starts."""
    if size > limits.max_payload_bytes:
        raise ProtocolError(f"payload of {size} bytes is over the limit of {limits.max_payload_bytes} bytes")
    if size < _F32_HEADER.size:
        raise ProtocolError(f"compact {what} of {size} bytes is shorter than its {_F32_HEADER.size}-byte header")
    offset, n_cut = _F32_HEADER.unpack_from(payload)
    if size - _F32_HEADER.size - n_cut < 0:
        raise ProtocolError(f"compact {what}: its cut id of {n_cut} bytes runs past the payload's end")
    try:
        cut = bytes(payload[_F32_HEADER.size:_F32_HEADER.size + n_cut]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"compact {what}: the cut id is not ASCII") from None
    if not CUT_ID.fullmatch(cut):
        raise ProtocolError(f"cut id {show(cut)} is not 1-64 characters of A-Z a-z 0-9 _ . : + -")
    return cut, offset, _F32_HEADER.size + n_cut


def _f32_chunk(payload: bytes, limits: Limits) -> tuple[str, int, np.ndarray]:
    """Cut id, offset and samples of a compact chunk, checked as strictly as the JSON one."""
    size = memoryview(payload).nbytes
    cut, offset, start = _f32_header(payload, size, limits, "chunk")
    body = size - start
    if body % 4:
        raise ProtocolError(f"compact chunk: {body} bytes of samples is not a whole number of float32 values")
    n = body // 4
    if n == 0:
        raise ProtocolError("samples is empty")
    if n > limits.max_chunk:
        raise ProtocolError(f"samples has {n} values, over the limit of {limits.max_chunk} per chunk")
    samples = np.frombuffer(payload, dtype="<f4", offset=size - body).astype(np.float64)
    finite = np.isfinite(samples)
    if not finite.all():
        raise ProtocolError(f"samples[{int(np.argmin(finite))}] is not a finite number")
    samples.setflags(write=False)
    return cut, offset, samples


def _get(obj: dict, key: str, where: str = "") -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ProtocolError(f"missing key {where}{key!r}") from None


def _cut_id(obj: dict) -> str:
    cut = _get(obj, "cut")
    if type(cut) is not str:
        raise ProtocolError(f"cut must be a string, got {_json_type(cut)}")
    if not CUT_ID.fullmatch(cut):
        raise ProtocolError(f"cut id {show(cut)} is not 1-64 characters of A-Z a-z 0-9 _ . : + -")
    return cut


def _number(value: Any, name: str) -> float:
    # Exact types: bool is an int subclass in Python but not a number on the wire.
    if type(value) not in (int, float):
        raise ProtocolError(f"{name} must be a number, got {_json_type(value)}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise ProtocolError(f"{name} is not a finite number")
    return x


def _positive(value: Any, name: str) -> float:
    x = _number(value, name)
    if x <= 0:
        raise ProtocolError(f"{name} must be positive, got {show(value)}")
    return x


def _timestamp(obj: dict) -> float:
    ts = _number(_get(obj, "ts"), "ts")
    if ts < 0:
        raise ProtocolError(f"ts must be unix seconds (not negative), got {show(ts)}")
    return ts


def _integer(value: Any, name: str) -> int:
    if type(value) is float:
        raise ProtocolError(f"{name} must be an integer, got the fractional-typed number {show(value)}")
    if type(value) is not int:
        raise ProtocolError(f"{name} must be an integer, got {_json_type(value)}")
    if value < 0:
        raise ProtocolError(f"{name} must not be negative, got {show(value)}")
    return value


def _params(value: Any) -> CutParams | None:
    if value is None:  # absent or null: no cutting parameters
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"params must be an object, got {_json_type(value)}")
    material = _get(value, "material", "params.")
    if material not in MATERIAL_NAMES:
        raise ProtocolError(f"params.material must be one of {', '.join(MATERIAL_NAMES)}, got {show(material)}")
    return CutParams(
        doc=_positive(_get(value, "doc", "params."), "params.doc"),
        feed=_positive(_get(value, "feed", "params."), "params.feed"),
        material=material,
    )


def _samples(value: Any, limits: Limits) -> np.ndarray:
    if type(value) is not list:
        raise ProtocolError(f"samples must be an array of numbers, got {_json_type(value)}")
    n = len(value)
    if n == 0:
        raise ProtocolError("samples is empty")
    if n > limits.max_chunk:
        raise ProtocolError(f"samples has {n} values, over the limit of {limits.max_chunk} per chunk")
    # Type check at C speed; the per-element loops below run only to name the culprit.
    if not set(map(type, value)) <= {float, int}:
        i = next(i for i, v in enumerate(value) if type(v) not in (int, float))
        raise ProtocolError(f"samples[{i}] is not a number (got {_json_type(value[i])})")
    try:
        arr = np.array(value, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        i = next(i for i, v in enumerate(value) if not _fits_float(v))
        raise ProtocolError(f"samples[{i}] is not a finite number") from None
    finite = np.isfinite(arr)
    if not finite.all():  # e.g. 1e999, which JSON parsing turns into inf
        raise ProtocolError(f"samples[{int(np.argmin(finite))}] is not a finite number")
    arr.setflags(write=False)
    return arr


def _fits_float(value: float | int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def parse_alarm(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> AlarmMessage:
    """A retained alarm message read back at start-up (written by this or an earlier monitor)."""
    obj = decode_object(payload, limits)

    def optional_number(key: str) -> float | None:
        value = obj.get(key)
        return None if value is None else _number(value, key)

    machine, state, model, cut = obj.get("machine"), obj.get("state"), obj.get("model"), obj.get("cut")
    if type(machine) is not str or machine_id_problem(machine):
        raise ProtocolError(f"alarm machine {show(machine)} is not a machine id")
    if state not in LEVELS:
        raise ProtocolError(f"alarm state must be one of {', '.join(LEVELS)}, got {show(state)}")
    if cut is not None and type(cut) is not str:
        raise ProtocolError(f"alarm cut must be a string or null, got {_json_type(cut)}")
    wear = obj.get("wear")
    if wear is not None and (wear not in LEVELS or wear == SENSOR_FAULT):
        raise ProtocolError(f"alarm wear must be a wear state, got {show(wear)}")
    return AlarmMessage(
        machine=machine,
        state=state,
        since=optional_number("since"),
        cut=cut,
        score=optional_number("score"),
        threshold=optional_number("threshold"),
        model=model if type(model) is str else "",
        wear=wear,
    )
