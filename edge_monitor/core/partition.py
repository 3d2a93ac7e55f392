"""The machines split between monitor instances (``machines:`` in each instance's configuration).

Several instances may share one topic root, each owning a partition of the machines: on one box
(``edge-monitor@.service``) to spread the work over cores, or on several. Two questions,
answered here without I/O:

- *Do two partitions overlap?* (:func:`overlap`): a machine in both would be scored twice, with
  two alarm states. The answer is an example id, so that the refusal can name it. Patterns are
  shell-style with ``*`` and ``?`` only (the configuration allows nothing else), over the machine
  id alphabet, so the product of the two patterns decides it exactly.
- *Whose is a machine this instance does not watch?* (:class:`Siblings`): every instance receives
  every machine's inputs (``topics.inbound_filters``), and the other instances on the root announce
  their patterns in their retained status; inputs of a machine another
  instance owns are none of this one's business (counted, not reported as errors), and those of a
  machine no instance owns are reported as before.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import deque
from typing import Iterable, Sequence


WILDCARDS = frozenset("*?")
PATTERN = re.compile(r"[A-Za-z0-9_*?-]{1,64}")  # a machine id, or a shell pattern of them (config: machines)
FILLER = "x"  # a character every machine id may hold, for the example an overlap shows


def matches(patterns: Iterable[str], machine: str) -> bool:
    return any(fnmatch.fnmatchcase(machine, p) for p in patterns)


def overlap(a: Sequence[str], b: Sequence[str]) -> str | None:
    """A machine id matched by a pattern of ``a`` and one of ``b`` (for the first pair that has
    one), or None when no machine id is matched by both."""
    for p in a:
        for q in b:
            found = _common(p, q)
            if found is not None:
                return found or FILLER  # "" when both are stars only: they share every id
    return None


def _common(p: str, q: str) -> str | None:
    """A string both shell patterns (``*``, ``?``, literals) match, or None. A search over pairs of
    positions: a star may match nothing (move on) or one more character (stay)."""
    start, goal = (0, 0), (len(p), len(q))
    came: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    todo = deque([start])
    while todo:
        i, j = here = todo.popleft()
        if here == goal:
            out = []
            while came[here] is not None:
                here, char = came[here]
                out.append(char)
            return "".join(reversed(out))
        steps = []
        if i < len(p) and p[i] == "*":
            steps.append(((i + 1, j), ""))
        if j < len(q) and q[j] == "*":
            steps.append(((i, j + 1), ""))
        if i < len(p) and j < len(q):
            a, b = p[i], q[j]
            literal = [c for c in (a, b) if c not in WILDCARDS]
            if len(set(literal)) <= 1:  # both take the same character
                char = literal[0] if literal else FILLER
                steps.append(((i if a == "*" else i + 1, j if b == "*" else j + 1), char))
        for nxt, char in steps:
            if nxt not in came:
                came[nxt] = (here, char)
                todo.append(nxt)
    return None


def partition_of(status: bytes) -> tuple[str, ...] | None:
    """The ``machines`` an instance's status message (``R/_monitor/<instance>/status``) says it
    watches, or None when the payload says nothing usable (an older version's status, another
    program's message): such an instance is taken to own nothing."""
    try:
        machines = json.loads(status).get("machines")
    except (ValueError, AttributeError):
        return None
    if not isinstance(machines, list) or not machines or len(machines) > 100_000:
        return None
    if not all(isinstance(m, str) and PATTERN.fullmatch(m) for m in machines):
        return None
    return tuple(machines)


MAX_REMEMBERED = 65536  # machine ids whose owner Siblings keeps


class Siblings:
    """The partitions of the other instances on the topic root, from their retained status
    messages (``machines``). Written by one thread (the network thread that delivers them), read
    by any: each update binds a new pair of dicts, so that a reader sees the old one or the new
    one whole. Who owns a machine is remembered until the next update: it is asked for every
    input of a machine this instance does not watch (about half of all inputs with two instances)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._state: tuple[dict[str, tuple[str, ...]], dict[str, str | None]] = ({}, {})

    def update(self, instance: str, patterns: Sequence[str] | None) -> None:
        """``instance`` watches ``patterns`` (None: it is gone, its status cleared)."""
        if instance == self.instance:
            return
        known = dict(self._state[0])
        if patterns is None:
            known.pop(instance, None)
        else:
            known[instance] = tuple(patterns)
        self._state = (known, {})

    def owner(self, machine: str) -> str | None:
        """Another instance whose partition holds ``machine`` (the first by name), or None."""
        patterns, owners = self._state
        if machine in owners:
            return owners[machine]
        found = next((instance for instance, p in sorted(patterns.items()) if matches(p, machine)), None)
        if len(owners) < MAX_REMEMBERED:  # ids come from inputs: made-up ones must not grow it forever
            owners[machine] = found
        return found

    def partitions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._state[0])
