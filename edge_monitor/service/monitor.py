"""The streaming monitor daemon: the imperative shell around the per-machine pipelines.

Threads: paho's network thread only routes and parses each input (:mod:`.inbox`) and queues it;
it never waits for scoring. The main thread runs :meth:`Monitor.run`: it applies each input to its
machine's pipeline (:mod:`~edge_monitor.core.fleet`), batches the windows of all machines and
scores them with the bundle's one scoring call (:mod:`.scoring`), hands the scores back to the
pipelines and publishes what they return (:mod:`.outbox`).

Start-up order: device, bundle (and one warm-up batch, so the first real window does not pay for
tracing), broker, the alarm states read back (:mod:`.state`), then ``online``.

Shutdown (SIGTERM/SIGINT): what was received is processed, every pending window is scored and
published, the alarm states are saved, ``offline`` is published and the session disconnected
(it persists on the broker, which queues the inputs until the monitor is back).

Under systemd (``Type=notify``, :mod:`.systemd`): ``READY=1`` once the model is loaded and warmed
up and the broker connection is up with the alarms read back; ``STATUS=`` lines with the counters
at every status refresh; ``WATCHDOG=1`` from the main loop itself, so a loop that stops iterating
gets the service restarted; ``STOPPING=1`` when shutdown begins.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from .. import __version__
from ..core.alarm import AlarmPolicy
from ..core.channels import SAMPLE_RATE_HZ
from ..core.fleet import Fleet
from ..core.outbound import AlarmMessage, StatusMessage, encode
from ..core.pipeline import Output, PipelineSpec, Step
from ..core.topics import ProtocolError, Topics
from . import systemd
from .config import Config
from .inbox import Connected, Handlers, Inbox, Received, Rejected
from .logging import get_logger
from .mqtt import BrokerError, connect, disconnect, make_client
from .outbox import Outbox
from .scoring import Scoring
from .state import StateFile, read_retained_alarms, restore_alarm_states
from .status import Counters, status_text

if TYPE_CHECKING:  # the bundle module loads TensorFlow: imported only once the device is chosen
    from ..model.bundle import ModelBundle

SHUTDOWN_DRAIN = 2.0  # seconds to keep processing arrivals after SIGTERM
PUBLISH_WAIT = 5.0  # seconds to wait for the broker to take the last messages at shutdown
IDLE_WAKE = 0.25  # the loop turns at least this often (watchdog, status, batch deadlines)


class StartupError(RuntimeError):
    """The daemon cannot start; the message names the thing to fix (exit code 2, no traceback)."""


def policy_mismatch(chosen_for: object, running: AlarmPolicy) -> str | None:
    """What in the running alarm policy differs from the one the bundle's thresholds were chosen
    for (the thresholds are figures of that rule); None when nothing does or the bundle does not say."""
    if not isinstance(chosen_for, dict):
        return None
    keys = ("persist_cuts", "reference_cuts", "min_windows")
    differ = [f"alarm.{k}: {getattr(running, k)} (chosen for {chosen_for[k]})"
              for k in keys if k in chosen_for and chosen_for[k] != getattr(running, k)]
    if not differ:
        return None
    return ("the bundle's thresholds were chosen for another alarm rule than config.yaml sets: "
            + ", ".join(differ) + "; alarms may come too early or too late")


class Monitor:
    """One running monitor: call :meth:`start`, then :meth:`run` until :meth:`stop`."""

    def __init__(self, config: Config, bundle: ModelBundle, device: str) -> None:
        self.config = config
        self.device = device
        self.log = get_logger().bind(instance=config.instance)
        meta = bundle.meta
        self.model_id = meta.model_id
        spec = PipelineSpec(
            window=meta.window, stable=meta.stable_region, fs=SAMPLE_RATE_HZ, thresholds=meta.thresholds,
            policy=config.alarm, model_id=meta.model_id, limits=config.limits,
        )
        self.fleet = Fleet(spec, config.monitors, config.machines)
        self.topics = Topics(config.topic_root, config.instance)
        self.counters = Counters()
        self.scoring = Scoring(bundle.scorer(batch_size=config.batching.max_batch), config.batching, self.counters)
        self.state_file = StateFile(config.state_file)
        self.since = time.time()
        self.watchdog = systemd.WatchdogPinger(systemd.watchdog_interval())
        self._stop = threading.Event()
        will = (self.topics.status, encode(self._status("offline")), 1, True)
        self.client = make_client(config.broker, will=will, clean_start=False)
        self.outbox = Outbox(self.client, self.topics, config.qos, config.errors)
        self.inbox = Inbox(self.client, self.topics, config.limits, self.fleet.unwatched,
                           Handlers(self._on_input, self._on_rejected, self._on_connected))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    # --------------------------------------------------------------------- network thread

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            self.inbox.subscribe(client, bool(flags.session_present))

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if not self._stop.is_set():
            self.log.warning("broker_disconnected", reason=str(reason), reconnect="automatic, with back-off")
            systemd.status(f"broker {self.config.broker.address} disconnected ({reason}), reconnecting")

    # --------------------------------------------------------------------- start-up

    def warm_up(self) -> None:
        self.scoring.warm_up()

    def start(self) -> None:
        """Connect, read back the alarm states and come online. Raises :class:`StartupError`."""
        try:
            connect(self.client)
        except BrokerError as exc:
            raise StartupError(str(exc)) from None
        self.log.info("connected", broker=self.config.broker.address, client_id=self.config.broker.client_id)
        self._restore_alarms()
        self._publish_status()
        self.log.info("online", model=self.model_id, device=self.device, machines=list(self.config.machines))
        systemd.ready(self._status_text())

    def _restore_alarms(self) -> None:
        retained = read_retained_alarms(self.client, self.topics, self.config.limits, self.log.warning)
        saved, problem = self.state_file.read()
        if problem:
            self.log.warning("state_file_ignored", reason=problem)
        spec = self.fleet.spec
        trackers, stale = restore_alarm_states(saved, retained, self.config.monitors, spec.policy,
                                               spec.thresholds, self.log.warning)
        self.fleet.restore({m: t.to_dict() for m, t in trackers.items()})
        for machine, tracker in trackers.items():
            self.log.info("alarm_state_restored", machine=machine, state=tracker.state.label, since=tracker.since)
        for machine in stale:  # the retained message disagrees with the state the monitor resumes in
            t = trackers[machine]
            message = AlarmMessage(machine=machine, state=t.state.label, since=t.since, cut=t.cut, score=t.score,
                                   threshold=t.threshold, model=self.model_id)
            self.outbox.publish([Output(machine, message)])

    # --------------------------------------------------------------------- main loop

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Process inputs until :meth:`stop`, then shut down gracefully."""
        status_every = self.config.status_interval_s
        next_status = time.monotonic() + status_every
        while not self._stop.is_set():
            now = time.monotonic()
            self.watchdog.tick(now)  # only while this loop turns
            deadline = self.scoring.deadline()
            wait = min(IDLE_WAKE, next_status - now, IDLE_WAKE if deadline is None else deadline - now)
            call = self.inbox.get(timeout=wait)
            if call is not None:
                call()
            self._score_ready()
            if time.monotonic() >= next_status:
                self._refresh()
                next_status = time.monotonic() + status_every
        self._shutdown()

    def _on_input(self, item: Received) -> None:
        self.counters.messages_in += 1
        machine = item.where.machine
        refusal = self.fleet.over_limit(machine)  # the inbox refused unwatched machines already
        if refusal:
            self._reject(item.topic, refusal)
            return
        try:
            step = self.fleet.pipeline(machine).handle(item.message, channel=item.where.channel, now=time.time())
        except ProtocolError as exc:
            self._reject(item.topic, exc.reason)
            return
        if step.duplicate_samples:
            self.log.debug("duplicate", machine=machine, topic=item.topic, samples=step.duplicate_samples)
        self.scoring.add(step.windows, item.received)
        if self._apply(machine, step):
            self._save_state()

    def _on_rejected(self, item: Rejected) -> None:
        self.counters.messages_in += 1
        self._reject(item.topic, item.reason)

    def _on_connected(self, item: Connected) -> None:
        self.log.info("subscribed", session_present=item.session_present)
        self._publish_status()  # back online after a reconnect (the will may have fired)
        systemd.status(self._status_text())

    def _reject(self, topic: str, reason: str) -> None:
        self.counters.rejected += 1
        self.log.warning("rejected", topic=topic, reason=reason)
        if not self.outbox.error(topic, reason):
            self.counters.errors_suppressed += 1

    def _score_ready(self, force: bool = False) -> None:
        changed = False
        for windows, scores in self.scoring.ready(force):
            changed |= self._apply(windows.machine, self.fleet[windows.machine].scored(windows, scores))
        if changed:
            self._save_state()

    def _apply(self, machine: str, step: Step) -> bool:
        """Count, log and publish what a pipeline step did; whether its alarm state changed."""
        self.counters.gap_samples += step.gap_samples
        self.counters.duplicate_samples += step.duplicate_samples
        for event in step.events:
            getattr(self.log, event.level)(event.name, machine=machine, **event.fields)
        self.outbox.publish(step.outputs)
        return step.alarm_changed

    # --------------------------------------------------------------------- status and state

    def _status(self, state: str, counters: bool = False) -> StatusMessage:
        return StatusMessage(state=state, model=self.model_id, device=self.device, version=__version__,
                             since=self.since, counters=asdict(self.counters) if counters else None)

    def _publish_status(self, state: str = "online"):
        return self.outbox.status(self._status(state, counters=True))

    def _refresh(self) -> None:
        self._publish_status()
        self._save_state()
        latency = self.scoring.take_stats()
        self.log.info("status", **asdict(self.counters), pending=len(self.scoring),
                      queued=self.inbox.qsize(), **latency)
        systemd.status(self._status_text(latency.get("latency_ms_p50")))

    def _status_text(self, latency_p50: float | None = None) -> str:
        return status_text(self.client.is_connected(), len(self.fleet), self.counters, self.fleet.states(),
                           latency_p50)

    def _save_state(self) -> None:
        try:
            self.state_file.write(self.fleet.snapshots(), self.model_id)
        except (OSError, ValueError) as exc:
            self.log.error("state_file_not_written", path=str(self.state_file.path), reason=str(exc))

    # --------------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        systemd.stopping("stopping: scoring what was received, saving the alarm states")
        self.log.info("stopping", pending=len(self.scoring), queued=self.inbox.qsize())
        # What the broker already delivered is acknowledged: process it rather than lose it.
        until = time.monotonic() + SHUTDOWN_DRAIN
        while time.monotonic() < until and (call := self.inbox.get(timeout=0.05)) is not None:
            call()
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
    mismatch = policy_mismatch(bundle.meta.training.get("alarm_policy"), config.alarm)
    if mismatch:
        log.warning("alarm_policy_differs", detail=mismatch)
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
