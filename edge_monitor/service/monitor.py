"""The streaming monitor daemon: the imperative shell around the per-machine pipelines.

Two MQTT connections: one takes the inputs (persistent session, acknowledged by hand), the other
publishes the results. Mosquitto 2.0.11 sends a subscriber far more than its receive maximum
after each acknowledgement (measured: each PUBACK releases up to that many more), so a backlog
fills the input connection; on one connection, the broker's acknowledgements of the monitor's
QoS 1 results queued behind it, and the results (and the checkpoints waiting for them) were held
back for as long as the backlog lasted. On their own connection they go out at once.

Threads: paho's network thread of the input connection only routes and parses each input
(:mod:`.inbox`) and queues it; it never waits for scoring. The main thread runs :meth:`Monitor.run`:
each turn it takes everything queued and hands it to the data path (:mod:`.dataflow`), which
applies each input to its machine's pipeline (:mod:`~edge_monitor.core.fleet`), batches the windows
of all machines and scores them with the bundle's one scoring call (:mod:`.scoring`), hands the
scores back to the pipelines and publishes what they return (:mod:`.outbox`); between, it keeps
the connections watched (:mod:`.liveness`), the checkpoints, a reload and the status.

Two more threads: the metrics endpoint's HTTP server (:mod:`.metrics`), which only reads, and
during a reload (SIGHUP) the thread that loads and traces the new bundle (:mod:`.reload`); the
main loop switches to it between two turns (:meth:`Monitor.switch`).

Start-up order: runtime and device, bundle (and one warm-up batch, so the first real window does not pay for
tracing), the metrics endpoint, broker, the alarm states read back (:mod:`.state`), then ``online``.

Delivery (:mod:`.checkpoint`): inputs are acknowledged by hand, once a checkpoint of every
machine's state (alarm and open cut) that covers them is in the state file and their results are
with the broker. A crash at any moment loses nothing: the broker sends the unacknowledged inputs
again and the pipelines resume from the checkpoint, dropping what it already covers.

Shutdown (SIGTERM/SIGINT): inputs stop being taken; every pending window is scored and published,
a last checkpoint written and what it covers acknowledged, ``offline`` is published and the
session disconnected (it persists on the broker, which keeps what was not acknowledged and queues
new inputs until the monitor is back).

Under systemd (``Type=notify``, :mod:`.systemd`): ``READY=1`` once the model is loaded and warmed
up and the broker connection is up with the alarms read back; ``STATUS=`` lines with the counters
at every status refresh; ``WATCHDOG=1`` from the main loop itself, so a loop that stops iterating
gets the service restarted; ``RELOADING=1`` and ``READY=1`` around a reload; ``STOPPING=1`` when
shutdown begins.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import asdict
from itertools import chain
from typing import TYPE_CHECKING

from .. import __version__
from ..core.alarm import judges_alike, policy_mismatch
from ..core.channels import SAMPLE_RATE_HZ
from ..core.fleet import Fleet
from ..core.outbound import StatusMessage, encode
from ..core.partition import Siblings, partition_of
from ..core.steps import PipelineSpec
from ..core.topics import Topics, monitor_topic
from ..model.meta import BundleMeta, windowing_of  # no TensorFlow
from . import systemd
from .backlog import Backlog
from .checkpoint import CheckpointGroups, Checkpoints
from .checkpoint_writer import CheckpointWriter, SnapshotEncoder, SnapshotJob
from .config import Config
from .dataflow import Dataflow
from .inbox import OTHER_INSTANCE, Connected, Inbox, Received, Rejected
from .liveness import Liveness
from .logging import configure_logging, get_logger
from .metrics import Metrics, MetricsError
from .mqtt import BrokerError, connect, disconnect, make_client
from .outbox import MAX_REASON, Outbox, clip
from .reload import Failed, Prepared, Reloader
from .scoring import Scoring, report_call_size
from .sparkplug import SparkplugEdge
from .state import StateFile, read_retained_alarms, resume
from .status import Counters, status_text

if TYPE_CHECKING:
    from ..model.serving import ServingModel

PUBLISH_WAIT = 5.0  # seconds to wait for the broker to take the last messages at shutdown
IDLE_WAKE = 0.25  # the loop turns at least this often (watchdog, status, batch deadlines)
REFUSAL_LOG_EVERY = 60.0  # seconds: results the broker refuses are logged at most this often (all counted)


class StartupError(RuntimeError):
    """The daemon cannot start; the message names the thing to fix (exit code 2, no traceback)."""


def pipeline_spec(meta: BundleMeta, config: Config, scoring_id: str = "") -> PipelineSpec:
    """What every machine's pipeline shares: the bundle's specs and the configuration's policies."""
    return PipelineSpec(window=meta.window, stable=meta.stable_region, fs=SAMPLE_RATE_HZ, thresholds=meta.thresholds,
                        policy=config.alarm, model_id=meta.model_id, limits=config.limits, scoring_id=scoring_id)


class Monitor:
    """One running monitor: call :meth:`start`, then :meth:`run` until :meth:`stop`."""

    def __init__(self, config: Config, bundle: ServingModel, device: str, reloader: Reloader | None = None) -> None:
        self.config = config
        self.device = device
        self.runtime = bundle.runtime.runtime  # kept by reloads
        self.log = get_logger().bind(instance=config.instance)
        self.meta = bundle.meta  # the running model's: a reload replaces it
        self.reloader = reloader  # systemctl reload (SIGHUP): a new configuration and bundle (service/reload.py)
        self.fleet = Fleet(pipeline_spec(self.meta, config, bundle.scoring_id), config.monitors, config.machines)
        self.topics = Topics(config.topic_root, config.instance)
        self.siblings = Siblings(config.instance)  # the other instances' partitions (core/partition.py)
        self.counters = Counters()
        self.scoring = Scoring(bundle.scorer(), config.batching, self.counters)
        self.metrics = Metrics(config.metrics, self)  # the endpoint (service/metrics.py)
        self.scoring.observer = self.metrics
        self.state_file = StateFile(config.state_file)
        self.since = time.time()
        self.watchdog = systemd.WatchdogPinger(systemd.watchdog_interval())
        self._stop = threading.Event()
        self._shown = "online"  # the state the status topic shows
        self._connections = 0  # connections the main loop has seen
        self._loop_thread = threading.current_thread()  # the thread that starts and runs the loop
        will = (self.topics.status, encode(self._status("offline")), 1, True)
        delivery = config.delivery
        # inputs: a persistent session, acknowledged once checkpointed
        self.client = make_client(config.broker, clean_start=False, manual_ack=True,
                                  receive_maximum=delivery.receive_maximum)
        # results, status (and its will), the retained alarms read back at start, the ping
        self.out = make_client(config.broker.for_outputs(), will=will, clean_start=True)
        self.outbox = Outbox(self.out, self.topics, config.qos, config.errors, config.outputs)
        self._out_reconnected = threading.Event()
        self.inbox = Inbox(self.client, self.topics, config.limits, self._unwatched,
                           max_queued=delivery.max_queued_inputs)
        self.client.message_callback_add(self.topics.statuses, self._on_sibling_status)
        self.checkpoints = Checkpoints(self.client)
        self.groups = CheckpointGroups(delivery.checkpoint_groups, lambda: chain(
            self.fleet.known_machines(), self.flow.touched, tuple(self.checkpoints.held)))
        # writes the state file and acknowledges, off the main loop (checkpoint_writer.py)
        self.writer = CheckpointWriter(self.checkpoints, SnapshotEncoder(self.state_file), lambda: self.inbox.connection,
                                       self.inbox.ack_lock, self._confirmed, self._not_written)
        self.backlog = Backlog(self.inbox, self.checkpoints, config.broker.session_expiry, delivery.degraded_lag_s)
        self.liveness = Liveness(self.client, self.out, self.topics.ping, self.inbox, self.writer,
                                 delivery.stall_timeout_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.out.on_connect = self._on_out_connect
        self.out.on_disconnect = self._on_disconnect
        self.out.on_publish = self._on_out_publish
        self._refusal_logged = -REFUSAL_LOG_EVERY  # monotonic time the last refused result was logged
        self.sparkplug = self._sparkplug() if config.sparkplug.enabled else None
        # inputs to the pipelines, scores, outputs (service/dataflow.py)
        self.flow = Dataflow(self.fleet, self.scoring, self.outbox, self.checkpoints, self.backlog, self.topics,
                             self.counters, self.metrics, self.sparkplug, self.log)

    def _sparkplug(self) -> SparkplugEdge:
        """The Sparkplug B edge node beside the JSON topics (service/sparkplug.py)."""
        config = self.config
        try:
            return SparkplugEdge(config.sparkplug, config.broker, config.instance, config.bd_seq_file,
                                 self.meta.thresholds, self._alarm_of, self.log)
        except OSError as exc:
            raise StartupError(f"sparkplug.bd_seq_file {config.bd_seq_file}: cannot keep the bdSeq there ({exc})") from None

    def _alarm_of(self, machine: str):
        return self.fleet.announcements([machine])[0].message

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    # --------------------------------------------------------------------- network thread

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            self.inbox.subscribe(client, bool(flags.session_present))

    def _unwatched(self, machine: str) -> str | None:
        """Why ``machine``'s inputs are not this instance's (None: they are); OTHER_INSTANCE when
        another instance on the root owns it."""
        problem = self.fleet.unwatched(machine)
        if problem is None or self.siblings.owner(machine) is None:
            return problem
        return OTHER_INSTANCE

    def _on_sibling_status(self, client, userdata, message) -> None:  # network thread
        """An instance's retained status (ours too): its partition, for :meth:`_unwatched`."""
        instance = message.topic.split("/")[-2]
        patterns = partition_of(message.payload)
        if patterns is not None or not message.payload:
            self.siblings.update(instance, patterns)

    def _on_out_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            self._out_reconnected.set()  # the main loop puts the alarms and the status back

    def _on_out_publish(self, client, userdata, mid, reason, properties) -> None:  # network thread
        """The broker's PUBACK of a result: a refusal (MQTT 5 reason code, e.g. not authorized: an ACL
        without the topic) means the result is lost; counted, and logged with what to fix."""
        if reason is None or not reason.is_failure:
            return
        self.counters.outputs_refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_EVERY:
            self._refusal_logged = now
            user = self.config.broker.for_outputs().username or "(anonymous)"
            self.log.error("output_refused", reason=str(reason), refused=self.counters.outputs_refused,
                           detail=f"the broker refuses results of user {user}: its ACL must let it write every "
                           "topic the monitor publishes (deploy/mosquitto/acl; after an upgrade run make-users.sh "
                           "again); `edge-monitor check` names the line missing")

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        which = "inputs" if client is self.client else "outputs"
        if client is self.client:
            self.inbox.disconnected()
        if not self._stop.is_set():
            self.log.warning("broker_disconnected", connection=which, reason=str(reason),
                             reconnect="automatic, with back-off")
            systemd.status(f"broker {self.config.broker.address} disconnected ({reason}), reconnecting")

    # --------------------------------------------------------------------- start-up

    def warm_up(self) -> None:
        self.scoring.warm_up()

    def start(self) -> None:
        """Connect, read back the alarm states and come online. Raises :class:`StartupError`."""
        self._loop_thread = threading.current_thread()
        try:
            # A port in use stops the start before the broker sessions are touched.
            self.metrics.start()
            connect(self.out)  # first: its will says offline if the monitor dies from here on
            connect(self.client)
        except (BrokerError, MetricsError) as exc:
            raise StartupError(str(exc)) from None
        self._out_reconnected.clear()
        self.log.info("connected", broker=self.config.broker.address, client_id=self.config.broker.client_id)
        self._restore()
        self.writer.start()
        self._publish_status()
        if self.sparkplug is not None:
            self.sparkplug.machines(out.message for out in self.fleet.announcements())
            try:
                self.sparkplug.start()
            except BrokerError as exc:
                raise StartupError(f"Sparkplug connection (sparkplug.username): {exc}") from None
        self.log.info("online", model=self.model_id, device=self.device, machines=list(self.config.machines),
                      threads={role: t.native_id for role, t in self.threads().items()})
        systemd.ready(self._status_text())

    def threads(self) -> dict[str, threading.Thread]:
        """The threads that do the work, by role (for their CPU time: `top -H`, the metrics, the
        bench): the main loop, each MQTT connection's network thread, the checkpoint writer."""
        threads = {"main": self._loop_thread}
        for role, client in self._clients().items():
            thread = client._thread  # paho's, private; read once: Sparkplug's may be restarting
            if thread is not None:
                threads[role] = thread
        return {**threads, "checkpoint": self.writer.thread}

    def _clients(self) -> dict:
        """The MQTT connections by role: inputs, outputs and, when enabled, Sparkplug's."""
        clients = {"inputs": self.client, "outputs": self.out}
        if self.sparkplug is not None:
            clients["sparkplug"] = self.sparkplug.client
        return clients

    def _restore(self) -> None:
        """The alarm states (state file and retained topic) and the open cuts of the checkpoint."""
        retained = read_retained_alarms(self.out, self.topics, self.config.limits, self.log.warning)
        saved = self.state_file.read(self.model_id, windowing_of(self.meta))
        for problem in saved.problems:
            self.log.warning("state_file_ignored", reason=problem)
        trackers, stale = resume(self.fleet, saved, retained, self.log.warning, time.time())
        for machine, tracker in trackers.items():
            self.log.info("alarm_state_restored", machine=machine, state=tracker.state.label, since=tracker.since)
        self.flow.touched.update(m for m in saved.streams if m in self.fleet)
        resumed = {m: self.fleet[m].stream.current.cut for m in saved.streams
                   if m in self.fleet and self.fleet[m].stream.current is not None}
        if resumed:
            self.log.info("cuts_resumed", cuts=resumed)
        # the retained messages that disagree with the state the monitor resumes in
        self.outbox.publish(self.fleet.announcements(stale))

    # --------------------------------------------------------------------- main loop

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Process inputs until :meth:`stop`, then shut down gracefully."""
        next_status = time.monotonic() + self.config.status_interval_s
        checkpoint_every = self.config.delivery.checkpoint_interval_ms / 1000.0
        next_checkpoint = time.monotonic() + checkpoint_every
        flow = self.flow
        while not self._stop.is_set():
            now = time.monotonic()
            self.watchdog.tick(now)  # only while this loop turns
            deadline = self.scoring.deadline()
            wait = min(IDLE_WAKE, next_status - now, next_checkpoint - now,
                       IDLE_WAKE if deadline is None else deadline - now)
            items = self.inbox.take(timeout=wait)
            for item in items:
                if type(item) is Received:
                    flow.input(item)
                elif type(item) is Rejected:
                    flow.rejected(item)
                else:
                    self._on_connected(item)
            self.inbox.done(items)
            if self.sparkplug is not None:
                flow.sparkplug_turn()
            flow.score_ready()
            now = time.monotonic()
            if now >= next_checkpoint:
                self.liveness.check(now, self._clients().values())
                flow.expire()
                self._checkpoint()
                self.metrics.look(self.fleet, self.backlog.lag())
                self._watch_backlog()
                next_checkpoint = now + checkpoint_every
            if self._out_reconnected.is_set():
                self._out_reconnected.clear()
                self._announce_again()
            if self.reloader is not None and self.reloader.busy and not self._stop.is_set():
                outcome = self.reloader.poll(self.config, self.meta)
                if isinstance(outcome, Prepared):
                    self.switch(outcome)
                    next_status = min(next_status, time.monotonic() + self.config.status_interval_s)
                elif isinstance(outcome, Failed):
                    self._reload_failed(outcome.reason)
            if now >= next_status:
                self._refresh()
                next_status = time.monotonic() + self.config.status_interval_s
        self._shutdown()

    def _on_connected(self, item: Connected) -> None:
        self.log.info("subscribed", session_present=item.session_present)
        self._connections += 1
        self.liveness.connected_at = time.monotonic()
        if self._connections > 1 and not item.session_present:
            # The broker lost the session (restarted without its database): what data acquisition
            # sent between the broker's return and this subscription was not queued for us.
            self.log.warning("session_lost", detail="inputs sent while the monitor was not subscribed "
                             "were not kept by the broker; gaps in the cuts will say which")
        self._publish_status()  # back online after a reconnect (the will may have fired)
        systemd.status(self._status_text())

    def _announce_again(self) -> None:
        """The output connection is back: put every machine's alarm state and the status on the
        broker again, whatever it kept. A broker restored from an older database (a crash) keeps
        the sessions it had saved, so ``session_present`` proves nothing about the retained topics:
        an alarm raised or cleared after that save is gone from them. One retained message per
        machine per reconnection; the monitor's state wins over whatever the broker kept, as at
        start. Dashboards see the same ``state`` and ``since`` again: a repeat, not a transition."""
        announcements = self.fleet.announcements()
        self.checkpoints.published(self.outbox.publish(announcements))
        self._publish_status()
        self.log.info("alarms_announced_again", machines=len(announcements))

    # --------------------------------------------------------------------- checkpoints

    def _checkpoint(self, always: bool = False) -> None:
        """Close an epoch: score what waits, then snapshot every machine, or with checkpoint
        groups the next group (see :mod:`.checkpoint`). Only when something changed since the last
        one, unless ``always`` (shutting down)."""
        open_epoch = self.checkpoints.open
        touched, urgent = self.flow.touched, self.flow.urgent
        urgent |= self.fleet.take_left()  # idle machines that left memory: their records leave the file
        if (not (always or open_epoch.acks or open_epoch.outputs or touched or urgent or self.checkpoints.holding())
                or not self.checkpoints.can_close()):
            return
        self.flow.score_all()
        group = None if always or self.state_file.path is None else self.groups.next()
        if group is not None and urgent:
            group |= urgent
        urgent.clear()
        snapshot = None
        if self.state_file.path is not None:  # copies (rows: views never written again), for the writer's thread
            changed = touched if group is None else touched & group
            snapshot = SnapshotJob(self.fleet.streams(changed), frozenset(self.fleet.machines()),
                                   self.fleet.snapshots(group), self.model_id, windowing_of(self.meta),
                                   self.fleet.spec.scoring_id, self.fleet.spec.policy, group)
        if group is None:
            touched.clear()
        else:
            touched -= group
        self.checkpoints.close(snapshot, group)
        self.writer.wake()
        self.counters.checkpoints += 1

    def _confirmed(self, progress) -> None:  # the writer's thread
        """A checkpoint was written and the inputs it covers acknowledged."""
        self.counters.inputs_acknowledged += progress.acknowledged
        self.metrics.confirmed(progress.confirmed)

    def _not_written(self, exc: Exception) -> None:  # the writer's thread
        self.counters.checkpoints_failed += 1
        self.log.error("state_file_not_written", path=str(self.state_file.path), reason=str(exc),
                       unacknowledged=self.checkpoints.unacknowledged)

    # --------------------------------------------------------------------- reload

    def switch(self, new: Prepared) -> None:
        """Switch to a reloaded configuration and model between two turns of the loop (see
        :mod:`.reload`): the old model scores every window cut so far, the new one every window
        after; the alarm states carry over (``core/alarm.carried_over``) and are announced again
        with the new model id."""
        old, old_model = self.config, self.model_id
        self.flow.score_all()
        config, meta = new.config, new.bundle.meta
        kept = False  # whether the machines' alarm histories and references stay
        if meta.model_id != old_model or config.alarm != old.alarm:
            spec = pipeline_spec(meta, config, new.bundle.scoring_id)
            kept = spec.scoring_id == self.fleet.spec.scoring_id and judges_alike(old.alarm, config.alarm)
            announcements = self.fleet.switch_model(spec)
            self.groups.whole()  # every alarm state carried over: the next checkpoint takes them all
            self.flow.touched.update(self.fleet.states())  # the open cuts' scores so far were the old model's
        else:
            announcements, kept = [], True  # the same model and rule: the alarm history stands
        self.scoring.switch(new.scorer, config.batching)
        self.outbox.configure(config.qos, config.errors, config.outputs)
        if config.logging.level != old.logging.level:
            configure_logging(config.logging.format, config.logging.level)
            self.log = self.flow.log = get_logger().bind(instance=config.instance)
        self.config, self.meta = config, meta
        # The old model was frozen out of the collector's sight at start (daemon.py); the new one
        # must be too, and the old one freed: one full collection (~0.2 s) per reload.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.checkpoints.published(self.outbox.publish(announcements))
        if self.sparkplug is not None:
            self.sparkplug.configure(meta.thresholds)
            self.sparkplug.outputs(announcements)
        self._publish_status()
        self.log.info("reloaded", model=self.model_id, previous_model=old_model, bundle=str(config.bundle),
                      thresholds={"warning": meta.thresholds.warning, "alarm": meta.thresholds.alarm},
                      operating_point=meta.thresholds.describe(), kept_history=kept,
                      announced=len(announcements), waiting_for_restart=list(new.waiting))
        mismatch = policy_mismatch(meta.training.get("alarm_policy"), config.alarm)
        if mismatch:
            self.log.warning("alarm_policy_differs", detail=mismatch)
        report_call_size(self.log, new.bundle)
        if new.waiting:
            self.log.warning("restart_needed", settings=list(new.waiting),
                             detail="changed in the configuration, applied at the next restart")
        note = f"; {', '.join(new.waiting)} changed: applied at the next restart" if new.waiting else ""
        systemd.ready(f"reloaded: model {self.model_id}{note}; " + self._status_text())

    def _reload_failed(self, reason: str) -> None:
        """Nothing changed: the old configuration and model run on; say why, everywhere an operator looks."""
        self.log.error("reload_failed", reason=reason, model=self.model_id)
        text = f"reload failed, model {self.model_id} runs on: {reason}"
        # not held back by the errors rate limit: a flood of bad input must not hide it
        self.outbox.error(monitor_topic(self.config.topic_root, self.config.instance, "reload"), text, limited=False)
        systemd.ready(clip(text, MAX_REASON))

    # --------------------------------------------------------------------- status and state

    def _status(self, state: str, counters: bool = False) -> StatusMessage:
        return StatusMessage(state=state, model=self.model_id, device=self.device, version=__version__,
                             machines=self.config.machines,
                             since=self.since, counters=asdict(self.counters) if counters else None,
                             backlog=self.backlog.figures() if counters else None, runtime=self.runtime,
                             operating_point=self.meta.thresholds.operating_point())

    def _publish_status(self, state: str | None = None):
        state = state or self.backlog.state()
        if state != self._shown and "offline" not in (state, self._shown):
            getattr(self.log, "warning" if state == "degraded" else "info")(
                "degraded" if state == "degraded" else "caught_up", **self.backlog.figures())
        self._shown = state
        self.counters.outputs_dropped = self.outbox.dropped + self.checkpoints.dropped
        if self.sparkplug is not None:
            self.counters.sparkplug_unsent = self.sparkplug.unsent
        status = self._status(state, counters=True)
        info = self.outbox.status(status)
        if self.sparkplug is not None:
            self.sparkplug.status(status, len(self.fleet))
        return info

    def _watch_backlog(self) -> None:
        """Publish the status as soon as the monitor falls behind or catches up."""
        state = self.backlog.state()
        if state != self._shown:
            self._publish_status(state)
        self.backlog.new_look()

    def _refresh(self) -> None:
        self._publish_status()
        latency = self.scoring.take_stats()
        self.log.info("status", **asdict(self.counters), pending=len(self.scoring),
                      queued=self.inbox.qsize(), **latency)
        systemd.status(self._status_text(latency.get("latency_ms_p50")))

    def _status_text(self, latency_p50: float | None = None) -> str:
        connected = self.client.is_connected() and self.out.is_connected()
        return status_text(connected, len(self.fleet), self.counters, self.fleet.states(), latency_p50, self.model_id)

    # --------------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        if self.reloader is not None:
            self.reloader.wait(PUBLISH_WAIT)  # not exiting under a model being loaded; it is not used
        systemd.stopping("stopping: scoring what was received, saving the alarm states")
        # What waits in the inbox is not acknowledged: the broker sends it again to the next session.
        self.inbox.close()
        self.log.info("stopping", pending=len(self.scoring), queued=self.inbox.qsize(),
                      unacknowledged=self.checkpoints.unacknowledged)
        self._checkpoint(always=True)
        self.writer.flush(time.monotonic() + PUBLISH_WAIT, self.out.is_connected)
        self.writer.stop()
        info = self._publish_status("offline")
        try:
            info.wait_for_publish(PUBLISH_WAIT)
        except (RuntimeError, ValueError):  # not connected: the will says offline instead
            pass
        if self.sparkplug is not None:
            self.sparkplug.stop()  # its NDEATH: the node and its devices are stale in SCADA now
        disconnect(self.client)
        disconnect(self.out)
        self.metrics.stop()
        self.log.info("stopped", **asdict(self.counters))
