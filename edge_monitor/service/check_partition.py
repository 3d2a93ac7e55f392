"""``edge-monitor check``: this instance among the others that share its topic root.

Two instances that both watch a machine would score it twice and keep two alarm states for it;
two that share a state file, a metrics port or a broker login would break each other. The check
refuses (FAIL) what it can see of that:

- *configured here*: the other configurations in the same directory (``/etc/edge-monitor/*.yaml``
  for ``edge-monitor@<instance>.service``, beside ``config.yaml``) on the same broker and topic
  root: same instance name, overlapping ``machines``, the same state file, metrics port or broker
  login (the deployed broker takes client ids from user names: one connection per user);
- *announced on the broker*: every instance's retained status names its partition
  (``machines``), online or not, so instances on other boxes are seen too. One that was retired
  keeps its claim until its retained status is cleared; the line says how.

Overlap is decided exactly, and shown by an example id (core/partition.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

from ..core.partition import overlap, partition_of
from .check_result import Result, fail, ok
from .config import Config, ConfigError, load_config

CONFIG_SUFFIXES = (".yaml", ".yml")


def _shown(patterns) -> str:
    patterns = list(patterns)
    return ", ".join(patterns[:6]) + (f" ... ({len(patterns)} in all)" if len(patterns) > 6 else "")


def _same_root(a: Config, b: Config) -> bool:
    return (a.broker.host, a.broker.port, a.topic_root) == (b.broker.host, b.broker.port, b.topic_root)


def _login(config: Config) -> str:
    return f"user {config.broker.username}" if config.broker.username else f"client id {config.broker.client_id}"


def configured_partitions(config: Config, config_path: Path) -> Iterator[Result]:
    """The other instances configured in ``config_path``'s directory."""
    here = config_path.resolve()
    others: list[tuple[Path, Config]] = []
    for path in sorted(here.parent.iterdir()):
        if path.suffix not in CONFIG_SUFFIXES or path.resolve() == here or not path.is_file():
            continue
        try:
            other = load_config(path)
        except ConfigError:
            continue  # not an edge-monitor configuration (or a broken one: its own check says so)
        if _same_root(config, other):
            others.append((path, other))
    if not others:
        return
    problems = []
    for path, other in others:
        name = f"{path.name} (instance {other.instance})"
        if other.instance == config.instance:
            problems.append(f"{name} has the same instance name: their status and errors topics would mix")
        shared = overlap(config.machines, other.machines)
        if shared is not None:
            problems.append(f"{name} watches machines that overlap these ({_shown(other.machines)}), e.g. "
                            f"{shared!r}: it would be scored twice")
        if config.state_file is not None and config.state_file == other.state_file:
            problems.append(f"{name} has the same state_file {config.state_file}")
        if (config.metrics.enabled and other.metrics.enabled and config.metrics.port != 0
                and (config.metrics.address, config.metrics.port) == (other.metrics.address, other.metrics.port)):
            problems.append(f"{name} has the same metrics port {config.metrics.port}")
        for mine, theirs, what in ((config.broker, other.broker, "inputs"),
                                   (config.broker.for_outputs(), other.broker.for_outputs(), "outputs")):
            same = (mine.username == theirs.username) if mine.username else (mine.client_id == theirs.client_id)
            if same:
                problems.append(f"{name} logs in for its {what} as the same {_login(config) if what == 'inputs' else 'user or client id'}: "
                                "the broker keeps one connection per client id (per user on the deployed broker), so they "
                                "would take each other over; give each instance its own (make-users.sh --instance)")
                break
    names = ", ".join(f"{p.name} ({c.instance})" for p, c in others)
    if problems:
        for problem in problems:
            yield fail(f"partition: {problem}")
        return
    yield ok(f"partition: machines {_shown(config.machines)}; no overlap with the other instances configured "
             f"beside it on {config.topic_root}: {names}")


def announced_partitions(config: Config, statuses: Mapping[str, bytes]) -> Iterator[Result]:
    """The partitions the other instances' retained statuses (instance -> payload) announce."""
    claims = {}
    for instance, payload in sorted(statuses.items()):
        patterns = partition_of(payload) if instance != config.instance else None
        if patterns is not None:
            claims[instance] = patterns
    clashes = [(i, p, overlap(config.machines, p)) for i, p in claims.items()]
    clashes = [(i, p, m) for i, p, m in clashes if m is not None]
    root = config.topic_root
    for instance, patterns, machine in clashes:
        yield fail(f"partition: instance {instance} announces machines {_shown(patterns)} on {root} (its retained "
                   f"status), which overlap these, e.g. {machine!r}: it would be scored by both. Give each instance "
                   f"machines of its own; if {instance} is retired, clear its status: "
                   f"mosquitto_pub -r -n -t {root}/_monitor/{instance}/status (with a user that may write it)")
    if not clashes:
        others = f": {', '.join(claims)}" if claims else ""
        yield ok(f"partition: no overlap with the {len(claims)} other instance(s) announced on {root}{others}")
