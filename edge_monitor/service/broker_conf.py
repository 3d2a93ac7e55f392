"""Mosquitto 2.0's listeners as its configuration files make them, for ``edge-monitor check``: which
listeners the broker opens and whether each takes a client's id from its user name
(``use_username_as_clientid``). Client ids are one namespace across listeners, so a single listener
without that setting lets any client that signs in there take over another one's session (the
monitor's, with the inputs queued for it), whatever the other listeners say.

The files are read the way Mosquitto 2.0.11 reads them (``src/conf.c``, ``src/conf_includedir.c``;
checked against a running 2.0.11):

- a line is a setting unless it is empty or starts with ``#``; its words are separated by spaces;
- ``include_dir DIR`` is obeyed in the main file only: every file of DIR whose name ends in
  ``.conf``, in Mosquitto's order (case-insensitive, then upper case first: ``00 01 A a B b``);
- **each file starts anew with Mosquitto's default listener as its current listener**: a listener
  setting (``use_username_as_clientid``, ``cafile``, ``protocol``, ...) belongs to the last
  ``listener`` line above it *in the same file*, and before a file's first ``listener`` line to the
  default listener, which Mosquitto then opens (port 1883, or ``port``; every interface, or
  ``bind_address``). So ``use_username_as_clientid true`` at the top of a drop-in of its own
  protects no listener, and opens one;
- ``use_username_as_clientid`` is a listener setting whatever ``per_listener_settings`` says;
  ``per_listener_settings true`` only changes where the security settings (``password_file``,
  ``psk_file``, ``auth_plugin``, ``allow_zero_length_clientid``) go: into the current listener, so
  before any ``listener`` line they too make the default listener;
- with no listener at all, Mosquitto opens its local-only listener (port 1883 on loopback),
  without the setting.

Pure reading: no broker is contacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Debian's main configuration (package mosquitto), which includes /etc/mosquitto/conf.d.
MAIN_CONF = Path("/etc/mosquitto/mosquitto.conf")

# Settings of the current listener that, set before a file's first `listener` line, make Mosquitto
# open its default listener (conf.c, config__parse_args: the default listener's fields it tests).
_DEFAULT_LISTENER_ANY = frozenset({
    "bind_interface", "cafile", "capath", "certfile", "keyfile", "tls_engine", "tls_engine_kpass_sha1",
    "ciphers", "ciphers_tls13", "dhparamfile", "psk_hint", "crlfile", "mount_point", "socket_domain",
})
_DEFAULT_LISTENER_TRUE = frozenset({
    "require_certificate", "use_identity_as_username", "use_subject_as_username", "use_username_as_clientid",
})
_DEFAULT_LISTENER_UNLESS = {"tls_keyform": "pem", "max_connections": "-1", "max_qos": "2", "protocol": "mqtt"}
# ... and with per_listener_settings true, the security settings (which then belong to a listener)
_SECURITY_ANY = frozenset({"password_file", "psk_file", "auth_plugin", "plugin"})
_SECURITY_UNLESS = {"allow_zero_length_clientid": ("true", "1")}


@dataclass
class Listener:
    """One listener Mosquitto opens."""

    name: str  # "listener 8883", "listener 1883 127.0.0.1", "Mosquitto's default listener (...)"
    file: Path  # where its `listener` line is (or what made the default listener)
    line: int
    default: bool = False  # Mosquitto's default listener, made by `made_by`
    made_by: str | None = None  # the setting that made the default listener
    local_only: bool = False  # no listener configured: Mosquitto's local-only one
    username_as_clientid: bool = False

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class BrokerConf:
    """What :func:`read_broker_conf` found."""

    path: Path
    listeners: list[Listener] = field(default_factory=list)
    unread: list[tuple[Path, str]] = field(default_factory=list)  # included files it could not read, and why


def read_broker_conf(path: str | Path) -> BrokerConf:
    """The listeners of Mosquitto started with ``-c path``. OSError when ``path`` itself cannot be
    read; an included file or folder that cannot be read is listed in ``unread``."""
    path = Path(path)
    reader = _Reader(path)
    reader.read_file(path, level=0)
    return reader.result()


def _words(line: str) -> list[str]:
    return [w for w in line.split(" ") if w]


def _include_order(name: str) -> list[tuple[str, str]]:
    """Mosquitto's order of an include_dir's files: case-insensitive first, then upper case before
    lower case of the same letter."""
    return [(c.upper(), c) for c in name]


class _Reader:
    def __init__(self, main: Path) -> None:
        self.main = main
        self.conf = BrokerConf(main)
        self.per_listener_settings = False
        self.default = Listener("", main, 0, default=True)
        self.default_port: str | None = None
        self.default_host: str | None = None

    def read_file(self, path: Path, level: int) -> None:
        text = path.read_bytes().decode(errors="replace")  # OSError for the caller
        current = self.default  # every file starts with the default listener (conf.c)
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip("\r")
            if not line or line.startswith("#"):
                continue
            words = _words(line)
            if not words:
                continue
            key, values = words[0], words[1:]
            value = values[0] if values else ""
            if key == "listener":
                host = values[1] if len(values) > 1 and not values[1].startswith("#") else None
                name = f"listener {value}" + (f" {host}" if host else "")
                current = Listener(name, path, number)
                self.conf.listeners.append(current)
            elif key == "include_dir":
                if level == 0:  # Mosquitto obeys it in the main file only
                    rest = line.strip().split(" ", 1)
                    self.include(rest[1].strip() if len(rest) > 1 else "")
            elif key == "per_listener_settings":
                self.per_listener_settings = value in ("true", "1")
            elif key in ("port", "bind_address"):  # always the default listener's
                if key == "port":
                    self.default_port = value
                else:
                    self.default_host = value
                self.make_default(f"{key} {value}", path, number)
            else:
                if key == "use_username_as_clientid":
                    current.username_as_clientid = value in ("true", "1")
                if current is self.default and self.makes_default(key, value):
                    self.make_default(f"{key} {value}".rstrip(), path, number)

    def makes_default(self, key: str, value: str) -> bool:
        if key in _DEFAULT_LISTENER_ANY:
            return True
        if key in _DEFAULT_LISTENER_TRUE:
            return value in ("true", "1")
        if key in _DEFAULT_LISTENER_UNLESS:
            return value != _DEFAULT_LISTENER_UNLESS[key]
        if self.per_listener_settings:
            if key in _SECURITY_ANY:
                return True
            if key in _SECURITY_UNLESS:
                return value not in _SECURITY_UNLESS[key]
        return False

    def make_default(self, setting: str, path: Path, number: int) -> None:
        if self.default.made_by is None:  # the first setting that made it
            self.default.made_by, self.default.file, self.default.line = setting, path, number

    def include(self, folder: str) -> None:
        if not folder:
            self.conf.unread.append((self.main, "an include_dir without a folder: Mosquitto refuses to start"))
            return
        where = Path(folder)
        if not where.is_absolute():  # relative to Mosquitto's working directory: the service's is /
            where = Path("/") / where
        try:
            names = [p.name for p in where.iterdir() if len(p.name) > 5 and p.name.endswith(".conf")]
        except OSError as exc:
            self.conf.unread.append((where, exc.strerror or str(exc)))
            return
        for name in sorted(names, key=_include_order):
            try:
                self.read_file(where / name, level=1)
            except OSError as exc:
                self.conf.unread.append((where / name, exc.strerror or str(exc)))

    def result(self) -> BrokerConf:
        listeners = self.conf.listeners
        if self.default.made_by is not None:
            port = self.default_port or "1883"
            host = f"address {self.default_host}" if self.default_host else "every interface"
            self.default.name = f"Mosquitto's default listener (port {port}, {host})"
            listeners.insert(0, self.default)
        if not listeners:
            listeners.append(Listener("Mosquitto's local-only listener (port 1883 on loopback: no listener configured)",
                                      self.main, 0, local_only=True))
        return self.conf
