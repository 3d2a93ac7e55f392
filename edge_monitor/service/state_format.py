"""The state file's bytes: format 3 written; formats 1, 2 and 3 read.

Format 3 is a line naming it, a line of JSON (the *head*: every machine's alarm state, the model,
and an index of the open cuts' records), then each open cut's record: its snapshot
(``MachinePipeline.to_state``) as JSON in which every array is a reference
``{"array": dtype, "shape": [...], "at": byte offset}``, followed by the arrays' bytes
(little-endian). A float64 array whose values are all float32 values (samples that came in the
compact float32 encoding) is stored as float32 and read back as the same float64 values. Each
record carries a CRC-32: a record damaged on disk costs its machine's open cut, not the file.

Format 2 held the same snapshots as JSON with the arrays' bytes in base64. At 1 000 machines that
cost the checkpoint writer ~85 ms of interpreter time every second, while the main loop waited
for the interpreter lock, and 17 MB of writes; format 3 costs ~30 ms and 13 MB, 7.6 MB when the
samples came as float32 (docs/performance.md). Formats 1 and 2 are still read, so an upgrade
keeps every open cut.

Floats outside the arrays must be finite (orjson, which writes the records, writes NaN as null):
the core's snapshots keep anything that may be NaN in arrays (core/snapshot.py).

Reading is defensive: whatever the bytes, :func:`parse` returns what can be used and a problem
per thing it could not, never raises.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..core.snapshot import SnapshotError

FORMAT = 3
MAGIC = b"edge-monitor state "  # then the format's number and a newline
ARRAY_DTYPES = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "bool": np.bool_}
_DTYPE_NAMES = {np.dtype(np.float64): "float64", np.dtype(np.int64): "int64", np.dtype(np.bool_): "bool"}
_LITTLE_ENDIAN = sys.byteorder == "little"
COMPACT_FLOATS = 64  # float64 arrays from this many values on are tried as float32 (below: not worth the check)


@dataclass(frozen=True, eq=False)
class Record:
    """One machine's open cut, encoded: its JSON header and its arrays' bytes, in order."""

    header: bytes
    data: tuple  # bytes-like pieces, in the order of their "at"
    size: int  # bytes in data
    crc: int  # CRC-32 of the header, then the data


def encode_record(state: Any) -> Record:
    """A snapshot (plain data and numpy arrays) as a :class:`Record`; TypeError for anything else
    (an array of another dtype, an object)."""
    pieces: list = []
    at = 0

    def reference(value: Any) -> Any:  # orjson's hook for what it does not write itself
        nonlocal at
        if type(value) is np.ndarray:
            name = _DTYPE_NAMES.get(value.dtype)
            if name is None:
                raise TypeError(f"cannot checkpoint an array of {value.dtype.name}")
            if (name == "float64" and value.size >= COMPACT_FLOATS) or not _LITTLE_ENDIAN or not value.flags.c_contiguous:
                value, name = _stored(value, name)
            pieces.append(value)  # written and checksummed through the buffer protocol: not copied
            ref = {"array": name, "shape": value.shape, "at": at}
            at += value.nbytes
            return ref
        if isinstance(value, np.ndarray):  # a subclass
            return reference(np.asarray(value))
        if isinstance(value, np.generic):  # a numpy scalar (a median, a count): the Python number
            return value.item()
        raise TypeError(f"cannot checkpoint a {type(value).__name__}")

    try:
        header = orjson.dumps(state, default=reference)
    except TypeError:  # what orjson refuses and the json module writes: an int beyond 64 bits, a lone surrogate
        pieces.clear()
        at = 0
        header = json.dumps(state, default=reference, separators=(",", ":")).encode("utf-8", "surrogatepass")
    crc = zlib.crc32(header)
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return Record(header, tuple(pieces), at, crc)


def _stored(value: np.ndarray, name: str) -> tuple[np.ndarray, str]:
    """The array as the file stores it: C order, little-endian, and float32 when every value comes
    back with the same bits (NaN and -0.0 included)."""
    value = np.ascontiguousarray(value)
    if name == "float64":
        with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32's range: not exact, kept float64
            narrow = value.astype(np.float32)
        if narrow.astype(np.float64).tobytes() == value.tobytes():
            value, name = narrow, "float32"
    if not _LITTLE_ENDIAN:
        value = value.astype(value.dtype.newbyteorder("<"))
    return value, name


def compose(head: dict, records: dict[str, Record]) -> list:
    """The file's bytes, in pieces (written one after another, never joined: at 1 000 machines the
    file is 8-13 MB). ``head`` holds what the file says besides the open cuts (format, model, the
    alarm states, ...): it is written as JSON, with the index of ``records`` added."""
    index = [[machine, len(r.header), r.size, r.crc] for machine, r in records.items()]
    head = {**head, "format": FORMAT, "streams": index}
    try:  # orjson: a tenth of the json module's time for 1 000 alarm states (a NaN, which no alarm
        # state holds, would be written as null and read back as no value, where the json module
        # refused to write the file at all)
        text = orjson.dumps(head)
    except TypeError:  # an int beyond 64 bits, a lone surrogate: not from the monitor, but written all the same
        text = json.dumps(head).encode("utf-8", "surrogatepass")
    parts: list = [MAGIC + b"%d\n" % FORMAT, text + b"\n"]
    for record in records.values():
        parts.append(record.header)
        parts.extend(record.data)
    return parts


@dataclass
class Contents:
    """What a state file holds: its head (``format``, ``model``, ``machines``, ...: as written),
    the open cuts' snapshots by machine (arrays decoded), and what could not be read."""

    head: dict | None = None  # None: not a state file this version reads
    streams: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # without the file's name; the caller adds it


def parse(data: bytes) -> Contents:
    """The contents of a state file of format 1, 2 or 3; never raises."""
    if data.startswith(MAGIC):
        return _parse_binary(data)
    try:
        head = json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        return Contents(problems=[f"not a state file (not JSON: {str(exc)[:200]})"])
    if not isinstance(head, dict) or head.get("format") not in (1, 2) or not isinstance(head.get("machines"), dict):
        return Contents(problems=[f"not a state file of format 1, 2 or {FORMAT}"])
    contents = Contents(head=head)
    streams = head.pop("streams", {})
    if not isinstance(streams, dict):
        contents.problems.append("'streams' is not an object; open cuts start afresh")
        return contents
    for machine, state in streams.items():
        try:
            contents.streams[str(machine)] = decode_json_arrays(state, f"machine {machine}")
        except (SnapshotError, RecursionError, ValueError, TypeError, OverflowError) as exc:
            contents.problems.append(f"open cut of {str(machine)[:64]!r} ignored ({exc})")
    return contents


def _parse_binary(data: bytes) -> Contents:
    first = data.find(b"\n")
    second = data.find(b"\n", first + 1) if first >= 0 else -1
    if data[len(MAGIC):first] != b"%d" % FORMAT:
        version = data[len(MAGIC):first][:20].decode("ascii", "replace") if first >= 0 else "?"
        return Contents(problems=[f"a state file of format {version!r}, which this version does not read "
                                  f"(it reads 1, 2 and {FORMAT})"])
    if second < 0:
        return Contents(problems=["not a state file: truncated in its first lines"])
    try:
        head = json.loads(data[first + 1:second])
    except (ValueError, RecursionError) as exc:
        return Contents(problems=[f"its head is not JSON ({str(exc)[:200]})"])
    if not isinstance(head, dict) or not isinstance(head.get("machines"), dict):
        return Contents(problems=[f"not a state file of format 1, 2 or {FORMAT}"])
    contents = Contents(head=head)
    index = head.pop("streams", None)
    if not isinstance(index, list) or not all(
        isinstance(e, list) and len(e) == 4 and type(e[0]) is str and all(type(n) is int and n >= 0 for n in e[1:])
        for e in index
    ):
        contents.problems.append("its index of open cuts is not [machine, header bytes, data bytes, crc] each; "
                                 "open cuts start afresh")
        return contents
    at = second + 1
    for machine, header_size, data_size, crc in index:
        end = at + header_size + data_size
        record = data[at:end]
        at = end
        name = f"open cut of {machine[:64]!r}"
        if len(record) < header_size + data_size:
            contents.problems.append(f"{name} ignored (the file ends within it)")
            continue
        if zlib.crc32(record) != crc:
            contents.problems.append(f"{name} ignored (its bytes are damaged: CRC-32 mismatch)")
            continue
        try:
            header = json.loads(record[:header_size])
            contents.streams[machine] = _decode_references(header, memoryview(record)[header_size:],
                                                           f"machine {machine}")
        except (SnapshotError, RecursionError, ValueError, TypeError, OverflowError) as exc:
            contents.problems.append(f"{name} ignored ({str(exc)[:300]})")
    if at < len(data):  # (a file that ends too soon was said per record)
        contents.problems.append(f"{len(data) - at} bytes after the last record, ignored")
    return contents


def _decode_references(value: Any, data: memoryview, where: str) -> Any:
    if isinstance(value, dict):
        if "array" in value and set(value) == {"array", "shape", "at"}:
            dtype, shape, at = value["array"], value["shape"], value["at"]
            if type(at) is not int or at < 0:
                raise SnapshotError(f"{where}: not an array")
            return _array(dtype, shape, data, at, where)
        return {k: _decode_references(v, data, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_references(v, data, where) for v in value]
    return value


def _array(dtype: Any, shape: Any, data: bytes | memoryview, at: int, where: str) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` at byte ``at`` of ``data``; float32 comes back as float64."""
    if type(dtype) is not str or dtype not in ARRAY_DTYPES or not isinstance(shape, list) or len(shape) > 3 or any(
        type(n) is not int or not 0 <= n < 2**31 for n in shape
    ):
        raise SnapshotError(f"{where}: not an array")
    kind = np.dtype(ARRAY_DTYPES[dtype]).newbyteorder("<")
    size = kind.itemsize * math.prod(shape)
    if at + size > len(data):
        raise SnapshotError(f"{where}: {dtype} array of shape {shape} beyond the record's {len(data)} bytes")
    if dtype == "bool":  # any byte but 0 is True, as a bool: an edited file's 2 must not count as 2
        return np.frombuffer(data, dtype=np.uint8, count=math.prod(shape), offset=at).reshape(shape) != 0
    values = np.frombuffer(data, dtype=kind, count=math.prod(shape), offset=at).reshape(shape)
    return values.astype(np.float64 if dtype == "float32" else ARRAY_DTYPES[dtype])


def decode_json_arrays(value: Any, where: str = "snapshot") -> Any:
    """A format 2 snapshot's arrays ({"array": dtype, "shape", "data": base64}) as numpy arrays;
    :class:`SnapshotError` for an array that does not decode."""
    if isinstance(value, dict):
        if "array" in value and set(value) == {"array", "shape", "data"}:
            data = value["data"]
            if not isinstance(data, str) or value["array"] == "float32":
                raise SnapshotError(f"{where}: not an array")
            try:
                raw = base64.b64decode(data.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError) as exc:
                raise SnapshotError(f"{where}: the array's data is not base64 ({exc})") from None
            array = _array(value["array"], value["shape"], raw, 0, where)
            if array.nbytes != len(raw):
                raise SnapshotError(f"{where}: {len(raw)} bytes do not hold a {value['array']} array of shape "
                                    f"{value['shape']}")
            return array
        return {k: decode_json_arrays(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [decode_json_arrays(v, where) for v in value]
    return value
