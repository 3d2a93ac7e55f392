"""The thin MQTT shell over paho-mqtt 2, shared by the daemon and the replay.

:func:`make_client` builds a client configured the way the monitor needs it: MQTT 5, a fixed
client id, a persistent session when ``clean_start`` is off (clean start off and a session
expiry, so the broker keeps the subscriptions and queues QoS 1 inputs while the client is away),
reconnection with exponential back-off, and ``TCP_NODELAY`` on the socket. :func:`connect` opens
the connection and waits for the broker's CONNACK with a clear error when it cannot.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..core.spec import Spec, setting
from . import parsers

DEFAULT_PORT = 1883
TCP_CONNECT_TIMEOUT = 10.0  # seconds for the TCP (and TLS) handshake of each connection attempt


class BrokerError(RuntimeError):
    """The broker cannot be used; the message names the broker (or the file) and why."""


@dataclass(frozen=True)
class TlsSettings(Spec):
    section = "broker.tls"
    ca: Path | None = setting(None, parse=parsers.existing_file)  # CA certificates to trust; None: the system's
    cert: Path | None = setting(None, parse=parsers.existing_file)  # client certificate, for brokers that want one
    key: Path | None = setting(None, parse=parsers.existing_file, requires="cert")


@dataclass(frozen=True)
class BrokerSettings(Spec):
    section = "broker"
    host: str = setting("localhost", parse=parsers.host)
    port: int = setting(DEFAULT_PORT, low=1, high=65535)
    client_id: str = setting("edge-monitor", parse=parsers.client_id)
    username: str | None = setting(None, parse=parsers.user_name)
    # the password is kept out of the config: one line in a file
    password_file: Path | None = setting(None, parse=parsers.existing_file, requires="username")
    # The monitor's results go out on a second connection (see service/monitor.py); on a broker
    # that takes client ids from user names it needs a user of its own. None: the same user.
    output_username: str | None = setting(None, parse=parsers.user_name)
    output_password_file: Path | None = setting(None, parse=parsers.existing_file, requires="output_username")
    tls: TlsSettings | None = None  # None: plain TCP
    keepalive: int = setting(30, low=5, high=65535)  # seconds
    session_expiry: int = setting(3600, low=1, high=2**32 - 1, why=(
        "seconds the broker keeps the session and queues inputs while the monitor is away"))
    # Reconnecting (see Reconnect): while the broker's port refuses connections, an attempt every
    # reconnect_poll_delay seconds; when the broker itself refuses (a login, TLS), reconnect_min_delay
    # doubled after each failed attempt up to reconnect_max_delay.
    reconnect_poll_delay: float = setting(0.25, in_file=False)
    reconnect_min_delay: float = setting(0.5, in_file=False)
    reconnect_max_delay: float = setting(30, in_file=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def for_outputs(self) -> "BrokerSettings":
        """How the monitor's output connection logs in: ``output_username`` if set, else the
        same user; its own client id (``<client_id>-out``)."""
        if self.output_username is None:
            return replace(self, client_id=f"{self.client_id}-out")
        return replace(self, client_id=f"{self.client_id}-out", username=self.output_username,
                       password_file=self.output_password_file)


    def for_sparkplug(self, username: str | None, password_file: Path | None) -> "BrokerSettings":
        """How the Sparkplug edge node's connection logs in (service/sparkplug.py): its own will
        (the NDEATH) needs a connection of its own, and on a broker that takes client ids from
        user names a user of its own; its own client id (``<client_id>-sparkplug``). No user:
        the inputs' user."""
        if username is None:
            return replace(self, client_id=f"{self.client_id}-sparkplug")
        return replace(self, client_id=f"{self.client_id}-sparkplug", username=username, password_file=password_file)


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` (default port) or ``[IPv6]:PORT`` as (host, port); ValueError naming
    what is wrong."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return host, port


def read_password(path: Path) -> str:
    """The password in ``path`` (its first line; a trailing newline is not part of it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"broker password file {path}: cannot read it ({exc})") from exc
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise BrokerError(f"broker password file {path}: is empty; put the password on its first line")
    return lines[0]


def make_client(
    settings: BrokerSettings,
    *,
    will: tuple[str, bytes, int, bool] | None = None,
    clean_start: bool,
    manual_ack: bool = False,
    receive_maximum: int | None = None,
) -> paho.Client:
    """A paho client set up for ``settings`` but not connected yet (call :func:`connect`).

    ``will`` is (topic, payload, qos, retain). With ``clean_start=False`` the session persists
    across connections for ``settings.session_expiry`` seconds; with ``True`` every connection
    starts afresh and the session ends with it. ``manual_ack``: QoS 1 messages are acknowledged
    only when the application calls ``client.ack(mid, qos)``; ``receive_maximum`` tells the broker
    how many it may send before the client acknowledges (MQTT 5; the broker's default is small).

    paho refuses some settings once the connection is configured (``max_inflight_messages``,
    ``connect_timeout``); paho's default of 20 messages in flight matches Mosquitto's receive
    maximum, which a client must not exceed.
    """
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.username is not None:
        password = read_password(settings.password_file) if settings.password_file is not None else None
        client.username_pw_set(settings.username, password)
    if settings.tls is not None:
        tls = settings.tls
        for what, path in (("CA", tls.ca), ("certificate", tls.cert), ("key", tls.key)):
            if path is not None and not Path(path).is_file():
                raise BrokerError(f"broker TLS {what} file {path}: no such file")
        try:
            client.tls_set(ca_certs=_str(tls.ca), certfile=_str(tls.cert), keyfile=_str(tls.key))
        except (ssl.SSLError, OSError) as exc:
            files = ", ".join(str(p) for p in (tls.ca, tls.cert, tls.key) if p is not None) or "system CAs"
            raise BrokerError(f"broker TLS files ({files}): cannot load them ({exc})") from exc
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos, retain)
    Reconnect(settings).install(client)
    client.on_socket_open = _no_delay
    client.connect_timeout = TCP_CONNECT_TIMEOUT
    properties = None
    if not clean_start or receive_maximum is not None:
        properties = Properties(PacketTypes.CONNECT)
    if not clean_start:
        properties.SessionExpiryInterval = settings.session_expiry
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    # Stores where and how to connect without connecting: connect() and paho's own reconnects use it.
    client.connect_async(
        settings.host, settings.port, settings.keepalive, clean_start=clean_start, properties=properties
    )
    return client


class Reconnect:
    """When paho tries again after the connection dropped: back online within a poll of the
    broker's return, without hammering a broker that refuses the monitor.

    paho's own back-off doubles the wait after every failed attempt, so after a broker restart of
    a few seconds the monitor sat out the last wait (1, 2, 4 s) while the broker was already
    there again. What a failed attempt costs decides the wait instead: a port that refuses the
    connection (the broker is down or restarting) costs nothing, so it is tried every
    ``reconnect_poll_delay``; a broker that answers and refuses (its login, its TLS, a broker
    refusing new clients) pays a handshake per attempt, so those back off exponentially from
    ``reconnect_min_delay`` up to ``reconnect_max_delay``, as does any attempt after one that got
    through (a client kicked out again and again). paho calls ``on_pre_connect`` before every
    attempt and ``on_connect_fail`` when it fails before the broker has answered; the wait it
    computes next follows the delays set here (``reconnect_delay_set`` resets its doubling)."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.address = (settings.host, settings.port)
        self.poll = settings.reconnect_poll_delay
        self.backoff = (settings.reconnect_min_delay, settings.reconnect_max_delay)
        self.polling = False

    def install(self, client: paho.Client) -> None:
        client.reconnect_delay_set(*self.backoff)
        client.on_pre_connect = self._attempt
        client.on_connect_fail = self._failed

    def _attempt(self, client: paho.Client, userdata: object) -> None:
        if self.polling:  # back off should this attempt get through and be refused, or kicked out
            self.polling = False
            client.reconnect_delay_set(*self.backoff)

    def _failed(self, client: paho.Client, userdata: object) -> None:
        if not self.polling and port_down(*self.address):
            self.polling = True
            client.reconnect_delay_set(self.poll, self.poll)


def port_down(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` refuses a TCP connection or cannot be reached: nothing listens there
    yet. A host name that does not resolve is a mistake to report, not a broker to wait for."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror:
        return False
    except OSError:
        return True
    return False


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _no_delay(client: paho.Client, userdata: object, sock: object) -> None:
    # Nagle's algorithm holds small writes back until the previous one is acknowledged, which adds
    # ~40 ms (the peer's delayed ACK) to each small QoS 0 message.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not a TCP socket (e.g. a websocket wrapper)
        pass


@dataclass(frozen=True)
class Connected:
    session_present: bool  # the broker still held our persistent session (subscriptions, queue)


def connect(client: paho.Client, timeout: float = 10.0) -> Connected:
    """Connect ``client`` (from :func:`make_client`), start its network thread and wait for the
    CONNACK. Raises :class:`BrokerError` ("cannot reach broker HOST:PORT: ...") when the broker is
    unreachable, refuses the connection or does not answer within ``timeout`` seconds. After that
    paho reconnects by itself (with back-off) whenever the connection drops.

    The client's own ``on_connect`` (if set before) is still called, so a subscriber can set it up
    to (re)subscribe on every connection."""
    where = f"{client.host}:{client.port}"
    answered = threading.Event()
    outcome: dict = {}
    user_on_connect = client.on_connect

    def on_connect(c, userdata, flags, reason, properties) -> None:
        outcome.update(reason=reason, session_present=bool(flags.session_present))
        answered.set()
        if user_on_connect is not None:
            user_on_connect(c, userdata, flags, reason, properties)

    client.on_connect = on_connect
    try:
        try:
            client.reconnect()
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot reach broker {where}: {_describe(exc)}") from exc
        client.loop_start()
        if not answered.wait(timeout):
            client.loop_stop()
            client.disconnect()
            raise BrokerError(f"cannot reach broker {where}: no answer to CONNECT within {timeout:g} s")
    finally:
        client.on_connect = user_on_connect
    reason = outcome["reason"]
    if reason.is_failure:
        client.loop_stop()
        client.disconnect()
        raise BrokerError(f"cannot reach broker {where}: the broker refused the connection ({reason})")
    return Connected(outcome["session_present"])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__


def acknowledge(client: paho.Client, message: paho.MQTTMessage) -> None:
    """Acknowledge a message now (a client with ``manual_ack`` must acknowledge every QoS 1 or 2
    message it receives, also those that are not inputs; without it paho already did)."""
    if message.qos:
        client.ack(message.mid, message.qos)


def disconnect(client: paho.Client) -> None:
    """Disconnect cleanly (no will) and stop the network thread."""
    client.disconnect()
    client.loop_stop()
