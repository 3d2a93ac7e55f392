"""The streaming monitor daemon: the imperative shell around the per-machine pipelines.

Threads: paho's network thread only parses each inbound message (``protocol.parse_message`` with
the configured limits) and puts the result on a queue; it never waits for scoring. The main
thread drains the queue through each machine's :class:`~edge_monitor.core.pipeline.MachinePipeline`,
batches the windows of all machines (:class:`~edge_monitor.core.batching.Batcher`), scores each batch
with the bundle's one compiled inference function, and publishes scores, alarms, summaries, the
status and the errors.

Start-up order: device, bundle (and one warm-up batch, so the first real window does not pay for
tracing), broker, the retained alarms read back, then ``online``. Alarm states also live in a
state file; at start the newer of the file and the retained alarm wins, and a restart never
re-announces nor clears an active alarm.

Shutdown (SIGTERM/SIGINT): what was received is processed, every pending window is scored and
published, the alarm states are saved, ``offline`` is published and the session disconnected
(it persists on the broker, which queues the inputs until the monitor is back).

Under systemd (``Type=notify``, :mod:`~edge_monitor.service.systemd`): ``READY=1`` once the model is
loaded and warmed up and the broker connection is up with the alarms read back; ``STATUS=`` lines
with the counters at every status refresh; ``WATCHDOG=1`` from the main loop itself, so a loop
that stops iterating gets the service restarted; ``STOPPING=1`` when shutdown begins.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.subscribeoptions import SubscribeOptions

from .. import __version__
from . import systemd
from ..core.alarm import AlarmTracker
from ..core.batching import Batcher
from ..core.channels import SAMPLE_RATE_HZ
from .config import Config
from .logging import get_logger
from ..core.pipeline import MachinePipeline, Output, PendingWindow, PipelineSpec, WindowScore
from .mqtt import BrokerError, connect, disconnect, make_client
from ..core.inbound import Inbound, parse_alarm, parse_message
from ..core.outbound import AlarmMessage, ErrorMessage, ScoreMessage, StatusMessage, SummaryMessage, encode
from ..core.topics import MONITOR_LEVEL, ProtocolError, alarm_filter, alarm_topic, errors_topic, inbound_filters, score_topic, status_topic, summary_topic

if TYPE_CHECKING:  # the bundle module loads TensorFlow: imported only once the device is chosen
    from ..model.bundle import ModelBundle

STATE_FORMAT = 1
READBACK_TIMEOUT = 5.0  # seconds to wait for the retained alarms at start
SHUTDOWN_DRAIN = 2.0  # seconds to keep processing arrivals after SIGTERM
PUBLISH_WAIT = 5.0  # seconds to wait for the broker to take the last messages at shutdown


class StartupError(RuntimeError):
    """The daemon cannot start; the message names the thing to fix (exit code 2, no traceback)."""


# ------------------------------------------------------------------------------ small pure parts


@dataclass
class Counters:
    """Monotonic since the monitor came online; published in the status message."""

    messages_in: int = 0
    windows_scored: int = 0
    rejected: int = 0
    gap_samples: int = 0
    duplicate_samples: int = 0
    batches: int = 0
    errors_suppressed: int = 0  # rejections logged but not echoed (errors topic rate limit)


class TokenBucket:
    """``rate`` events per second after a burst of ``burst``; the clock is passed in."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self._tokens, self._last = float(burst), None

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def choose_alarm_state(saved: dict | None, retained: AlarmMessage | None) -> tuple[dict | None, bool]:
    """Which alarm state a machine restarts in, from the state file's snapshot and the retained
    alarm message, and whether the retained message must be republished.

    The later transition wins (``since``; the file on a tie or when both agree, as it also holds
    the window history). Republishing is needed only when the winner differs from what dashboards
    see, e.g. a reset whose retained ``normal`` never reached the broker: an active alarm that the
    retained topic already shows is never announced again."""
    if saved is None and retained is None:
        return None, False
    shown = retained.state if retained is not None else "normal"
    if retained is None:
        chosen = saved
    elif saved is None:
        chosen = retained.to_dict()
    else:
        def when(value: Any) -> float:
            return float("-inf") if value is None else float(value)

        agree = saved.get("state") == retained.state
        chosen = saved if agree or when(saved.get("since")) >= when(retained.since) else retained.to_dict()
    assert chosen is not None
    return chosen, chosen.get("state") != shown


class StateFile:
    """Alarm snapshots of every machine in one JSON file, replaced atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> tuple[dict[str, dict], str | None]:
        """(snapshots by machine, a problem to log or None). A missing file is no problem."""
        if self.path is None or not self.path.exists():
            return {}, None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            machines = data["machines"]
            if data.get("format") != STATE_FORMAT or not isinstance(machines, dict):
                raise ValueError(f"expected format {STATE_FORMAT} with a 'machines' object")
            return {str(m): s for m, s in machines.items() if isinstance(s, dict)}, None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            return {}, f"state file {self.path}: unreadable, ignored ({exc}); using the retained alarms"

    def write(self, machines: dict[str, dict], model: str) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": STATE_FORMAT, "model": model, "machines": machines}, allow_nan=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------ queue items


@dataclass(frozen=True)
class _Input:
    topic: str
    inbound: Inbound
    mid: int
    received: float  # monotonic


@dataclass(frozen=True)
class _Rejected:
    topic: str
    reason: str


@dataclass(frozen=True)
class _Connected:
    session_present: bool


@dataclass
class _Scoring:
    window: PendingWindow
    received: float  # monotonic time of the input that completed the window


@dataclass
class _Latency:
    """Input-to-publish latency of scored windows and batch sizes since the last status."""

    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=10_000))
    infer_seconds: float = 0.0

    def summary(self) -> dict:
        if not self.latencies:
            return {}
        ms = np.asarray(self.latencies) * 1000.0
        return {
            "latency_ms_p50": round(float(np.percentile(ms, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(ms, 95)), 2),
            "latency_ms_max": round(float(ms.max()), 2),
            "batch_mean": round(float(np.mean(self.batch_sizes)), 1),
            "infer_ms_per_window": round(1000.0 * self.infer_seconds / len(ms), 3),
        }


# ------------------------------------------------------------------------------ the daemon


class Monitor:
    """One running monitor: call :meth:`start`, then :meth:`run` until :meth:`stop`."""

    def __init__(self, config: Config, bundle: ModelBundle, device: str) -> None:
        self.config = config
        self.bundle = bundle
        self.device = device
        self.log = get_logger().bind(instance=config.instance)
        self.root = config.topic_root
        meta = bundle.meta
        self.model_id = meta.model_id
        self.spec = PipelineSpec(
            window=meta.window,
            stable=meta.stable_region,
            fs=SAMPLE_RATE_HZ,
            thresholds=meta.thresholds,
            policy=config.alarm,
            model_id=meta.model_id,
            limits=config.limits,
            max_lead_seconds=config.max_lead_seconds,
        )
        self.scorer = bundle.scorer(batch_size=config.batching.max_batch)
        self.calibration = meta.calibration
        self.batcher: Batcher[_Scoring] = Batcher(config.batching.max_batch, config.batching.max_wait_ms)
        self.pipelines: dict[str, MachinePipeline] = {}
        self.restored: dict[str, dict] = {}  # alarm snapshots waiting for their machine's pipeline
        self.state_file = StateFile(config.state_file)
        self.counters = Counters()
        self.latency = _Latency()
        self.errors_bucket = TokenBucket(config.errors.max_per_second, config.errors.burst)
        self.since = time.time()
        self.inbox: queue.Queue = queue.Queue()
        self.watchdog = systemd.WatchdogPinger(systemd.watchdog_interval())
        self._stop = threading.Event()
        self._status_topic = status_topic(self.root, config.instance)
        self._errors_topic = errors_topic(self.root, config.instance)
        self._sync_topic = f"{self.root}/{MONITOR_LEVEL}/{config.instance}/sync"
        self._root_prefix, self._root_depth = f"{self.root}/", self.root.count("/") + 1
        self._readback: dict[str, AlarmMessage] | None = None
        self._readback_done = threading.Event()
        self._readback_nonce = b""
        will = (self._status_topic, self._status("offline"), 1, True)
        self.client = make_client(config.broker, will=will, clean_start=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --------------------------------------------------------------------- network thread

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            return
        # Inputs are never retained; a retained one must not be replayed at every resubscribe.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(f, options) for f in inbound_filters(self.root)])
        self.inbox.put(_Connected(bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if not self._stop.is_set():
            self.log.warning("broker_disconnected", reason=str(reason), reconnect="automatic, with back-off")
            systemd.status(f"broker {self.config.broker.address} disconnected ({reason}), reconnecting")

    def _on_message(self, client, userdata, message) -> None:
        topic = message.topic
        if topic == self._sync_topic:
            if message.payload == self._readback_nonce:
                self._readback_done.set()
            return
        if self._is_alarm_topic(topic):
            self._on_retained_alarm(topic, message.payload)
            return
        try:
            inbound = parse_message(self.root, topic, message.payload, self.config.limits)
        except ProtocolError as exc:
            self.inbox.put(_Rejected(topic, exc.reason))
            return
        self.inbox.put(_Input(topic, inbound, message.mid, time.monotonic()))

    def _is_alarm_topic(self, topic: str) -> bool:
        """``R/<machine>/alarm``: ours, read back at start-up (not an input to reject)."""
        levels = topic.split("/")
        return levels[-1] == "alarm" and len(levels) == self._root_depth + 2 and topic.startswith(self._root_prefix)

    def _on_retained_alarm(self, topic: str, payload: bytes) -> None:
        collected = self._readback
        if collected is None or not payload:  # our own alarms are not subscribed to after start-up
            return
        machine = topic.split("/")[-2]
        try:
            alarm = parse_alarm(payload, self.config.limits)
            if alarm.machine != machine:
                raise ProtocolError(f"alarm of machine {alarm.machine!r} on the topic of {machine!r}")
        except ProtocolError as exc:
            self.log.warning("retained_alarm_ignored", topic=topic, reason=exc.reason)
            return
        collected[machine] = alarm

    # --------------------------------------------------------------------- start-up

    def warm_up(self) -> None:
        """Trace the inference function now rather than on the first live window."""
        self.scorer.score(np.zeros((1, self.scorer.window_length, self.scorer.n_channels)))

    def start(self) -> None:
        """Connect, read back the alarm states and come online. Raises :class:`StartupError`."""
        try:
            connect(self.client)
        except BrokerError as exc:
            raise StartupError(str(exc)) from None
        self.log.info("connected", broker=self.config.broker.address, client_id=self.config.broker.client_id)
        self._restore_alarms(self._read_retained_alarms())
        self._publish_status()
        self.log.info("online", model=self.model_id, device=self.device, machines=list(self.config.machines))
        systemd.ready(self._status_text())

    def _read_retained_alarms(self) -> dict[str, AlarmMessage]:
        """Every machine's retained alarm: subscribe, then a round trip through a private topic
        (the broker sends a subscription's retained messages before anything published later)."""
        self._readback = {}
        self._readback_nonce = secrets.token_hex(8).encode()
        filters = [(alarm_filter(self.root), 1), (self._sync_topic, 1)]
        self.client.subscribe(filters)
        self.client.publish(self._sync_topic, self._readback_nonce, qos=1)
        if not self._readback_done.wait(READBACK_TIMEOUT):
            self.log.warning("retained_alarms_incomplete", waited_s=READBACK_TIMEOUT)
        self.client.unsubscribe([f for f, _ in filters])
        found, self._readback = self._readback, None
        return found

    def _restore_alarms(self, retained: dict[str, AlarmMessage]) -> None:
        saved, problem = self.state_file.read()
        if problem:
            self.log.warning("state_file_ignored", reason=problem)
        for machine in sorted(set(saved) | set(retained)):
            if not self.config.monitors(machine):
                continue
            chosen, republish = choose_alarm_state(saved.get(machine), retained.get(machine))
            if chosen is None:
                continue
            try:
                tracker = AlarmTracker.from_dict(self.spec.policy, self.spec.thresholds, chosen)
            except ValueError as exc:
                self.log.warning("alarm_state_ignored", machine=machine, reason=str(exc))
                continue
            self.restored[machine] = tracker.to_dict()
            self.log.info("alarm_state_restored", machine=machine, state=tracker.state.label, since=tracker.since)
            if republish:  # the retained message is stale (e.g. a reset it never received)
                self._publish_alarm(machine, tracker)

    def _pipeline(self, machine: str) -> MachinePipeline:
        pipe = self.pipelines.get(machine)
        if pipe is None:
            snapshot = self.restored.pop(machine, None)
            tracker = AlarmTracker.from_dict(self.spec.policy, self.spec.thresholds, snapshot) if snapshot else None
            pipe = self.pipelines[machine] = MachinePipeline(machine, self.spec, tracker)
        return pipe

    # --------------------------------------------------------------------- main loop

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Process inputs until :meth:`stop`, then shut down gracefully."""
        status_every = self.config.status_interval_s
        next_status = time.monotonic() + status_every
        while not self._stop.is_set():
            now = time.monotonic()
            self.watchdog.tick(now)  # only while this loop turns (it wakes at least every 0.25 s)
            deadline = self.batcher.deadline()
            wait = min(0.25, next_status - now, (deadline - now) if deadline is not None else 0.25)
            try:
                item = self.inbox.get(timeout=max(0.0, wait))
            except queue.Empty:
                item = None
            if item is not None:
                self._process(item)
            self._score_ready()
            if time.monotonic() >= next_status:
                self._refresh()
                next_status = time.monotonic() + status_every
        self._shutdown()

    def _process(self, item: Any) -> None:
        if isinstance(item, _Input):
            self.counters.messages_in += 1
            self._handle_input(item)
        elif isinstance(item, _Rejected):
            self.counters.messages_in += 1
            self._reject(item.topic, item.reason)
        elif isinstance(item, _Connected):
            self.log.info("subscribed", session_present=item.session_present)
            self._publish_status()  # back online after a reconnect (the will may have fired)
            systemd.status(self._status_text())

    def _handle_input(self, item: _Input) -> None:
        where = item.inbound.topic
        if not self.config.monitors(where.machine):
            self._reject(
                item.topic,
                f"unknown machine {where.machine!r}: this monitor watches {', '.join(self.config.machines)} "
                "(configuration key machines)",
            )
            return
        if where.machine not in self.pipelines and len(self.pipelines) >= self.config.max_machines:
            self._reject(
                item.topic,
                f"too many machines: this monitor already tracks {len(self.pipelines)}, the limit "
                f"(configuration key limits.max_machines); {where.machine!r} is not tracked",
            )
            return
        pipe = self._pipeline(where.machine)
        try:
            step = pipe.handle(item.inbound.message, channel=where.channel, mid=item.mid, now=time.time())
        except ProtocolError as exc:
            self._reject(item.topic, exc.reason)
            return
        self.counters.gap_samples += step.gap_samples
        self.counters.duplicate_samples += step.duplicate_samples
        for event, fields in step.events:
            level = "warning" if event == "gap" or (event == "cut_end" and fields.get("aborted")) else "info"
            getattr(self.log, level)(event, machine=where.machine, **fields)
        if step.duplicate_samples:
            self.log.debug("duplicate", machine=where.machine, topic=item.topic, samples=step.duplicate_samples)
        self.batcher.add((_Scoring(w, item.received) for w in step.windows), time.monotonic())
        self._publish(step.outputs)
        if step.alarm_changed:
            self._save_state()

    def _reject(self, topic: str, reason: str) -> None:
        self.counters.rejected += 1
        self.log.warning("rejected", topic=topic, reason=reason)
        if self.errors_bucket.allow(time.monotonic()):
            message = ErrorMessage(topic=topic, reason=reason, ts=time.time())
            self.client.publish(self._errors_topic, encode(message), qos=0)
        else:
            self.counters.errors_suppressed += 1

    def _score_ready(self, force: bool = False) -> None:
        while True:
            batch = self.batcher.take(time.monotonic(), force=force)
            if not batch:
                return
            self._score(batch)

    def _score(self, batch: list[_Scoring]) -> None:
        started = time.perf_counter()
        raw = self.scorer.score(np.stack([s.window.data for s in batch]))
        self.latency.infer_seconds += time.perf_counter() - started
        # relative to healthy windows of each cut's regime, exactly as training evaluates
        scores = self.calibration.apply(raw, [s.window.regime for s in batch])
        recon, kl, channels = scores.recon.tolist(), scores.kl.tolist(), scores.channels.tolist()
        changed = False
        for i, s in enumerate(batch):
            step = self.pipelines[s.window.machine].scored(s.window, WindowScore(recon[i], kl[i], tuple(channels[i])))
            self._publish(step.outputs)
            for event, fields in step.events:
                self.log.info(event, machine=s.window.machine, **fields)
            changed |= step.alarm_changed
        done = time.monotonic()
        self.latency.latencies.extend(done - s.received for s in batch)
        self.latency.batch_sizes.append(len(batch))
        self.counters.windows_scored += len(batch)
        self.counters.batches += 1
        if changed:
            self._save_state()

    # --------------------------------------------------------------------- publishing

    def _publish(self, outputs: list[Output]) -> None:
        qos = self.config.qos
        for out in outputs:
            m = out.message
            if isinstance(m, ScoreMessage):
                self.client.publish(score_topic(self.root, out.machine), encode(m), qos=qos.score)
            elif isinstance(m, AlarmMessage):
                self.client.publish(alarm_topic(self.root, out.machine), encode(m), qos=qos.alarm, retain=True)
                self.log.warning("alarm", machine=out.machine, state=m.state, cut=m.cut, score=m.score,
                                 threshold=m.threshold)
            elif isinstance(m, SummaryMessage):
                self.client.publish(summary_topic(self.root, out.machine), encode(m), qos=qos.summary)
                fields = m.to_dict()
                fields["state"] = fields.pop("level")  # "level" is the log record's own key
                self.log.info("summary", machine=out.machine, **fields)

    def _publish_alarm(self, machine: str, tracker: AlarmTracker) -> None:
        message = AlarmMessage(
            machine=machine, state=tracker.state.label, since=tracker.since, cut=tracker.cut,
            score=tracker.score, threshold=tracker.threshold, model=self.model_id,
        )
        self.client.publish(alarm_topic(self.root, machine), encode(message), qos=self.config.qos.alarm, retain=True)

    def _status(self, state: str, counters: bool = False) -> bytes:
        message = StatusMessage(
            state=state, model=self.model_id, device=self.device, version=__version__, since=self.since,
            counters=asdict(self.counters) if counters else None,
        )
        return encode(message)

    def _publish_status(self, state: str = "online") -> MQTTMessageInfo:
        return self.client.publish(self._status_topic, self._status(state, counters=True),
                                   qos=self.config.qos.status, retain=True)

    def _refresh(self) -> None:
        self._publish_status()
        self._save_state()
        latency = self.latency.summary()
        self.log.info("status", **asdict(self.counters), pending=len(self.batcher),
                      queued=self.inbox.qsize(), **latency)
        systemd.status(self._status_text(latency.get("latency_ms_p50")))
        self.latency = _Latency()

    def _status_text(self, latency_p50: float | None = None) -> str:
        """One line for ``systemctl status``: connection, counters, machines not normal."""
        states = {m: str(s.get("state")) for m, s in self.restored.items()}
        states.update({m: p.tracker.state.label for m, p in self.pipelines.items()})
        c = self.counters
        parts = [
            f"broker {'connected' if self.client.is_connected() else 'disconnected'}",
            f"{len(self.pipelines)} machines seen, {c.messages_in} messages, {c.windows_scored} windows scored, "
            f"{c.rejected} rejected",
        ]
        for level in ("alarm", "warning"):
            names = sorted(m for m, s in states.items() if s == level)
            if names:
                parts.append(f"{level}: {', '.join(names)}")
        if latency_p50 is not None:
            parts.append(f"latency p50 {latency_p50:g} ms")
        return "; ".join(parts)

    def _save_state(self) -> None:
        snapshots = dict(self.restored)
        snapshots.update({m: p.tracker.to_dict() for m, p in self.pipelines.items()})
        try:
            self.state_file.write(snapshots, self.model_id)
        except (OSError, ValueError) as exc:
            self.log.error("state_file_not_written", path=str(self.state_file.path), reason=str(exc))

    # --------------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        systemd.stopping("stopping: scoring what was received, saving the alarm states")
        self.log.info("stopping", pending=len(self.batcher), queued=self.inbox.qsize())
        # What the broker already delivered is acknowledged: process it rather than lose it.
        until = time.monotonic() + SHUTDOWN_DRAIN
        while time.monotonic() < until:
            try:
                self._process(self.inbox.get(timeout=0.05))
            except queue.Empty:
                break
            self._score_ready()
        self._score_ready(force=True)
        self._save_state()
        info = self._publish_status("offline")
        try:
            info.wait_for_publish(PUBLISH_WAIT)
        except (RuntimeError, ValueError):  # not connected: the will says offline instead
            pass
        disconnect(self.client)
        self.log.info("stopped", **asdict(self.counters))


# ------------------------------------------------------------------------------ entry point


def run(config: Config) -> int:
    """Start the daemon for ``config`` and run it until SIGTERM/SIGINT; returns the exit code.
    Start-up problems raise :class:`StartupError`."""
    log = get_logger().bind(instance=config.instance)
    systemd.status("loading TensorFlow and the model")
    from ..model.device import DeviceError, select_device

    try:
        device = select_device(config.device)
    except (DeviceError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    log.info("device", requested=config.device, device=device)

    from ..model.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(config.bundle)
    except BundleError as exc:
        raise StartupError(str(exc)) from None
    th = bundle.meta.thresholds
    log.info("bundle", path=str(config.bundle), model=bundle.meta.model_id, score=th.score,
             warning=th.warning, alarm=th.alarm)
    try:
        monitor = Monitor(config, bundle, "cpu" if device == "cpu" else "gpu")
    except BrokerError as exc:  # a TLS or password file that cannot be used
        raise StartupError(str(exc)) from None
    monitor.warm_up()
    # From here a stop request is honoured gracefully, also one that comes right after READY=1.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: monitor.stop())
    systemd.status(f"connecting to the broker {config.broker.address}")
    monitor.start()
    monitor.run()
    return 0

