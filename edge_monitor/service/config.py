"""The daemon's configuration: a YAML file (``config.yaml``), validated at start.

Every problem is a :class:`ConfigError` naming the file and the key, e.g.
``config.yaml: broker.port: must be an integer 1-65535, got 'abc'``. Unknown keys are errors too
(a typo would otherwise silently fall back to a default), with a "did you mean" when one is close.
Missing keys take the defaults below, so an empty file is a valid configuration.

Relative paths in the file are relative to the file's directory (the daemon may run from any
working directory under a service manager); paths given on the command line are relative to the
working directory, as usual. Command-line overrides (``--broker HOST:PORT``, ``--bundle PATH``,
``--root R``, ``--instance NAME``) replace the file's values and are validated the same way.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core.alarm import AlarmPolicy
from .mqtt import BrokerSettings, TlsSettings, parse_address
from ..core.inbound import Limits
from ..core.topics import MACHINE_ID, validate_root

DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")  # auto: console on a terminal, else json
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
#: Machine selectors: machine ids, or shell-style patterns of them with ``*`` and ``?``.
MACHINE_PATTERN = re.compile(r"[A-Za-z0-9_*?-]{1,64}")
OVERRIDES: tuple[str, ...] = ("broker", "bundle", "root", "instance")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file (or option) and the key."""


@dataclass(frozen=True)
class Batching:
    max_batch: int = 256  # windows per inference call, across all machines
    max_wait_ms: float = 50.0  # longest a window waits for its batch to fill


@dataclass(frozen=True)
class OutputQos:
    score: int = 0  # one message per window: losing one in a reconnect is harmless
    alarm: int = 1
    summary: int = 1
    status: int = 1


@dataclass(frozen=True)
class ErrorsRate:
    """Token bucket for the errors topic: a flood of bad input is counted and logged, and only
    ``max_per_second`` of it (after a burst of ``burst``) echoed to MQTT."""

    max_per_second: float = 5.0
    burst: int = 20


@dataclass(frozen=True)
class Logging:
    format: str = "auto"  # json | console | auto (console on a terminal, JSON lines otherwise)
    level: str = "info"


@dataclass(frozen=True)
class Config:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    topic_root: str = "mill"
    instance: str = "edge-1"  # names this monitor in R/_monitor/<instance>/...
    machines: tuple[str, ...] = ("*",)  # ids or patterns ("mill-*"); inputs of others are rejected
    bundle: Path = Path("runs/demo/bundle")
    device: str = "auto"
    batching: Batching = field(default_factory=Batching)
    alarm: AlarmPolicy = field(default_factory=AlarmPolicy)
    qos: OutputQos = field(default_factory=OutputQos)
    limits: Limits = field(default_factory=Limits)
    max_lead_seconds: float = 60.0  # configured under limits:, used by frames.MachineStream
    max_machines: int = 256  # configured under limits:: machines tracked at once (memory bound)
    errors: ErrorsRate = field(default_factory=ErrorsRate)
    state_file: Path | None = None  # alarm states, besides the retained alarm topic
    status_interval_s: float = 30.0
    logging: Logging = field(default_factory=Logging)

    def monitors(self, machine: str) -> bool:
        """Whether ``machine`` is one this monitor watches."""
        return any(fnmatch.fnmatchcase(machine, pattern) for pattern in self.machines)


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate ``path`` (None: all defaults), then apply ``overrides`` (keys ``broker``
    "HOST:PORT", ``bundle``, ``root``, ``instance``; None values are ignored)."""
    if path is None:
        data: Any = {}
        reader = _Reader("config", Path.cwd())
    else:
        path = Path(path)
        reader = _Reader(str(path), path.absolute().parent)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the configuration ({exc})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from exc
    if data is None:
        data = {}
    return reader.config(data, dict(overrides or {}))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} at line {mark.line + 1} column {mark.column + 1}" if mark else problem


_TOP_KEYS = (
    "broker", "topic_root", "instance", "machines", "bundle", "device", "batching", "alarm",
    "qos", "limits", "errors", "state_file", "status_interval_s", "logging",
)


class _Reader:
    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base  # relative paths in the file are relative to this directory

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    # ------------------------------------------------------------------------------- sections

    def config(self, data: Any, overrides: dict) -> Config:
        top = self.section(data, "", _TOP_KEYS)
        unknown = set(overrides) - set(OVERRIDES)
        if unknown:
            raise ValueError(f"unknown override(s) {', '.join(sorted(unknown))}; expected {', '.join(OVERRIDES)}")
        defaults = Config()
        out: dict[str, Any] = {}

        out["topic_root"] = self.root(top.get("topic_root", defaults.topic_root), "topic_root")
        out["instance"] = self.name(top.get("instance", defaults.instance), "instance")
        out["machines"] = self.machines(top.get("machines", list(defaults.machines)))
        out["bundle"] = self.path(top.get("bundle", str(defaults.bundle)), "bundle")
        out["device"] = self.choice(top.get("device", defaults.device), "device", DEVICES)
        out["batching"] = self.batching(top.get("batching", {}))
        out["alarm"] = self.alarm(top.get("alarm", {}))
        out["qos"] = self.qos(top.get("qos", {}))
        out["limits"], out["max_lead_seconds"], out["max_machines"] = self.limits(top.get("limits", {}))
        out["errors"] = self.errors(top.get("errors", {}))
        state = top.get("state_file")
        out["state_file"] = None if state is None else self.path(state, "state_file")
        out["status_interval_s"] = self.number(
            top.get("status_interval_s", defaults.status_interval_s), "status_interval_s", low=1.0
        )
        out["logging"] = self.logging(top.get("logging", {}))
        broker, client_id_given = self.broker(top.get("broker", {}))

        # Command-line overrides: validated like the file, errors name the option.
        cli = _Reader("command line", Path.cwd())
        if overrides.get("broker") is not None:
            try:
                host, port = parse_address(str(overrides["broker"]), broker["port"])
            except ValueError as exc:
                raise ConfigError(f"--broker: {exc}") from None
            broker.update(host=host, port=port)
        if overrides.get("bundle") is not None:
            out["bundle"] = cli.path(str(overrides["bundle"]), "--bundle")
        if overrides.get("root") is not None:
            out["topic_root"] = cli.root(overrides["root"], "--root", option=True)
        if overrides.get("instance") is not None:
            out["instance"] = cli.name(overrides["instance"], "--instance", option=True)
        if not client_id_given:  # one client id per instance: two monitors must not share a session
            broker["client_id"] = f"edge-monitor-{out['instance']}"
        return Config(broker=BrokerSettings(**broker), **out)

    def section(self, data: Any, where: str, known: tuple[str, ...]) -> dict:
        name = where or "the top level"
        if not isinstance(data, dict):
            raise ConfigError(f"{self.source}: {name}: must be a mapping of keys, got {_kind(data)}")
        for key in data:
            if key not in known:
                full = f"{where}.{key}" if where else str(key)
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
                raise self.error(full, f"unknown key{hint}")
        return data

    def broker(self, data: Any) -> tuple[dict, bool]:
        keys = ("host", "port", "client_id", "username", "password_file", "tls", "keepalive", "session_expiry")
        b = self.section(data, "broker", keys)
        d = BrokerSettings()
        host = b.get("host", d.host)
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise self.error("broker.host", f"must be a host name or address, got {host!r}")
        client_id = b.get("client_id")
        if client_id is not None and (
            not isinstance(client_id, str) or not client_id or not client_id.isprintable() or " " in client_id
        ):
            raise self.error("broker.client_id", f"must be a non-empty string without spaces, got {client_id!r}")
        username = b.get("username")
        if username is not None and (not isinstance(username, str) or not username):
            raise self.error("broker.username", f"must be a non-empty string or null, got {username!r}")
        password_file = None
        if b.get("password_file") is not None:
            if username is None:
                raise self.error("broker.password_file", "is set but broker.username is not")
            password_file = self.existing_file(b["password_file"], "broker.password_file")
        out = dict(
            host=host,
            port=self.integer(b.get("port", d.port), "broker.port", 1, 65535),
            client_id=client_id or d.client_id,
            username=username,
            password_file=password_file,
            tls=self.tls(b.get("tls")),
            keepalive=self.integer(b.get("keepalive", d.keepalive), "broker.keepalive", 5, 65535),
            session_expiry=self.integer(
                b.get("session_expiry", d.session_expiry), "broker.session_expiry", 1, 2**32 - 1,
                why=" (seconds the broker keeps the session and queues inputs while the monitor is away)",
            ),
        )
        return out, client_id is not None

    def tls(self, data: Any) -> TlsSettings | None:
        if data is None or data is False:
            return None
        if data is True:
            data = {}
        t = self.section(data, "broker.tls", ("ca", "cert", "key"))
        files = {k: None if t.get(k) is None else self.existing_file(t[k], f"broker.tls.{k}") for k in ("ca", "cert", "key")}
        if files["key"] is not None and files["cert"] is None:
            raise self.error("broker.tls.key", "is set but broker.tls.cert is not")
        return TlsSettings(**files)

    def batching(self, data: Any) -> Batching:
        b = self.section(data, "batching", ("max_batch", "max_wait_ms"))
        d = Batching()
        return Batching(
            max_batch=self.integer(b.get("max_batch", d.max_batch), "batching.max_batch", 1, 65536),
            max_wait_ms=self.number(b.get("max_wait_ms", d.max_wait_ms), "batching.max_wait_ms", low=0.0, high=60_000.0),
        )

    def alarm(self, data: Any) -> AlarmPolicy:
        known = tuple(f.name for f in fields(AlarmPolicy))
        a = self.section(data, "alarm", known)
        try:
            return AlarmPolicy.from_dict(a)
        except (TypeError, ValueError) as exc:  # AlarmPolicy's messages name the key: "alarm.k must ..."
            message = str(exc)
            key, sep, rest = message.partition(" ")
            if key.startswith("alarm.") and sep:
                raise self.error(key, rest) from None
            raise ConfigError(f"{self.source}: alarm: {message}") from None

    def qos(self, data: Any) -> OutputQos:
        names = tuple(f.name for f in fields(OutputQos))
        q = self.section(data, "qos", names)
        d = OutputQos()
        return OutputQos(**{n: self.integer(q.get(n, getattr(d, n)), f"qos.{n}", 0, 2) for n in names})

    def limits(self, data: Any) -> tuple[Limits, float, int]:
        names = ("max_payload_bytes", "max_chunk", "max_cut_samples", "max_lead_seconds", "max_machines")
        lim = self.section(data, "limits", names)
        d = Limits()
        values = {
            n: self.integer(lim.get(n, getattr(d, n)), f"limits.{n}", 1, 2**31 - 1)
            for n in ("max_payload_bytes", "max_chunk", "max_cut_samples")
        }
        lead = self.number(lim.get("max_lead_seconds", Config.max_lead_seconds), "limits.max_lead_seconds", low=0.1)
        machines = self.integer(lim.get("max_machines", Config.max_machines), "limits.max_machines", 1, 100_000)
        return Limits(**values), lead, machines

    def errors(self, data: Any) -> ErrorsRate:
        e = self.section(data, "errors", ("max_per_second", "burst"))
        d = ErrorsRate()
        return ErrorsRate(
            max_per_second=self.number(e.get("max_per_second", d.max_per_second), "errors.max_per_second", low=0.01),
            burst=self.integer(e.get("burst", d.burst), "errors.burst", 1, 10_000),
        )

    def logging(self, data: Any) -> Logging:
        lg = self.section(data, "logging", ("format", "level"))
        d = Logging()
        level = lg.get("level", d.level)
        if isinstance(level, str):
            level = level.lower()
        return Logging(
            format=self.choice(lg.get("format", d.format), "logging.format", LOG_FORMATS),
            level=self.choice(level, "logging.level", LOG_LEVELS),
        )

    def machines(self, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.error(
                "machines", f'must be a machine id, a pattern like "mill-*" or "*", or a list of them, got {value!r}'
            )
        for i, item in enumerate(items):
            if not isinstance(item, str) or not MACHINE_PATTERN.fullmatch(item):
                key = "machines" if isinstance(value, str) else f"machines[{i}]"
                raise self.error(key, f"{item!r} is not 1-64 characters of A-Z a-z 0-9 _ - (and * ? in patterns)")
        return tuple(items)

    # --------------------------------------------------------------------------------- values

    def integer(self, value: Any, key: str, low: int, high: int, why: str = "") -> int:
        if type(value) is not int or not low <= value <= high:
            raise self.error(key, f"must be an integer {low}-{high}{why}, got {value!r}")
        return value

    def number(self, value: Any, key: str, low: float, high: float = math.inf) -> float:
        if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
            bound = f"at least {low:g}" if high == math.inf else f"{low:g}-{high:g}"
            raise self.error(key, f"must be a number {bound}, got {value!r}")
        return float(value)

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.error(key, f"must be one of {' | '.join(options)}, got {value!r}")
        return value

    def root(self, value: Any, key: str, option: bool = False) -> str:
        try:
            return validate_root(value)
        except ValueError as exc:
            if option:
                raise ConfigError(f"{key}: {exc}") from None
            raise self.error(key, str(exc)) from None

    def name(self, value: Any, key: str, option: bool = False) -> str:
        if isinstance(value, str) and MACHINE_ID.fullmatch(value) and value != "_monitor":
            return value
        problem = f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {value!r}"
        if option:
            raise ConfigError(f"{key}: {problem}")
        raise self.error(key, problem)

    def path(self, value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a path, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def existing_file(self, value: Any, key: str) -> Path:
        path = self.path(value, key)
        if not path.is_file():
            raise self.error(key, f"no such file {str(path)!r}")
        return path


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return type(value).__name__
