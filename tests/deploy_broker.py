"""A real Mosquitto with the edge box's deploy configuration (``deploy/mosquitto/``), for tests.

It is set up the way ``install.sh`` sets up a box, only in a folder and on free ports:
``make-test-ca.sh`` issues the TLS certificates (the test CA's key in a folder of its own, as
``install.sh`` does), ``make-users.sh`` creates the users, their password files and the ACL (the
demo user ``replay`` only when asked for), and ``edge-monitor.conf`` is rendered from its template into a
``conf.d`` folder that a main configuration includes, as Debian's ``/etc/mosquitto/mosquitto.conf``
does (that file also holds what the deploy file must not repeat: persistence location and log).
"""

from __future__ import annotations

import getpass
import re
import subprocess
from pathlib import Path

from broker import Broker, free_port

from edge_monitor.service.mqtt import BrokerSettings, TlsSettings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def render(template: str, values: dict[str, object]) -> str:
    """``template`` with every ``@NAME@`` replaced by ``values[NAME]``; ValueError naming a
    placeholder that has no value (a template and its users must agree)."""
    def value(match: re.Match) -> str:
        name = match.group(0).strip("@")
        if name not in values:
            raise ValueError(f"no value for placeholder {match.group(0)}")
        return str(values[name])

    return PLACEHOLDER.sub(value, template)


def run_script(name: str, *args: str) -> str:
    """Run a ``deploy/mosquitto`` script; its output, or AssertionError with it on failure."""
    done = subprocess.run([str(DEPLOY / name), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


class DeployBroker(Broker):
    """Mosquitto with the deploy configuration. ``conf_d`` adds more files to its ``conf.d``
    (e.g. a bridge); ``port`` is the loopback listener, ``tls_port`` the TLS one; ``replay``: the
    demo user too (``make-users.sh --replay``)."""

    def __init__(self, workdir: Path, machines: tuple[str, ...], *, root: str = "mill",
                 conf_d: dict[str, str] | None = None, dashboards: tuple[str, ...] = (),
                 extra_users: dict[str, str | tuple[str, ...]] | None = None, replay: bool = False) -> None:
        super().__init__(workdir)
        self.root = root
        self.tls_port = free_port()
        self.etc = self.workdir / "etc"  # @CONFDIR@: passwd, acl, certs/
        self.certs = self.etc / "certs"
        self.ca_key_dir = self.workdir / "test-ca"  # outside @CONFDIR@, as install.sh's /etc/edge-monitor/test-ca
        self.secrets = self.workdir / "secrets"
        self.conf_d = self.workdir / "conf.d"
        self.data = self.workdir / "data"
        self.ca_output = run_script("make-test-ca.sh", "--broker-group", "", "--ca-key-dir", str(self.ca_key_dir),
                                    str(self.certs))
        boards = [arg for d in dashboards for arg in ("--dashboard", d)]
        self.users_output = run_script(
            "make-users.sh", "--confdir", str(self.etc), "--secrets", str(self.secrets), "--root", root,
            "--broker-group", "", *(["--replay"] if replay else []), *boards, *machines,
        )
        for user, role in (extra_users or {}).items():
            self._add_user(user, role)
        self.conf_d.mkdir()
        self.data.mkdir()
        template = (DEPLOY / "edge-monitor.conf").read_text()
        self.rendered = render(template, {"CONFDIR": self.etc, "PORT": self.port, "TLS_PORT": self.tls_port})
        (self.conf_d / "edge-monitor.conf").write_text(self.rendered)
        for name, text in (conf_d or {}).items():
            (self.conf_d / name).write_text(text)

    def _add_user(self, user: str, roles: str | tuple[str, ...]) -> None:
        """A test instrument: ``user`` with the rights of ``roles`` (the broker takes a client's id
        from its user name, so two connections with one role at once need two users); a role
        that is an ACL line (``topic read #``) is taken as it is."""
        password = f"{user}-secret"
        self.password_file(user).write_text(password + "\n")
        subprocess.run(["mosquitto_passwd", "-b", str(self.etc / "passwd"), user, password],
                       check=True, capture_output=True, timeout=30)
        acl = (self.etc / "acl").read_text().splitlines()
        rights = []
        for role in (roles,) if isinstance(roles, str) else roles:
            if role.startswith("topic "):
                rights.append(role)
                continue
            for line in acl[acl.index(f"user {role}") + 1:]:
                if line.startswith("user "):
                    break
                if line.startswith("topic "):
                    rights.append(line)
        with open(self.etc / "acl", "a") as f:
            f.write("\n".join(["", f"user {user}", *rights]) + "\n")

    def _write_conf(self) -> None:
        # What Debian's main configuration holds, plus `user` (started as root, mosquitto would
        # switch to the user "mosquitto", which cannot write this folder).
        self.conf.write_text(
            "persistence true\n"
            f"persistence_location {self.data}/\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            f"user {getpass.getuser()}\n"
            f"include_dir {self.conf_d}\n"
        )

    def password_file(self, user: str) -> Path:
        return self.secrets / f"{user}.password"

    def settings(self, user: str | None, client_id: str, *, tls: bool = False, ca: Path | None = None,
                 session_expiry: int = 300) -> BrokerSettings:
        """How ``user`` connects (None: anonymously): the loopback listener, or the TLS one
        trusting ``ca`` (default: the test CA)."""
        return BrokerSettings(
            host="127.0.0.1",
            port=self.tls_port if tls else self.port,
            client_id=client_id,
            username=user,
            password_file=None if user is None else self.password_file(user),
            tls=TlsSettings(ca=ca or self.certs / "ca.crt") if tls else None,
            session_expiry=session_expiry,
            reconnect_max_delay=2,
        )
