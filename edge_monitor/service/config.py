"""The daemon's configuration: a YAML file (``config.yaml``), validated at start.

Every problem is a :class:`ConfigError` naming the file and the key, e.g.
``config.yaml: broker.port: must be an integer 1-65535, got 'abc'``. Unknown keys are errors too
(a typo would otherwise silently fall back to a default), with a "did you mean" when one is close.
Missing keys take the defaults below, so an empty file is a valid configuration.

Relative paths in the file are relative to the file's directory (the daemon may run from any
working directory under a service manager); paths given on the command line are relative to the
working directory, as usual. Command-line overrides (``--broker HOST:PORT``, ``--bundle PATH``,
``--root R``, ``--instance NAME``, ``--metrics ADDRESS:PORT|PORT|off``) replace the file's values
and are validated the same way.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core.alarm import AlarmPolicy
from ..core.inbound import Limits
from ..core.outbound import SCORE_FORMS
from ..core.partition import PATTERN, matches
from ..core.spec import Spec, SpecError, from_mapping, parse_field, setting
from ..core.topics import instance_problem, validate_root
from ..model.runtime import DEVICE_PREFERENCES as DEVICES  # no TensorFlow
from ..model.runtime import RUNTIMES
from . import parsers
from .mqtt import BrokerSettings, parse_address
from .parsers import local_path
from .sparkplug import SparkplugSettings

LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")  # auto: console on a terminal, else json
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
#: Machine selectors: machine ids, or shell-style patterns of them with ``*`` and ``?``.
MACHINE_PATTERN = PATTERN  # core/partition.py
#: Command-line overrides and the setting each replaces (``broker`` is HOST:PORT).
OVERRIDES: dict[str, str] = {"broker": "broker", "bundle": "bundle", "root": "topic_root", "instance": "instance",
                             "metrics": "metrics"}


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file (or option) and the key."""


def _root(value: Any, _base: Path) -> str:
    return validate_root(value)


def _instance(value: Any, _base: Path) -> str:
    problem = instance_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _machines(value: Any, _base: Path) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f'must be a machine id, a pattern like "mill-*" or "*", or a list of them, got {value!r}')
    for i, item in enumerate(items):
        if not isinstance(item, str) or not MACHINE_PATTERN.fullmatch(item):
            key = "machines" if isinstance(value, str) else f"machines[{i}]"
            raise SpecError(key, f"{item!r} is not 1-64 characters of A-Z a-z 0-9 _ - (and * ? in patterns)")
    return tuple(items)


def _lower(value: Any, _base: Path) -> Any:
    return value.lower() if isinstance(value, str) else value


@dataclass(frozen=True)
class Batching(Spec):
    section = "batching"
    max_batch: int = setting(256, low=1, high=65536)  # windows per inference call, across all machines
    max_wait_ms: float = setting(50.0, low=0.0, high=60_000.0)  # longest a window waits for its batch to fill, from its input's arrival


@dataclass(frozen=True)
class Delivery(Spec):
    """At least once (service/checkpoint.py): how often a checkpoint covers what was received, and
    how much input may wait in the monitor rather than at the broker."""

    section = "delivery"
    checkpoint_interval_ms: float = setting(1000.0, low=10.0, high=60_000.0)  # inputs are acknowledged this late
    # The machines are snapshotted in this many groups, one group per checkpoint: each checkpoint
    # takes the main loop 1/groups as long (hundreds of machines: docs/deploy.md, "Sizing"), and a
    # machine's inputs are acknowledged up to groups × the interval late.
    checkpoint_groups: int = setting(1, low=1, high=60)
    # Inputs the broker may send before the monitor acknowledges: at least the input rate times the
    # checkpoint interval times the groups, twice over (docs/deploy.md, "Sizing"); MQTT caps it at 65535.
    receive_maximum: int = setting(5000, low=1, high=65535)
    max_queued_inputs: int = setting(5000, low=1, high=1_000_000)  # beyond this, inputs wait at the broker
    degraded_lag_s: float = setting(10.0, low=0.1)  # the status says degraded while inputs wait this long
    # Connected but its own ping not echoed this long: the MQTT network thread is stuck, and the
    # process exits (code 1) for systemd to restart it.
    stall_timeout_s: float = setting(60.0, low=1.0)


@dataclass(frozen=True)
class OutputQos(Spec):
    section = "qos"
    # QoS 1: a score published while the broker restarts is kept and sent again (QoS 0: dropped, counted)
    score: int = setting(1, low=0, high=2)
    alarm: int = setting(1, low=0, high=2)
    summary: int = setting(1, low=0, high=2)
    # 0: published at once, also when QoS 1 results wait for the broker's acknowledgements behind a
    # backlog (the status must say degraded then); retained and refreshed, and the will is QoS 1
    status: int = setting(0, low=0, high=2)


@dataclass(frozen=True)
class Outputs(Spec):
    """What is published per scored window (docs/protocol.md, "Score")."""

    section = "outputs"
    # window: R/<machine>/score, one message per window; batch: R/<machine>/scores, the windows of a
    # machine scored together in one message (a quarter of the messages at 250-sample frames); off:
    # none (alarms and summaries only)
    scores: str = setting("window", choices=SCORE_FORMS, parse=_lower)


@dataclass(frozen=True)
class ErrorsRate(Spec):
    """Token bucket for the errors topic: a flood of bad input is counted and logged, and only
    ``max_per_second`` of it (after a burst of ``burst``) echoed to MQTT."""

    section = "errors"
    max_per_second: float = setting(5.0, low=0.01)
    burst: int = setting(20, low=1, high=10_000)


@dataclass(frozen=True)
class Logging(Spec):
    section = "logging"
    format: str = setting("auto", choices=LOG_FORMATS)  # console on a terminal, JSON lines otherwise
    level: str = setting("info", choices=LOG_LEVELS, parse=_lower)


@dataclass(frozen=True)
class MetricsEndpoint(Spec):
    """The Prometheus / OpenMetrics endpoint (service/metrics.py, docs/metrics.md)."""

    section = "metrics"
    enabled: bool = setting(True)
    address: str = setting("127.0.0.1", parse=parsers.host)  # loopback: 0.0.0.0 (or ::) for a remote Prometheus
    # 8469: outside 9100-9999, the range Prometheus hands out to exporters (all taken), and clear of
    # MQTT (1883, 8883), Prometheus (9090), Grafana (3000), OPC UA (4840) and 8000/8080; 0: any free port (logged)
    port: int = setting(8469, low=0, high=65535)


@dataclass(frozen=True)
class Config(Spec):
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    topic_root: str = setting("mill", parse=_root)
    instance: str = setting("edge-1", parse=_instance)  # names this monitor's own topics
    machines: tuple[str, ...] = setting(("*",), parse=_machines)  # ids or patterns ("mill-*"); others are rejected
    bundle: Path = setting(Path("runs/demo/bundle"), parse=local_path)
    # what serves the model: ONNX Runtime (the bundle's scoring.onnx, no TensorFlow) or TensorFlow;
    # auto: ONNX Runtime when the bundle has an export and it is installed (model/runtime.py)
    runtime: str = setting("auto", choices=RUNTIMES)
    device: str = setting("auto", choices=DEVICES)
    batching: Batching = field(default_factory=Batching)
    alarm: AlarmPolicy = field(default_factory=AlarmPolicy)
    qos: OutputQos = field(default_factory=OutputQos)
    outputs: Outputs = field(default_factory=Outputs)
    delivery: Delivery = field(default_factory=Delivery)
    limits: Limits = field(default_factory=Limits)
    errors: ErrorsRate = field(default_factory=ErrorsRate)
    # alarm states and open cuts, checkpointed (null: open cuts are lost at every restart)
    state_file: Path | None = setting(None, parse=local_path)
    status_interval_s: float = setting(30.0, low=1.0)
    logging: Logging = field(default_factory=Logging)
    metrics: MetricsEndpoint = field(default_factory=MetricsEndpoint)
    sparkplug: SparkplugSettings = field(default_factory=SparkplugSettings)  # docs/scada.md

    @property
    def bd_seq_file(self) -> Path | None:
        """Where the Sparkplug edge node keeps its last ``bdSeq``: ``sparkplug.bd_seq_file``, else
        beside the state file, named after it (instances sharing a directory keep apart)."""
        if self.sparkplug.bd_seq_file is not None:
            return self.sparkplug.bd_seq_file
        return None if self.state_file is None else self.state_file.with_name(self.state_file.name + ".sparkplug-bdseq")

    def monitors(self, machine: str) -> bool:
        """Whether ``machine`` is one this monitor watches."""
        return _watches(self.machines, machine)


@functools.lru_cache(maxsize=4096)  # asked for every input; bounded, since ids come off the wire
def _watches(patterns: tuple[str, ...], machine: str) -> bool:
    return matches(patterns, machine)


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate ``path`` (None: all defaults), then apply ``overrides`` (keys ``broker``
    "HOST:PORT", ``bundle``, ``root``, ``instance``, ``metrics`` "ADDRESS:PORT", "PORT" or "off";
    None values are ignored)."""
    unknown = set(overrides or {}) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(sorted(unknown))}; expected {', '.join(OVERRIDES)}")
    data: Any = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the configuration ({exc})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from exc
    data = {} if data is None else data
    broker = data.get("broker") if isinstance(data, dict) else None
    if isinstance(broker, dict) and broker.get("client_id", "") is None:
        del broker["client_id"]  # null: the default, as when absent
    client_id_given = isinstance(broker, dict) and "client_id" in broker
    try:
        config = from_mapping(Config, data, context=Path.cwd() if path is None else path.absolute().parent)
    except SpecError as exc:
        raise ConfigError(f"{path or 'config'}: {exc.key or 'the top level'}: {exc.problem}") from None
    given = {option: value for option, value in (overrides or {}).items() if value is not None}
    config = _override(config, given, client_id_given)
    if config.sparkplug.enabled and config.bd_seq_file is None:
        raise ConfigError(f"{path or 'config'}: sparkplug.bd_seq_file: Sparkplug needs a file to keep its bdSeq across "
                          "restarts (hosts tell an old NDEATH from a new one by it): set it, or set state_file")
    return config


def _override(config: Config, overrides: dict, client_id_given: bool) -> Config:
    """Command-line overrides, validated like the file; errors name the option. Paths are relative
    to the working directory."""
    broker, changes = config.broker, {}
    if "broker" in overrides:
        try:
            host, port = parse_address(str(overrides["broker"]), broker.port)
        except ValueError as exc:
            raise ConfigError(f"--broker: {exc}") from None
        broker = replace(broker, host=host, port=port)
    if "metrics" in overrides:
        changes["metrics"] = _metrics_override(str(overrides["metrics"]), config.metrics)
    for option, name in OVERRIDES.items():
        if option not in ("broker", "metrics") and option in overrides:
            try:
                changes[name] = parse_field(Config, name, overrides[option], Path.cwd())
            except SpecError as exc:
                raise ConfigError(f"--{option}: {exc.problem}") from None
    if not client_id_given:  # one client id per instance: two monitors must not share a session
        broker = replace(broker, client_id=f"edge-monitor-{changes.get('instance', config.instance)}")
    return replace(config, broker=broker, **changes)


def _metrics_override(text: str, metrics: MetricsEndpoint) -> MetricsEndpoint:
    """``--metrics``: ``off``, a port (on the file's address), or ``ADDRESS:PORT`` (``[::1]:PORT``)."""
    if text == "off":
        return replace(metrics, enabled=False)
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\s\[\]]+)):(\d+)|(\d+)", text.strip())
    if not m:
        raise ConfigError(f"--metrics: expected ADDRESS:PORT, PORT or off, got {text!r}")
    address = m.group(1) or m.group(2) or metrics.address
    try:
        return MetricsEndpoint.from_dict({"enabled": True, "address": address, "port": int(m.group(3) or m.group(4))})
    except SpecError as exc:
        raise ConfigError(f"--metrics: {exc.problem}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} at line {mark.line + 1} column {mark.column + 1}" if mark else problem
