"""JSON payloads of the wire protocol, decoded strictly: size checked before decoding, strict
UTF-8, no NaN or Infinity literals, no duplicate keys, and the fast parser's result taken only
where it provably equals the strict one's. Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .topics import ProtocolError, show


def media_type(content_type: str) -> str:
    """``application/vnd.x+f32le; v=1`` → ``application/vnd.x+f32le`` (media types are case-blind)."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_object(payload: bytes, max_bytes: int, content_type: str | None = None,
                  binary_types: tuple[str, ...] = ()) -> dict:
    """A JSON object from raw payload bytes: at most ``max_bytes``, strict UTF-8, no NaN or
    Infinity literals, no duplicate keys; a binary content type of ``binary_types`` is refused.

    Two parsers, one outcome. orjson parses a chunk of 64 samples about 8 times faster than the
    standard library (whose float parsing was the largest cost of an input message, see
    docs/performance.md), but it keeps the last of repeated keys. So its result is taken only when
    the payload provably has none: no quote is followed by whitespace (so every key's closing
    quote is followed by its colon, and each key written yields one ``":``), the count of ``":``
    in the bytes equals the count of keys parsed (a repeated key, or ``":`` inside a string, makes
    them differ), and no object holds an integer beyond 64 bits (see :func:`_keys`). Anything else
    (a repeated key, NaN, whitespace after a quote, bad UTF-8) goes to the standard library's
    strict parse, which accepts or names the problem as before."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if content_type is not None and media_type(content_type) in binary_types:
        raise ProtocolError(f"content type {media_type(content_type)} is for signal data only; send this message as JSON")
    size = memoryview(payload).nbytes
    if size > max_bytes:
        raise ProtocolError(f"payload of {size} bytes is over the limit of {max_bytes} bytes")
    if size == 0:
        raise ProtocolError("payload is empty")
    try:
        fast = orjson.loads(payload)
        raw = bytes(payload)
        if type(fast) is dict and not _QUOTE_THEN_SPACE.search(raw) and _keys(fast) == raw.count(b'":'):
            return fast
    except (orjson.JSONDecodeError, RecursionError):
        pass
    return _strict_object(payload)


def _keys(value: Any) -> int:
    """Keys in all objects of a parsed JSON value; -1 when an object holds a whole number of 2**63
    or more as a float (it may have been an integer literal, which orjson makes a float: only the
    strict parser keeps it an integer, and an offset must be refused as absurd, not as fractional).
    In arrays such numbers are left as floats: the protocol's arrays are of samples, taken as
    float64 either way."""
    if type(value) is dict:
        n = len(value)
        for v in value.values():
            kind = type(v)
            if kind is float and abs(v) >= _LONG and v.is_integer():
                return -1
            if kind is dict or kind is list:
                inner = _keys(v)
                if inner < 0:
                    return -1
                n += inner
        return n
    if type(value) is list and not set(map(type, value)) <= _SCALARS:
        n = 0
        for v in value:
            if type(v) is dict or type(v) is list:
                inner = _keys(v)
                if inner < 0:
                    return -1
                n += inner
        return n
    return 0


_SCALARS = {float, int, str, bool, type(None)}
# A closing quote followed by whitespace: a key may then be followed by its colon only after it.
_QUOTE_THEN_SPACE = re.compile(rb'"[ \t\r\n]')
_LONG = 2.0**63


def _strict_object(payload: bytes) -> dict:
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8 (bad byte at position {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ProtocolError("payload is not usable JSON: nested too deeply") from None
    except ValueError:  # an integer literal longer than Python's int conversion limit
        raise ProtocolError("payload is not usable JSON: a number has too many digits") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload must be a JSON object, got {json_type(obj)}")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"payload holds {name}, which is not valid JSON; send only finite numbers")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a repeated key is ambiguous: refuse rather than keep the last
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ProtocolError(f"key {show(key)} appears twice in one object")
            seen.add(key)
    return obj


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
