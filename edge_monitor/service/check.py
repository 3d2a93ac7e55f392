"""``edge-monitor check``: whether an installation is sound, end to end: configuration, bundle (and,
unless ``--no-model``, the model: the one step that needs TensorFlow), state directory, the broker's
listeners, both broker logins and the ACL. One line per check and a summary; exit code 1 when any
check fails (a WARN line does not fail it).

**The broker's listeners** are read from its configuration files (``broker_conf.py``: Debian's
``/etc/mosquitto/mosquitto.conf`` and its ``include_dir``, or ``--broker-conf``), when the broker is
on this host: a listener without ``use_username_as_clientid true`` lets any client that signs in
there take over the monitor's session. A WARN, not a FAIL: the unit runs this check before every
start, and a broker set up by someone else must not keep the monitor from running; the line names
the file, the listener and the fix. A configuration that cannot be read (another host, a file
readable by the broker's group only) is a skip line.

**A running monitor is left alone.** The deployed broker takes every client's id from its user
name, so logging in as the monitor's users takes over the monitor's connections, and Mosquitto
2.0.11 refuses nothing after the password check that would test a login short of that (measured:
an unknown MQTT 5 authentication method is refused before the password is looked at; a will on a
forbidden topic is not checked at CONNECT). So the broker checks run only while no monitor with
this configuration runs on this host (``/proc``; the unit's ``ExecStartPre`` runs before its
daemon), and are skipped, saying why, otherwise. They use the monitor's client ids: where a broker
does not force them, another id would leave a second persistent session queueing every input for
nobody. The inputs session is left as found: clean start off with the monitor's expiry, its own
subscriptions made again (identical, so unchanged), none removed, nothing acknowledged but this
check's probes (receive maximum 1: at most one queued input comes here, and goes to the monitor
again, which drops duplicates).

**Probes are harmless, allowed or not.** They go to a topic level no machine or monitor instance
can have (``PROBE``: ids are 1-64 of ``A-Z a-z 0-9 _ -``, core/topics.py), never retained (a
retained probe could replace or delete a real retained alarm), at QoS 1 for the broker's verdict in
the PUBACK, say what they are, and expire after ``PROBE_EXPIRY_S``: one that the ACL wrongly lets
onto an input topic reaches only the monitor's own session, and expires there before the monitor
is back (or reaches this check, which acknowledges it). Mosquitto 2.0 grants every SUBSCRIBE and
filters deliveries: a read right shows only where a probe can be sent to it.
"""

from __future__ import annotations

import functools
import getpass
import ipaddress
import json
import os
import secrets
import socket
import ssl
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..core.channels import CHANNELS
from ..core.outbound import SCORE_LEAVES
from ..core.sparkplug_node import NAMESPACE, EdgeNode
from ..core.topics import MONITOR_LEVEL, Topics
from ..model.meta import MODEL_FILE, BundleError, read_bundle_meta  # no TensorFlow
from .broker_conf import MAIN_CONF, read_broker_conf
from .check_partition import announced_partitions, configured_partitions
from .check_result import Result, fail, ok, skip, warn
from .config import Config, ConfigError, load_config
from .mqtt import BrokerError, BrokerSettings, connect, disconnect, make_client
from .native_log import NativeCapture
from .state import sync_directory, write_synced

PROBE = "edge-monitor.check"  # a machine id / instance name no real one can have: '.' is not allowed
PROBE_EXPIRY_S = 3  # seconds a probe may wait in a queue (e.g. of the monitor's offline session)
WAIT_S = 5.0  # for a CONNACK, each PUBACK and each probe's delivery


def run_check(config_path: str | Path, overrides: dict | None = None, *, load_model: bool = True,
              broker_may_be_down: bool = False, broker_conf: str | Path | None = None,
              out: Callable[[str], None] = functools.partial(print, flush=True)) -> int:
    """Run every check, print a line for each as it completes, then a summary; 0 when none failed.
    ``broker_conf``: Mosquitto's main configuration file to read the listeners from (default:
    Debian's, when the broker is on this host)."""
    results: list[Result] = []
    try:
        config = load_config(config_path, overrides)
        steps = [iter([ok(f"config {config_path}")]), configured_partitions(config, Path(config_path)),
                 _bundle(config, load_model), _state(config.state_file),
                 _listeners(config, None if broker_conf is None else Path(broker_conf)),
                 _broker(config, Path(config_path), broker_may_be_down)]
    except ConfigError as exc:
        steps = [iter([fail(f"config: {exc}")])]
    for step in steps:
        for result in step:  # lines as they come: loading the model takes a while
            results.append(result)
            out(result.line())
    failed, warned = (sum(r.status == status for r in results) for status in ("FAIL", "WARN"))
    counts = f"{sum(r.status == 'ok' for r in results)} ok, {sum(r.status == 'skip' for r in results)} skipped"
    if warned:
        counts += f", {warned} warning{'s' if warned > 1 else ''}"
    out(f"check FAILED: {failed} failed, {counts}" if failed else f"check passed: {counts}")
    return 1 if failed else 0


def _bundle(config: Config, load_model: bool) -> Iterator[Result]:
    try:
        meta = read_bundle_meta(config.bundle)
    except BundleError as exc:
        yield fail(str(exc))
        return
    yield ok(f"bundle {config.bundle} (model {meta.model_id}: bundle.json valid, its files match the id)")
    yield ok(f"operating point: {meta.thresholds.describe()}")
    if not load_model:
        yield skip("model not loaded (--no-model)")
        return
    from ..model.runtime import ServingError, choose_runtime, pick_runtime
    from ..model.serving import load_serving

    try:
        runtime, _ = pick_runtime(config.runtime, meta, str(config.bundle))
    except (ServingError, ValueError) as exc:
        yield fail(str(exc))
        return
    served = None
    # TensorFlow's own lines: to the log
    with NativeCapture(during="check") if runtime == "tensorflow" else nullcontext() as native:
        try:
            choice = choose_runtime(config.runtime, config.device, meta, str(config.bundle))
            if native is not None and choice.kind == "cpu":
                native.expect_no_gpu()
            served = load_serving(config.bundle, choice)
            served.scorer().raw_scores(np.zeros((1, meta.window.length, len(meta.channels))))
            problem = None
        except (ServingError, BundleError, ValueError) as exc:
            problem = str(exc)
        except Exception as exc:  # noqa: BLE001 - Keras refusing the file in its own words: a FAIL line
            problem = f"model {config.bundle / MODEL_FILE}: cannot load it ({type(exc).__name__}: {exc})"
    if problem is not None:
        yield fail(problem)
        return
    shape = f"windows of {meta.window.length} x {len(meta.channels)}, {meta.hyperparams.codings} codings"
    what = meta.serving.file if served.runtime.runtime == "onnxruntime" else MODEL_FILE
    yield ok(f"model {what} scores a window with {served.runtime.runtime} on {served.runtime.device} ({shape}; "
             f"{served.runtime.reason})")


def _state(state_file: Path | None) -> Iterator[Result]:
    """A probe file written as :meth:`.state.StateFile.write` writes, removed, the directory's times put back."""
    if state_file is None:
        yield skip("state: state_file is null: nothing to write (open cuts are lost at every restart)")
        return
    where = state_file.parent
    while not where.exists() and where != where.parent:  # the monitor creates missing directories
        where = where.parent
    user = getpass.getuser()
    if not where.is_dir():
        yield fail(f"state {state_file}: {where} is not a directory")
        return
    try:
        before = os.stat(where)
        write_synced(where, f".{state_file.name}.check-", b"edge-monitor check: a probe, removed at once\n").unlink()
        sync_directory(where)
    except OSError as exc:
        yield fail(f"state {state_file}: user {user} cannot write a file in {where} ({exc.strerror or exc})")
        return
    try:  # no trace left: install.sh promises that a second run changes nothing, not even a time
        os.utime(where, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass  # not the directory's owner: its times changed, nothing else did
    if state_file.exists() and not os.access(state_file, os.R_OK):
        yield fail(f"state {state_file}: exists, but user {user} cannot read it (the monitor would start afresh)")
        return
    later = "" if where == state_file.parent else f"; {state_file.parent} does not exist yet, the monitor creates it"
    yield ok(f"state {where}: user {user} writes there (a file created, fsynced and removed){later}")


# ------------------------------------------------------------------------------------ broker listeners


def _listeners(config: Config, path: Path | None) -> Iterator[Result]:
    """Every listener of the broker's configuration takes client ids from user names."""
    if path is None:
        if not on_this_host(config.broker.host):
            yield skip(f"broker listeners: the broker {config.broker.address} is not on this host, its configuration "
                       "is not read (--broker-conf PATH reads a copy of its mosquitto.conf)")
            return
        path = MAIN_CONF
    try:
        conf = read_broker_conf(path)
    except OSError as exc:
        yield skip(f"broker listeners: cannot read {path} ({exc.strerror or exc}): not checked (a broker installed "
                   "otherwise than by Debian's package: --broker-conf PATH names its main configuration)")
        return
    for unread, why in conf.unread:
        yield skip(f"broker listeners in {unread}: cannot read it ({why}); a listener there is not checked")
    for listener in conf.listeners:
        if listener.username_as_clientid:
            continue
        if listener.local_only:
            fix = (f"{path} configures none (is the edge box's deploy/mosquitto/edge-monitor.conf in its include_dir?); "
                   "its listeners set `use_username_as_clientid true`")
        elif listener.default:
            fix = (f"`{listener.made_by}` at {listener.where} made it: a listener setting placed before the first "
                   "`listener` line of its file goes to this one; move it below the `listener` line it is meant for, "
                   "or add `use_username_as_clientid true` there")
        else:
            fix = (f"add `use_username_as_clientid true` below that line, in that file (a listener setting belongs to "
                   "the last `listener` line above it in the same file)")
        where = "" if listener.local_only or listener.default else f" ({listener.where})"
        yield warn(f"broker {listener.name}{where} lets a client choose its client id: any client that signs in there "
                   "can take over another one's session, the monitor's and the inputs queued for it included; "
                   f"{fix}, then restart mosquitto")
    good = [listener.name for listener in conf.listeners if listener.username_as_clientid]
    if good:
        yield ok(f"broker listeners in {path}: {', '.join(good)} take client ids from user names "
                 "(use_username_as_clientid true)")


def on_this_host(host: str) -> bool:
    """Whether ``host`` (broker.host) names this host: a loopback address, localhost or its name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.rstrip(".").lower() in {"localhost", socket.gethostname().lower()}


# ------------------------------------------------------------------------------------ broker


def _broker(config: Config, config_path: Path, may_be_down: bool) -> Iterator[Result]:
    inputs, outputs = config.broker, config.broker.for_outputs()
    spb = config.sparkplug
    sparkplug = config.broker.for_sparkplug(spb.username, spb.password_file) if spb.enabled else None
    running = running_monitors(config_path)
    if running:
        users = " and ".join(dict.fromkeys(_user(s) for s in (inputs, outputs, sparkplug) if s is not None))
        yield skip(f"broker login and ACL as {users}: the monitor runs with this configuration "
                   f"(pid {', '.join(map(str, running))}); logging in as its users would take over its "
                   "connections (the broker takes client ids from user names): stop it to check them")
        return
    # The monitor's settings, without reconnecting while the check runs: a connection taken over
    # stays down rather than take the other one over in turn.
    inputs, outputs = (replace(s, reconnect_poll_delay=3600, reconnect_min_delay=3600, reconnect_max_delay=3600)
                       for s in (inputs, outputs))
    topics = Topics(config.topic_root, config.instance)
    ins, outs = Session(inputs, topics.root, inputs=True), Session(outputs, topics.root, inputs=False)
    node = None
    if sparkplug is not None:
        node = Session(replace(sparkplug, reconnect_poll_delay=3600, reconnect_min_delay=3600, reconnect_max_delay=3600),
                       topics.root, inputs=False)
    try:
        for session in (ins, outs):
            yield session.login(may_be_down)
            if session.unreachable:  # once is enough
                return
        if ins.client is None or outs.client is None:  # a login failed
            return
        time.sleep(0.2)  # for a takeover's DISCONNECT
        if ins.dropped:
            yield fail(f"broker login as {_user(outputs)} for the outputs closed the inputs connection "
                       f"({ins.dropped}): on a broker that takes client ids from user names (the deployed one), "
                       "broker.output_username must name a user of its own")
            return
        yield from _acl(topics, ins, outs, config.outputs.scores)
        yield from announced_partitions(config, outs.retained(topics.statuses))
        if node is not None:
            yield from _sparkplug(config, node, ins, outs)
        for session in (ins, outs):
            if session.dropped:
                yield fail(f"broker connection as {_user(session.settings)} closed by the broker ({session.dropped})")
    finally:
        ins.close()
        outs.close()
        if node is not None:
            node.close()


def _sparkplug(config: Config, node: Session, ins: Session, outs: Session) -> Iterator[Result]:
    """The Sparkplug edge node's connection (``sparkplug:``): its login, that it takes over neither
    of the monitor's other connections, and its right to publish Sparkplug messages. The probe is
    the NDEATH of an edge node that cannot exist and was never born (hosts ignore it); without a
    will, so that nothing here can mark the real node dead."""
    yield node.login(may_be_down=False)
    if node.client is None:
        return
    time.sleep(0.2)  # for a takeover's DISCONNECT
    taken = [s for s in (ins, outs) if s.dropped]
    if taken:
        yield fail(f"broker login as {_user(node.settings)} for Sparkplug closed the "
                   f"{' and '.join(_user(s.settings) for s in taken)} connection: on a broker that takes client ids "
                   "from user names (the deployed one), sparkplug.username must name a user of its own "
                   "(make-users.sh makes edge-monitor-sparkplug)")
        return
    group, who = config.sparkplug.group_id, _user(node.settings)
    probe = f"{NAMESPACE}/{group}/NDEATH/{PROBE}"
    mid, _ = node.publish(probe, EdgeNode(group, PROBE, aliases=False).death(0, int(time.time() * 1000)))
    reason = node.outcome(mid)
    if reason is None:
        yield fail(f"ACL {who} publishes {probe}: no PUBACK within {WAIT_S:g} s")
    elif reason:
        yield fail(f"ACL {who} publishes {probe}: refused ({reason}); the broker's ACL needs "
                   f"`topic write {NAMESPACE}/+/NDEATH/+` and the rest of the edge-monitor-sparkplug block "
                   f"(deploy/mosquitto/acl) for user {who}")
    else:
        yield ok(f"ACL {who} publishes {probe} (Sparkplug)")


def _user(settings: BrokerSettings) -> str:
    return settings.username or "(anonymous)"


def _acl(topics: Topics, ins: Session, outs: Session, scores: str) -> Iterator[Result]:
    root, me = topics.root, _user(ins.settings)
    # The monitor's own subscriptions, with its options (inbox.Inbox.subscribe): made again, they
    # change nothing in its session; none is ever removed.
    keep = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    filters = [(f, keep) for f in topics.inputs.values()] + [(topics.ping, SubscribeOptions(qos=0))]
    refused = [f"{f} ({reason})" for (f, _), reason in zip(filters, ins.subscribe(filters)) if reason]
    yield (fail(f"ACL {me} may not subscribe to {'; '.join(refused)}") if refused
           else ok(f"ACL {me} subscribes to {', '.join(f for f, _ in filters)}"))
    alarm, own = f"{root}/{PROBE}/alarm", f"{root}/{MONITOR_LEVEL}/{PROBE}"  # own: a probe "instance"
    outs.subscribe([(alarm, SubscribeOptions(qos=1)), (topics.sync, SubscribeOptions(qos=1))])  # end with it
    monitor_rw = f"topic readwrite {root}/{MONITOR_LEVEL}/#"
    # What the monitor publishes: (publisher, topic, who reads it back or None, the ACL line needed).
    # A dashboard sees at most a non-retained message of a machine or instance that cannot exist.
    # scores on the leaf the configuration publishes them on (outputs.scores; none with off)
    leaves = [leaf for leaf in (SCORE_LEAVES[scores],) if leaf]
    allowed = [
        *[(outs, f"{root}/{PROBE}/{leaf}", None, f"topic write {root}/+/{leaf}") for leaf in leaves],
        (outs, f"{root}/{PROBE}/summary", None, f"topic write {root}/+/summary"),
        (outs, alarm, outs, f"topic readwrite {root}/+/alarm"),  # read back at start-up
        (outs, f"{own}/status", None, monitor_rw),
        (outs, f"{own}/errors", None, monitor_rw),
        (outs, topics.sync, outs, monitor_rw),  # ends that read-back
        (outs, topics.ping, ins, f"{monitor_rw} (and for {me}: topic read {root}/{MONITOR_LEVEL}/#)"),
    ]
    # What it must not, each harmless if the ACL lets it through anyway:
    forbidden = [
        # the inputs user writing an input: it would reach only the monitor's session (this
        # connection, which acknowledges it, or its queue, where it expires)
        (ins, f"{root}/{PROBE}/signal/{CHANNELS[0]}"),
        # ... or an output: an alarm of a machine that cannot exist, not retained, touching no alarm
        (ins, alarm),
        # the outputs user sending a command (an operator's reset): like the input above
        (outs, f"{root}/{PROBE}/cmd"),
    ]
    sent = [(pub, topic, reader, grant, pub.publish(topic)) for pub, topic, reader, grant in allowed]
    denied = [(pub, topic, pub.publish(topic)) for pub, topic in forbidden]
    for pub, topic, reader, grant, (mid, payload) in sent:
        who = _user(pub.settings)
        what = f"ACL {who} publishes {topic}" + ("" if reader is None else f", {_user(reader.settings)} reads it")
        reason = pub.outcome(mid)
        if reason is None:
            yield fail(f"{what}: no PUBACK within {WAIT_S:g} s")
        elif reason:
            yield fail(f"{what}: refused ({reason}); the broker's ACL needs `{grant}` for user {who}")
        elif reader is not None and not reader.received(topic, payload):
            yield fail(f"{what}: accepted, but never delivered within {WAIT_S:g} s; the broker's ACL needs `{grant}`")
        else:
            yield ok(what)
    for pub, topic, (mid, _) in denied:
        who, reason = _user(pub.settings), pub.outcome(mid)
        if reason:
            yield ok(f"ACL {who} may not publish {topic} ({reason})")
        else:
            why = "no PUBACK" if reason is None else "the broker accepted it"
            yield fail(f"ACL {who} may not publish {topic}: {why}; the broker's ACL gives user {who} a right it "
                       "must not have (deploy/mosquitto/acl)")


class Session:
    """One of the monitor's connections, made as the monitor makes it, keeping the broker's answers."""

    def __init__(self, settings: BrokerSettings, root: str, *, inputs: bool) -> None:
        self.settings, self.inputs = settings, inputs
        self.probes = f"{root}/{PROBE}/"
        self.client = None
        self.dropped: str | None = None  # why the broker closed the connection, if it did
        self.unreachable = False
        self._acks: dict[int, str] = {}  # packet id -> "" (accepted) or the refusal
        self._subacks: dict[int, list[str]] = {}
        self._got: set[tuple[str, bytes]] = set()
        self._cond = threading.Condition()

    def login(self, may_be_down: bool) -> Result:
        s = self.settings
        what = f"broker login as {_user(s)} at {s.address}{' over TLS' if s.tls is not None else ''}"
        try:  # inputs: the monitor's persistent session, resumed, nothing acknowledged but probes
            self.client = make_client(s, clean_start=not self.inputs, manual_ack=self.inputs,
                                      receive_maximum=1 if self.inputs else None)
        except BrokerError as exc:  # a password or TLS file that cannot be used
            return fail(f"{what}: {exc}")
        answer: dict = {}
        self.client.on_connect = lambda c, u, flags, reason, p: answer.setdefault("reason", reason)
        try:
            connected = connect(self.client, WAIT_S)
        except BrokerError as exc:
            self.client = None
            if answer.get("reason") is not None:  # a CONNACK that refuses
                if s.username is None:
                    return fail(f"{what}: refused ({answer['reason']}): the broker wants a user (broker.username, "
                                "broker.password_file)")
                return fail(f"{what}: refused ({answer['reason']}): is the password in {s.password_file} the "
                            f"broker's for {s.username}? (make-users.sh writes both)")
            if isinstance(exc.__cause__, (ssl.SSLError, ValueError)):
                return fail(f"{what}: TLS fails ({exc.__cause__}); broker.tls.ca must hold the CA of the broker's "
                            "certificate")
            self.unreachable = True
            down = f"broker {s.address} not reachable ({str(exc).split(': ', 1)[-1]})"
            return skip(f"{down}: no login nor ACL checked; the monitor connects once it is up") if may_be_down \
                else fail(down)
        c = self.client
        c.on_connect, c.on_publish, c.on_subscribe = None, self._on_publish, self._on_subscribe
        c.on_message, c.on_disconnect = self._on_message, self._on_disconnect
        if not self.inputs:
            return ok(f"{what} (the monitor's client id {s.client_id})")
        session = ("its persistent session resumed, left as found" if connected.session_present
                   else "no session yet: made with the monitor's subscriptions, as its first start would")
        return ok(f"{what} (the monitor's client id {s.client_id}; {session})")

    def publish(self, topic: str, payload: bytes | None = None) -> tuple[int, bytes]:
        """A probe on ``topic``: ``payload``, or JSON that says what it is."""
        if payload is None:
            payload = json.dumps({"probe": "edge-monitor check: an ACL test, not data",
                                  "nonce": secrets.token_hex(8)}).encode()
        properties = Properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = PROBE_EXPIRY_S
        return self.client.publish(topic, payload, qos=1, retain=False, properties=properties).mid, payload

    def outcome(self, mid: int) -> str | None:
        """"" when the broker accepted the publish, its refusal, or None without a PUBACK in time."""
        with self._cond:
            self._cond.wait_for(lambda: mid in self._acks, WAIT_S)
            return self._acks.get(mid)

    def subscribe(self, filters: list) -> list[str]:
        _, mid = self.client.subscribe(filters)
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, WAIT_S):
                return [f"no SUBACK within {WAIT_S:g} s"] * len(filters)
            return self._subacks[mid]

    def retained(self, topic_filter: str, settle: float = 0.5) -> dict[str, bytes]:
        """The retained messages under ``topic_filter`` (its one ``+`` level -> payload)."""
        self.subscribe([(topic_filter, SubscribeOptions(qos=0))])
        time.sleep(settle)  # the broker sends them right after its SUBACK
        with self._cond:
            got = list(self._got)
        prefix, _, suffix = topic_filter.partition("+")
        return {t[len(prefix):len(t) - len(suffix)]: p for t, p in got
                if t.startswith(prefix) and t.endswith(suffix) and "/" not in t[len(prefix):len(t) - len(suffix)]}

    def received(self, topic: str, payload: bytes) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: (topic, payload) in self._got, WAIT_S)

    def close(self) -> None:
        if self.client is not None:
            disconnect(self.client)  # the inputs session stays, with the monitor's expiry

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._cond:
            self._acks[mid] = str(reason) if reason is not None and reason.is_failure else ""
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        with self._cond:
            self._subacks[mid] = [str(r) if r.is_failure else "" for r in reasons]
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        if message.topic.startswith(self.probes):
            client.ack(message.mid, message.qos)  # a probe of ours, never for the monitor
        # anything else (an input queued for the monitor) stays unacknowledged: it goes to the monitor
        with self._cond:
            self._got.add((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.dropped = str(reason)


# ------------------------------------------------------------------------------------ a running monitor


def running_monitors(config_path: str | Path) -> list[int]:
    """Process ids of monitor daemons (``edge-monitor run``, ``python -m edge_monitor run``) with this
    configuration file, or a relative one from a working directory this user cannot see (it may be
    this one). Only what ``/proc`` shows: a monitor on another host or in a container is not found."""
    mine, found = Path(config_path).absolute(), []
    try:
        entries = [p for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]
    except OSError:
        return []
    for entry in entries:
        try:
            config = daemon_config((entry / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue  # gone, or hidden
        if config is None:
            continue
        path = Path(config)
        if not path.is_absolute():
            try:
                path = Path(os.readlink(entry / "cwd")) / path
            except OSError:
                found.append(int(entry.name))  # cannot tell: better skip than take it over
                continue
        if path.resolve() == mine.resolve():
            found.append(int(entry.name))
    return sorted(found)


def daemon_config(argv: list[str]) -> str | None:
    """The ``--config`` of a monitor daemon's command line (or its default), None for another one."""
    for i, arg in enumerate(argv):
        program = argv[i - 1] if i else ""
        if arg == "run" and (Path(program).name == "edge-monitor" or argv[max(i - 2, 0):i] == ["-m", "edge_monitor"]):
            config, rest = "config.yaml", argv[i + 1:]
            for j, option in enumerate(rest):
                if option == "--config" and j + 1 < len(rest):
                    config = rest[j + 1]
                elif option.startswith("--config="):
                    config = option.split("=", 1)[1]
            return config
    return None
