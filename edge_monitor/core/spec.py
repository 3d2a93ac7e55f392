"""Settings dataclasses validated from their fields: one implementation for every file and section.

A field's type comes from its annotation; its rules (ranges, choices, a parse hook) from
:func:`setting`. :func:`from_mapping` reads a section of a file (YAML, JSON) into the dataclass;
:func:`check` validates an instance built in Python (:class:`Spec` calls it on construction) by
the same types, ranges and choices. Every problem is a :class:`SpecError` carrying the dotted key
(``alarm.k``, ``broker.tls.key``, ``machines[1]``); callers add the file or option.

Types: ``int`` (an integer, not a bool), ``float`` (an int or float, finite, not a bool), ``bool``,
``str``, ``dict`` (a mapping), ``tuple[X, ...]`` (a non-empty list of X), nested dataclasses (a
mapping; an optional one may also be ``true``, all defaults, or ``false``, none), ``X | None``, and
any other class by ``isinstance``. Pure: no files, no clock.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
import types
import typing
from typing import Any, Callable, ClassVar, Mapping, NamedTuple


class SpecError(ValueError):
    """A setting breaks its rules: ``key`` is its dotted name ("" for the mapping as a whole),
    ``problem`` says what to fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem

    @property
    def top_key(self) -> str:
        """The first level of the key: ``window`` for ``window.length``, ``machines`` for ``machines[1]``."""
        return re.match(r"[^.\[]*", self.key).group()


@dataclasses.dataclass(frozen=True)
class Rules:
    """What a field accepts beyond its type."""

    low: float | None = None  # inclusive bounds of a number (of each item, for a tuple)
    high: float | None = None
    above: float | None = None  # exclusive bounds
    below: float | None = None
    choices: tuple | None = None
    why: str = ""  # what the value means, added to the problem
    # Rules of the file only, not applied to instances built in Python: ``parse`` reads the raw
    # value, given from_mapping's ``context`` (e.g. the file's directory), and raises ValueError
    # with the problem; ``requires`` names a key that must be set (not null) when this one is.
    parse: Callable[[Any, Any], Any] | None = None
    requires: str | None = None
    in_file: bool = True  # False: set in Python only, not a key of the file


NO_RULES = Rules()


def setting(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with :class:`Rules`: ``setting(3, low=1)``, ``setting("auto", choices=(...))``."""
    return dataclasses.field(default=default, metadata={"rules": Rules(**rules)})


class _Field(NamedTuple):
    hint: Any
    rules: Rules
    default: Any  # dataclasses.MISSING: none, or made by a factory
    has_default: bool


class _Reading(NamedTuple):
    context: Any
    required: bool  # every key must be given, in nested sections too


@functools.cache
def _fields(cls: type) -> dict[str, _Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        out[f.name] = _Field(hints[f.name], f.metadata.get("rules", NO_RULES), f.default, has_default)
    return out


def from_mapping(cls: type, data: Any, where: str = "", *, required: bool = False, context: Any = None) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data``, the section ``where`` of a file.
    Unknown keys are errors; missing keys take their defaults unless ``required``."""
    if not isinstance(data, Mapping):
        raise SpecError(where, f"must be a mapping of keys, got {_kind(data)}")
    known = {name: f for name, f in _fields(cls).items() if f.rules.in_file}
    retired = getattr(cls, "retired", {})
    for key in data:
        if key in retired:
            raise SpecError(_join(where, str(key)), f"is no longer a setting: {retired[key]}")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
            raise SpecError(_join(where, str(key)), f"unknown key{hint}")
    for name, f in known.items():  # first: "set but X is not" says more than a problem of the value
        need = f.rules.requires
        if need and data.get(name) is not None and data.get(need) is None:
            raise SpecError(_join(where, name), f"is set but {_join(where, need)} is not")
    reading = _Reading(context, required)
    values = {}
    for name, f in known.items():
        if name in data:
            values[name] = _value(data[name], f, _join(where, name), reading)
        elif f.rules.parse and f.default is not dataclasses.MISSING:
            # read like the file's own value: a default relative path is relative to the file too
            values[name] = _value(f.default, f, _join(where, name), reading)
    missing = [name for name, f in known.items() if name not in data and (required or not f.has_default)]
    if missing:
        raise SpecError(where, f"lacks key(s) {', '.join(missing)}")
    return cls(**values)


def parse_field(cls: type, name: str, value: Any, context: Any = None) -> Any:
    """One field of ``cls`` read as :func:`from_mapping` reads it (e.g. a command-line option)."""
    return _value(value, _fields(cls)[name], name, _Reading(context, False))


def check(instance: Any, where: str = "") -> None:
    """Validate a dataclass instance built in Python, normalising its values in place (numpy
    scalars to int and float, lists to tuples)."""
    for name, f in _fields(type(instance)).items():
        value = getattr(instance, name)
        normal = _value(value, f, _join(where, name), None)
        if normal is not value:
            object.__setattr__(instance, name, normal)  # frozen dataclasses too


class Spec:
    """Base of a settings dataclass: checked on construction, read and written as plain mappings."""

    section: ClassVar[str] = ""  # the dotted key of the section in its file: "alarm", "broker.tls"

    def __post_init__(self) -> None:
        check(self, self.section)

    @classmethod
    def from_dict(cls, data: Any, *, required: bool = False, context: Any = None) -> Any:
        return from_mapping(cls, data, cls.section, required=required, context=context)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # what from_dict reads back

    def error(self, name: str, problem: str) -> SpecError:
        """The error of a rule across fields (``k`` must not exceed ``n``), keyed by ``name``."""
        return SpecError(_join(self.section, name), problem)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _value(value: Any, f: _Field, key: str, reading: _Reading | None) -> Any:
    """A field's value from a file (``reading``) or from an instance (``reading`` is None)."""
    hint = f.hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if reading and dataclasses.is_dataclass(hint) and isinstance(value, bool):
            if not value:
                return None
            value = {}
    if reading and f.rules.parse:
        try:
            value = f.rules.parse(value, reading.context)
        except SpecError:
            raise  # keyed by the hook itself (e.g. an item of a list)
        except ValueError as exc:
            raise SpecError(key, str(exc)) from None
    return _convert(value, hint, f.rules, key, reading)


def _convert(value: Any, hint: Any, rules: Rules, key: str, reading: _Reading | None) -> Any:
    if hint is bool:
        if type(value) is bool:
            return value
        expected = "true or false"
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and _within(value, rules):
            return int(value)
        expected = _describe(int, rules)
    elif hint is float:
        if (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and _within(value, rules)):
            return float(value)
        expected = _describe(float, rules)
    elif hint is str:
        if isinstance(value, str) and (rules.choices is None or value in rules.choices):
            return value
        expected = "a string" if rules.choices is None else f"one of {' | '.join(rules.choices)}"
    elif hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise SpecError(key, f"must be a mapping of keys, got {_kind(value)}")
    elif typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise SpecError(key, f"must be a non-empty list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(v, item, rules, f"{key}[{i}]", reading) for i, v in enumerate(value))
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if reading and dataclasses.is_dataclass(hint):
            return from_mapping(hint, value, key, required=reading.required, context=reading.context)
        expected = f"of type {hint.__name__}"
    else:
        raise TypeError(f"{key}: no rule for values of type {hint}")
    why = f" ({rules.why})" if rules.why else ""
    raise SpecError(key, f"must be {expected}{why}, got {value!r}")


def _within(x: float, r: Rules) -> bool:
    return ((r.low is None or x >= r.low) and (r.high is None or x <= r.high)
            and (r.above is None or x > r.above) and (r.below is None or x < r.below))


def _describe(kind: type, r: Rules) -> str:
    """The range of a number in words: ``an integer 1-65535``, ``a number in [0, 1)``."""
    lo = r.low if r.low is not None else r.above
    hi = r.high if r.high is not None else r.below
    if lo is None and hi is None:
        return "an integer" if kind is int else "a finite number"
    if kind is int and hi is None and r.low in (0, 1):
        return "a positive integer" if r.low else "a non-negative integer"
    if hi is None:
        bound = f"{'at least' if r.low is not None else 'greater than'} {_number(lo)}"
    elif lo is None:
        bound = f"{'at most' if r.high is not None else 'less than'} {_number(hi)}"
    elif r.low is not None and r.high is not None:
        bound = f"{_number(lo)}-{_number(hi)}"
    else:
        left, right = "[" if r.low is not None else "(", "]" if r.high is not None else ")"
        bound = f"in {left}{_number(lo)}, {_number(hi)}{right}"
    return f"{'an integer' if kind is int else 'a number'} {bound}"


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return type(value).__name__
