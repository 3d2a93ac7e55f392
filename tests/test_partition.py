"""Machines split between monitor instances: overlap of two partitions, decided exactly and shown
by an example id; the partition an instance's status announces; whose a machine is."""

from __future__ import annotations

import fnmatch
import itertools
import json
import random

import pytest

from edge_monitor.core.partition import Siblings, matches, overlap, partition_of


@pytest.mark.parametrize("a, b, shared", [
    (["line1-*"], ["line2-*"], None),
    (["line1-*"], ["*-07"], "line1-07"),
    (["mill-0?"], ["mill-1?"], None),
    (["mill-01", "mill-02"], ["mill-03", "mill-02"], "mill-02"),
    (["*"], ["press-4"], "press-4"),
    (["*"], ["*"], "x"),  # every id: shown by one
    (["a*b"], ["*c"], None),
    (["m?"], ["m1*"], "m1"),
])
def test_overlap_names_a_machine_both_partitions_hold(a, b, shared):
    found = overlap(a, b)
    assert found == shared
    if found is not None:
        assert matches(a, found) and matches(b, found)


def test_overlap_agrees_with_matching_every_short_id():
    """Against brute force: random patterns over a small alphabet, every id up to 7 characters."""
    rng = random.Random(7)
    alphabet = "ab-"
    ids = ["".join(t) for n in range(1, 8) for t in itertools.product(alphabet + "x", repeat=n)]
    for _ in range(300):
        p, q = ("".join(rng.choice(alphabet + "*?") for _ in range(rng.randint(1, 4))) for _ in range(2))
        brute = any(fnmatch.fnmatchcase(m, p) and fnmatch.fnmatchcase(m, q) for m in ids)
        found = overlap([p], [q])
        assert (found is not None) == brute, (p, q, found)
        if found is not None:
            assert fnmatch.fnmatchcase(found, p) and fnmatch.fnmatchcase(found, q), (p, q, found)


def test_the_partition_an_instance_announces():
    status = {"state": "online", "machines": ["line1-*", "press-4"]}
    assert partition_of(json.dumps(status).encode()) == ("line1-*", "press-4")
    # an older version's status, someone else's message, a bad pattern: the instance owns nothing
    for payload in (b"", b"not json", b"[1]", json.dumps({"state": "online"}).encode(),
                    json.dumps({"machines": ["a/b"]}).encode(), json.dumps({"machines": []}).encode()):
        assert partition_of(payload) is None


def test_whose_machine_it_is():
    siblings = Siblings("edge-a")
    siblings.update("edge-a", ["*"])  # itself: not a sibling
    siblings.update("edge-b", ["line2-*"])
    siblings.update("edge-c", ["press-?"])
    assert siblings.owner("line2-07") == "edge-b" and siblings.owner("press-4") == "edge-c"
    assert siblings.owner("line3-01") is None
    siblings.update("edge-b", None)  # its status cleared: gone
    assert siblings.owner("line2-07") is None
    assert siblings.partitions() == {"edge-c": ("press-?",)}


def test_an_owner_is_remembered_until_the_partitions_change():
    siblings = Siblings("a")
    siblings.update("b", ["mill-0*"])
    assert siblings.owner("mill-01") == "b" and siblings.owner("mill-01") == "b"
    siblings.update("c", ["mill-01"])
    assert siblings.owner("mill-01") == "b"  # the first by name
    siblings.update("b", ["line2-*"])
    assert siblings.owner("mill-01") == "c"
    siblings.update("c", None)
    assert siblings.owner("mill-01") is None
