"""The declarative validator (edge_monitor.core.spec): types, ranges, keys, sections and hooks, on
small settings classes of its own."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pytest

from edge_monitor.core.spec import (
    Spec,
    SpecError,
    check,
    from_mapping,
    parse_field,
    setting,
)


@dataclass(frozen=True)
class Inner(Spec):
    section = "outer.inner"
    first: str | None = None
    second: str | None = setting(None, requires="first")
    level: str = setting("low", choices=("low", "high"))


def _upper(value, context):
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    return f"{context}{value.upper()}"


@dataclass(frozen=True)
class Outer(Spec):
    section = "outer"
    count: int = setting(3, low=1, high=10, why="windows per batch")
    ratio: float = setting(0.5, low=0.0, below=1.0)
    rate: float = setting(1.0, above=0.0)
    offset: int = setting(0, low=0)
    scale: float = 1.0
    enabled: bool = False
    name: str = setting("a", parse=_upper)
    sizes: tuple[int, ...] = setting((1, 2), low=1)
    inner: Inner = field(default_factory=Inner)
    extra: Inner | None = None
    internal: int = setting(7, in_file=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.offset > self.count:
            raise self.error("offset", f"must not exceed outer.count ({self.count}), got {self.offset}")


@dataclass
class Record:
    """Not a Spec: read with from_mapping only, like bundle.json."""

    label: str
    values: dict
    inner: Inner
    version: int = setting(1, low=1)


def problem(data, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        from_mapping(Outer, data, "outer", **kw)
    return info.value


def test_defaults_fill_missing_keys_and_hooks_read_defaults_too():
    got = from_mapping(Outer, {}, "outer", context="ctx:")
    assert got == Outer(name="ctx:A")  # the default went through the hook, like a value of the file
    assert got.inner == Inner() and got.extra is None and got.internal == 7


@pytest.mark.parametrize(
    "data, key, message",
    [
        ({"count": "3"}, "outer.count", "must be an integer 1-10 (windows per batch), got '3'"),
        ({"count": 3.0}, "outer.count", "must be an integer 1-10"),
        ({"count": True}, "outer.count", "got True"),  # a bool is no integer
        ({"count": 11}, "outer.count", "got 11"),
        ({"count": 0}, "outer.count", "got 0"),
        ({"offset": -1}, "outer.offset", "must be a non-negative integer, got -1"),
        ({"ratio": 1.0}, "outer.ratio", "must be a number in [0, 1), got 1.0"),
        ({"ratio": -0.1}, "outer.ratio", "must be a number in [0, 1)"),
        ({"ratio": False}, "outer.ratio", "got False"),  # nor is it a number
        ({"rate": 0}, "outer.rate", "must be a number greater than 0, got 0"),
        ({"scale": float("inf")}, "outer.scale", "must be a finite number, got inf"),
        ({"scale": float("nan")}, "outer.scale", "must be a finite number, got nan"),
        ({"scale": "1"}, "outer.scale", "must be a finite number, got '1'"),
        ({"enabled": "yes"}, "outer.enabled", "must be true or false, got 'yes'"),
        ({"enabled": 1}, "outer.enabled", "must be true or false, got 1"),
        ({"sizes": []}, "outer.sizes", "must be a non-empty list, got []"),
        ({"sizes": "12"}, "outer.sizes", "must be a non-empty list, got '12'"),
        ({"sizes": [1, 0]}, "outer.sizes[1]", "must be a positive integer, got 0"),
        ({"sizes": [1, "2"]}, "outer.sizes[1]", "got '2'"),
        ({"inner": {"level": "mid"}}, "outer.inner.level", "must be one of low | high, got 'mid'"),
        ({"inner": {"level": 3}}, "outer.inner.level", "got 3"),
        ({"inner": [1]}, "outer.inner", "must be a mapping of keys, got a list"),
        ({"inner": {"levl": "low"}}, "outer.inner.levl", "unknown key (did you mean 'level'?)"),
        ({"extra": {"second": "x"}}, "outer.extra.second", "is set but outer.extra.first is not"),
        ({"extra": "yes"}, "outer.extra", "must be a mapping of keys, got the text 'yes'"),
        ({"name": 5}, "outer.name", "must be text, got 5"),  # the hook's own problem, keyed by the field
        ({"colour": "red"}, "outer.colour", "unknown key; known keys: count, ratio, rate, offset, scale"),
        ({"internal": 1}, "outer.internal", "unknown key"),  # set in Python only
        ({"offset": 5}, "outer.offset", "must not exceed outer.count (3), got 5"),  # a rule across fields
    ],
)
def test_each_problem_names_the_dotted_key(data, key, message):
    error = problem(data, context="")
    assert error.key == key
    assert message in error.problem
    assert str(error) == f"{key}: {error.problem}"


def test_values_are_converted():
    got = from_mapping(Outer, {"count": 4, "ratio": 0, "scale": 2, "enabled": True, "sizes": [3, 4],
                               "name": "b", "extra": {"first": "f", "second": "s"}}, context="")
    assert (got.count, got.ratio, got.scale, got.enabled, got.sizes, got.name) == (4, 0.0, 2.0, True, (3, 4), "B")
    assert type(got.ratio) is float and type(got.scale) is float
    assert got.extra == Inner(first="f", second="s")


def test_an_optional_section_may_be_switched_on_or_off():
    assert from_mapping(Outer, {"extra": True}, context="").extra == Inner()
    assert from_mapping(Outer, {"extra": False}, context="").extra is None
    assert from_mapping(Outer, {"extra": None}, context="").extra is None


def test_a_hook_may_key_its_own_problem():
    def items(value, _context):
        raise SpecError("outer.name[2]", "is not a letter")

    @dataclass(frozen=True)
    class Hooked(Spec):
        name: str = setting("a", parse=items)

    with pytest.raises(SpecError) as info:
        from_mapping(Hooked, {"name": "ab1"})
    assert info.value.key == "outer.name[2]"


def test_the_top_level_and_required_keys():
    with pytest.raises(SpecError) as info:
        from_mapping(Outer, ["a"])
    assert (info.value.key, info.value.problem) == ("", "must be a mapping of keys, got a list")
    with pytest.raises(SpecError) as info:
        from_mapping(Record, {"label": "x", "inner": {}})  # no default: always required
    assert (info.value.key, info.value.problem) == ("", "lacks key(s) values")
    with pytest.raises(SpecError) as info:  # required: defaults are not enough, in nested sections too
        from_mapping(Record, {"label": "x", "values": {}, "inner": {"level": "low"}}, required=True)
    assert str(info.value) == "inner: lacks key(s) first, second"
    with pytest.raises(SpecError, match="inner.level: must be one of"):  # a wrong value is named first
        from_mapping(Record, {"label": "x", "inner": {"level": "mid"}}, required=True)
    record = from_mapping(Record, {"label": "x", "values": {"a": 1}, "inner": {}})
    assert record == Record("x", {"a": 1}, Inner(), 1)
    with pytest.raises(SpecError, match=re.escape("values: must be a mapping of keys, got nothing (null)")):
        from_mapping(Record, {"label": "x", "values": None, "inner": {}})


def test_construction_in_python_applies_the_same_rules():
    for kwargs, key in [({"count": 0}, "outer.count"), ({"count": True}, "outer.count"),
                        ({"sizes": ()}, "outer.sizes"), ({"inner": {"level": "low"}}, "outer.inner"),
                        ({"internal": 1.5}, "outer.internal"), ({"offset": 4}, "outer.offset")]:
        with pytest.raises(SpecError) as info:
            Outer(**kwargs)
        assert info.value.key == key, kwargs
    # hooks and requirements are rules of the file: Python values are taken as they are (typed)
    assert Outer(name="b").name == "b" and Inner(second="s").second == "s"
    with pytest.raises(SpecError, match="outer.name: must be a string, got 5"):
        Outer(name=5)


def test_construction_normalises_numpy_scalars_and_lists():
    got = Outer(count=np.int64(4), ratio=np.float32(0.25), sizes=[np.int64(2), 3])
    assert type(got.count) is int and type(got.ratio) is float and got.sizes == (2, 3)


def test_round_trip_through_plain_data():
    value = Outer(count=5, sizes=(4,), name="A", extra=Inner(first="f"))
    data = json.loads(json.dumps(value.to_dict()))
    assert data["sizes"] == [4] and data["extra"] == {"first": "f", "second": None, "level": "low"}
    del data["internal"]  # not a key of the file
    assert Outer.from_dict(data, context="") == value


def test_parse_field_reads_one_value_like_the_file():
    assert parse_field(Outer, "name", "x", context="cli:") == "cli:X"
    assert parse_field(Outer, "count", 2) == 2
    with pytest.raises(SpecError) as info:
        parse_field(Outer, "count", 0)
    assert (info.value.key, info.value.top_key) == ("count", "count")


def test_top_key_is_the_first_level():
    assert SpecError("window.length", "x").top_key == "window"
    assert SpecError("machines[1]", "x").top_key == "machines"
    assert SpecError("", "x").top_key == ""


def test_check_validates_an_instance_in_place():
    record = Record("x", {}, Inner(), version=np.int64(2))
    check(record)
    assert type(record.version) is int
    record.version = 0
    with pytest.raises(SpecError, match="record.version: must be a positive integer, got 0"):
        check(record, "record")
