"""Sparkplug B payloads on the wire: the protobuf encoding of the specification's ``Payload`` and
``Metric`` messages (Sparkplug 3.0.0, ``sparkplug_b.proto``), for the fields an edge node of
scalar metrics uses. Pure.

Written from the specification's payload definition rather than generated: the monitor sends
scalars only, and a few dozen lines of protobuf wire format (varints, length-delimited fields,
little-endian doubles) need neither ``protoc`` nor generated code tied to one protobuf release.
The field numbers, from the specification::

    message Payload { uint64 timestamp = 1; repeated Metric metrics = 2; uint64 seq = 3;
                      string uuid = 4; bytes body = 5; }
    message Metric  { string name = 1; uint64 alias = 2; uint64 timestamp = 3; uint32 datatype = 4;
                      bool is_historical = 5; bool is_transient = 6; bool is_null = 7;
                      ... 10 int_value (uint32), 11 long_value (uint64), 12 float_value (float),
                      13 double_value (double), 14 boolean_value (bool), 15 string_value (string) }

What real hosts' decoders read (``docs/scada.md``): Int32 in ``int_value`` as 32-bit two's
complement; Int64, UInt64 and DateTime (ms) in ``long_value`` (negative Int64 as 64-bit two's
complement); no UInt32, which Eclipse Tahu's decoder reads from the wrong field. :func:`decode`
reads what hosts send (commands), skipping fields it does not know, as protobuf requires.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Union

# Datatypes (Sparkplug 3.0.0, section 6.4.16) the monitor sends or reads in commands.
INT32, INT64, UINT64, DOUBLE, BOOLEAN, STRING, DATETIME = 3, 4, 8, 10, 11, 12, 13
DATATYPE_NAMES = {INT32: "Int32", INT64: "Int64", UINT64: "UInt64", DOUBLE: "Double", BOOLEAN: "Boolean",
                  STRING: "String", DATETIME: "DateTime"}
_INT_FIELD = {INT32: 10}  # the rest of the integers (Int64, UInt64, DateTime) go in long_value (11)
#: The wire type of each value field: int_value, long_value and boolean_value are varints (0),
#: float_value fixed 32 bits (5), double_value fixed 64 bits (1), string_value length-delimited (2).
_VALUE_WIRE = {10: 0, 11: 0, 12: 5, 13: 1, 14: 0, 15: 2}
_U64 = 2**64 - 1
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")

Value = Union[int, float, bool, str, None]


class PayloadError(ValueError):
    """Bytes that are not a Sparkplug B payload; the message says where."""


@dataclass(frozen=True)
class Metric:
    """One metric: ``name`` in births (and data without aliases), ``alias`` when aliases are on;
    ``value`` None is sent as ``is_null``."""

    name: str | None
    datatype: int
    value: Value
    timestamp: int | None = None  # ms since the epoch
    alias: int | None = None


@dataclass(frozen=True)
class Payload:
    timestamp: int | None  # ms since the epoch
    metrics: tuple[Metric, ...]
    seq: int | None = None  # 0-255; None in NDEATH, and in the commands a host sends


# ------------------------------------------------------------------------------------ encoding


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"a varint is unsigned, got {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _uint(field: int, n: int) -> bytes:
    if not 0 <= n <= _U64:
        raise ValueError(f"field {field}: {n} does not fit an unsigned 64-bit integer")
    return _key(field, 0) + _varint(n)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _metric_value(m: Metric) -> bytes:
    t, v = m.datatype, m.value
    if v is None:
        return _uint(7, 1)  # is_null
    if t == BOOLEAN:
        if not isinstance(v, bool):
            raise ValueError(f"metric {m.name}: Boolean needs a bool, got {v!r}")
        return _uint(14, int(v))
    if t == STRING:
        if not isinstance(v, str):
            raise ValueError(f"metric {m.name}: String needs a str, got {v!r}")
        return _bytes(15, v.encode("utf-8"))
    if t == DOUBLE:
        v = float(v)
        if not math.isfinite(v):  # a host shows NaN as a number; the monitor means "undefined"
            return _uint(7, 1)
        return _key(13, 1) + _DOUBLE.pack(v)
    if t in (INT32, INT64, UINT64, DATETIME):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"metric {m.name}: {DATATYPE_NAMES[t]} needs an int, got {v!r}")
        bits = 32 if t == INT32 else 64
        low, high = (0, 2**64 - 1) if t in (UINT64, DATETIME) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not low <= v <= high:
            raise ValueError(f"metric {m.name}: {v} is out of range for {DATATYPE_NAMES[t]}")
        return _uint(_INT_FIELD.get(t, 11), v % 2**bits)  # two's complement in the unsigned field
    raise ValueError(f"metric {m.name}: datatype {t} is not one the monitor sends")


def _metric(m: Metric) -> bytes:
    out = b""
    if m.name is not None:
        out += _bytes(1, m.name.encode("utf-8"))
    if m.alias is not None:
        out += _uint(2, m.alias)
    if m.timestamp is not None:
        out += _uint(3, m.timestamp)
    out += _uint(4, m.datatype)
    return out + _metric_value(m)


def encode(payload: Payload) -> bytes:
    """The protobuf bytes of ``payload``. ValueError names a metric whose value does not fit its
    datatype."""
    out = b""
    if payload.timestamp is not None:
        out += _uint(1, payload.timestamp)
    for m in payload.metrics:
        out += _bytes(2, _metric(m))
    if payload.seq is not None:
        if not 0 <= payload.seq <= 255:
            raise ValueError(f"seq must be 0-255, got {payload.seq}")
        out += _uint(3, payload.seq)
    return out


# ------------------------------------------------------------------------------------ decoding


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        n = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise PayloadError(f"{self.what}: truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise PayloadError(f"{self.what}: varint longer than 10 bytes")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError(f"{self.what}: a field runs past the end")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def fields(self):
        """(field number, wire type, value) of every field: ints for varints, bytes otherwise."""
        while not self.done():
            key = self.varint()
            field, wire = key >> 3, key & 7
            if wire == 0:
                yield field, wire, self.varint()
            elif wire == 1:
                yield field, wire, self.take(8)
            elif wire == 2:
                yield field, wire, self.take(self.varint())
            elif wire == 5:
                yield field, wire, self.take(4)
            else:
                raise PayloadError(f"{self.what}: wire type {wire} is not one Sparkplug uses")


def _signed(n: int, bits: int) -> int:
    n &= (1 << bits) - 1
    return n - (1 << bits) if n >> (bits - 1) else n


def _decode_metric(data: bytes) -> Metric:
    name = alias = timestamp = None
    datatype = 0
    is_null = False
    raw: dict[int, object] = {}
    for field, wire, value in _Reader(data, "metric").fields():
        if field == 1 and wire == 2:
            name = value.decode("utf-8", errors="replace")
        elif field == 2 and wire == 0:
            alias = value
        elif field == 3 and wire == 0:
            timestamp = value
        elif field == 4 and wire == 0:
            datatype = value
        elif field == 7 and wire == 0:
            is_null = bool(value)
        elif _VALUE_WIRE.get(field) == wire and (wire != 1 or len(value) == 8) and (wire != 5 or len(value) == 4):
            raw[field] = value  # a value field of another wire type is not one: skipped, as protobuf does
    value: Value = None
    if not is_null:
        if datatype == BOOLEAN and 14 in raw:
            value = bool(raw[14])
        elif datatype == STRING and 15 in raw:
            value = raw[15].decode("utf-8", errors="replace")  # type: ignore[union-attr]
        elif datatype == DOUBLE and 13 in raw:
            value = _DOUBLE.unpack(raw[13])[0]  # type: ignore[arg-type]
        elif datatype == 9 and 12 in raw:  # Float
            value = _FLOAT.unpack(raw[12])[0]  # type: ignore[arg-type]
        elif datatype in (1, 2, 3) and 10 in raw:  # Int8, Int16, Int32: two's complement of 32 bits
            value = _signed(raw[10], 32)  # type: ignore[arg-type]
        elif datatype in (5, 6, 7) and (10 in raw or 11 in raw):  # unsigned, in either field
            value = raw.get(10, raw.get(11))  # type: ignore[assignment]
        elif datatype == 4 and 11 in raw:
            value = _signed(raw[11], 64)  # type: ignore[arg-type]
        elif datatype in (8, 13) and 11 in raw:
            value = raw[11]  # type: ignore[assignment]
    return Metric(name=name, datatype=datatype, value=value, timestamp=timestamp, alias=alias)


def decode(data: bytes) -> Payload:
    """The payload in ``data`` (metrics of the scalar datatypes; others come with value None).
    Raises :class:`PayloadError` for bytes that are not a protobuf message."""
    timestamp = seq = None
    metrics = []
    for field, wire, value in _Reader(bytes(data), "payload").fields():
        if field == 1 and wire == 0:
            timestamp = value
        elif field == 2 and wire == 2:
            metrics.append(_decode_metric(value))
        elif field == 3 and wire == 0:
            seq = value
    return Payload(timestamp=timestamp, metrics=tuple(metrics), seq=seq)
