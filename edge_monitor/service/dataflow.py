"""The monitor's data path, one input at a time: to its machine's pipeline, the windows to the
scorer, and what the pipelines hand out (scores, alarms, summaries, log events, faults) to the
outbox and the Sparkplug edge node; the refusals counted and echoed on the errors topic.

:class:`Dataflow` holds what the path needs and the one thing it adds: which machines' state
changed since the last checkpoint (``touched``), which the checkpoint takes. The main loop
(:mod:`.monitor`) calls it between its own concerns (connections, checkpoints, reload, status);
nothing here waits, and only the main thread calls it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..core.fleet import Fleet
from ..core.inbound import Command
from ..core.outbound import ScoreBatchMessage, ScoreMessage
from ..core.steps import Step
from ..core.topics import ProtocolError, StaleInput, Topics, machine_id_problem
from .backlog import Backlog
from .checkpoint import Checkpoints
from .inbox import OTHER_INSTANCE, Received, Rejected
from .metrics import Metrics
from .outbox import MAX_REASON, MAX_TOPIC_ECHO, Outbox, clip
from .scoring import Scoring
from .sparkplug import Refused, SparkplugEdge
from .status import Counters

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger


SCORE_TYPES = (ScoreMessage, ScoreBatchMessage)  # outputs that move no retained state


class Dataflow:
    def __init__(self, fleet: Fleet, scoring: Scoring, outbox: Outbox, checkpoints: Checkpoints, backlog: Backlog,
                 topics: Topics, counters: Counters, metrics: Metrics, sparkplug: SparkplugEdge | None,
                 log: FilteringBoundLogger) -> None:
        self.fleet, self.scoring, self.outbox, self.checkpoints = fleet, scoring, outbox, checkpoints
        self.backlog, self.topics, self.counters, self.metrics = backlog, topics, counters, metrics
        self.sparkplug = sparkplug
        self.log = log  # the monitor's: a reload that changes the log level binds a new one
        self.touched: set[str] = set()  # machines whose open cut changed since the last checkpoint
        # Machines the next checkpoint takes whatever their group (delivery.checkpoint_groups): new
        # ones, those that published an alarm or a summary, and those changed by something no held
        # input repeats after a crash (a cut timed out, a reset from a Sparkplug host), so that the
        # state file is as current for them as with every machine in every checkpoint.
        self.urgent: set[str] = set()

    def input(self, item: Received) -> None:
        """A parsed input of a watched machine, from the inbox."""
        self.counters.messages_in += 1
        self.metrics.inputs[type(item.message)] += 1
        self.counters.inputs_redelivered += item.delivery.dup
        self.checkpoints.applied(item.delivery, item.where.machine)  # acknowledged with its machine's next snapshot
        self.take(item.where.machine, item.message, item.where.channel, item.topic, item.delivery.dup, item.received)

    def take(self, machine: str, message, channel: str | None, topic: str, redelivered: bool,
             received: float) -> None:
        """One input to its machine's pipeline, and what it did published: a JSON input, or a
        reset a Sparkplug host asked for (the same path, limits and checkpoint)."""
        created = machine not in self.fleet
        if isinstance(message, Command) and not self.fleet.known(machine):
            # a new tool before the machine's first cut: its state is normal already, and a
            # made-up id must not get a pipeline nor a retained alarm
            self.log.info("reset_of_new_machine", machine=machine, by=message.by)
            return
        refusal = self.fleet.refuse(machine, message)  # the inbox refused unwatched machines already
        if refusal:
            self.reject(topic, refusal, "untracked_machine")
            return
        try:
            step = self.fleet.pipeline(machine).handle(message, channel=channel, now=time.time())
        except StaleInput as exc:
            if created:
                self.fleet.discard(machine)
            if redelivered:  # sent again after a crash or reconnect; the checkpoint has it
                self.counters.duplicate_inputs += 1
                self.log.debug("duplicate", machine=machine, topic=topic, reason=exc.reason)
            else:
                self.reject(topic, exc.reason, "stale")
            return
        except ProtocolError as exc:
            if created:
                self.fleet.discard(machine)
            self.reject(topic, exc.reason, "pipeline")
            return
        self.touched.add(machine)
        if created:
            self.urgent.add(machine)
        self.backlog.note(self.fleet[machine].stream.current, message)
        if step.duplicate_samples:
            self.log.debug("duplicate", machine=machine, topic=topic, samples=step.duplicate_samples)
        if self.sparkplug is not None:
            self.sparkplug.seen(machine)  # the device is born at its first cut, before its data
        self.scoring.add(step.windows, received)
        self.apply(machine, step)

    def sparkplug_turn(self) -> None:
        """Births, rebirths and the primary host (service/sparkplug.py); device resets through
        the path of the JSON reset."""
        for item in self.sparkplug.turn():
            if isinstance(item, Refused):
                self.report(item.topic, item.reason, "sparkplug_command_refused")
            else:
                refusal = machine_id_problem(item.machine) or self.fleet.unwatched(item.machine)
                if refusal:
                    self.report(item.topic, refusal, "sparkplug_command_refused")
                    continue
                self.log.info("sparkplug_reset", machine=item.machine, topic=item.topic)
                self.take(item.machine, Command("reset", by="sparkplug"), None, item.topic, False, time.monotonic())
                self.urgent.add(item.machine)  # not an MQTT input: nothing would repeat it after a crash

    def rejected(self, item: Rejected) -> None:
        """An input the inbox refused before it reached a pipeline."""
        self.counters.messages_in += 1
        self.checkpoints.applied(item.delivery)
        self.metrics.refused(item)
        if item.reason == OTHER_INSTANCE:  # another instance's machine: not an error, not ours
            self.counters.inputs_other_instance += 1
            return
        self.reject(item.topic, item.reason, item.stage)

    def reject(self, topic: str, reason: str, stage: str) -> None:
        """``stage``: where it was refused, the label of the metric (metrics.REJECT_STAGES)."""
        self.counters.rejected += 1
        self.metrics.rejected[stage] += 1
        self.report(topic, reason, "rejected")

    def report(self, topic: str, reason: str, event: str) -> None:
        """Log a problem and echo it on the errors topic, both within the errors rate limit."""
        if self.outbox.error(topic, reason):
            self.log.warning(event, topic=clip(topic, MAX_TOPIC_ECHO), reason=clip(reason, MAX_REASON))
        else:
            self.counters.errors_suppressed += 1

    def score_ready(self, force: bool = False) -> None:
        """Score the batches that are due (all that wait, with ``force``) and apply the scores."""
        for windows, scores in self.scoring.ready(force):
            self.touched.add(windows.machine)
            self.apply(windows.machine, self.fleet[windows.machine].scored(windows, scores))

    def score_all(self) -> None:
        while len(self.scoring):
            self.score_ready(force=True)

    def apply(self, machine: str, step: Step) -> None:
        """Count, log and publish what a pipeline step did."""
        self.counters.gap_samples += step.gap_samples
        self.counters.duplicate_samples += step.duplicate_samples
        self.counters.nonfinite_scores += step.nonfinite_scores
        for event in step.events:
            getattr(self.log, event.level)(event.name, machine=machine, **event.fields)
        if step.outputs:
            self.metrics.published(step.outputs)
            if any(type(out.message) not in SCORE_TYPES for out in step.outputs):
                self.urgent.add(machine)  # an alarm or a summary: the retained state moved
        self.checkpoints.published(self.outbox.publish(step.outputs))
        if step.outputs and self.sparkplug is not None:  # after the JSON topics, which are authoritative
            self.sparkplug.outputs(step.outputs)
        for fault in step.faults:
            self.report(self.topics.machine(machine, self.outbox.score_leaf), fault, "nonfinite_score")

    def expire(self) -> None:
        """Close cuts whose input stopped; let idle machines leave memory."""
        for machine, step in self.fleet.expire(time.time()):
            self.touched.add(machine)
            self.urgent.add(machine)
            self.scoring.add(step.windows, time.monotonic())
            self.apply(machine, step)
