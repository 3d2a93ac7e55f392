"""The machines one monitor tracks: which inputs it takes, each machine's pipeline, alarm states.

A machine gets its pipeline on its first accepted input; one whose alarm state was restored at
start-up (state file or retained alarm) starts from that snapshot. The number of pipelines is
bounded (``limits.max_machines``): a publisher inventing machine ids cannot exhaust memory, and
the inputs of machines past the bound are refused with a reason naming the configuration key.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from .alarm import AlarmTracker, carried_over
from .inbound import Command, CutStart, InboundMessage, SignalChunk, SignalFrame
from .outbound import AlarmMessage
from .pipeline import MachinePipeline
from .snapshot import SnapshotError
from .steps import Output, PipelineSpec, Step


class Fleet:
    def __init__(
        self,
        spec: PipelineSpec,
        watches: Callable[[str], bool],
        watched: tuple[str, ...],
    ) -> None:
        self.spec = spec
        self.watches = watches  # whether a machine id is one this monitor watches
        self.watched = watched  # the configured ids and patterns, for the reason text
        self._pipelines: dict[str, MachinePipeline] = {}
        self._restored: dict[str, dict] = {}  # alarm snapshots waiting for their machine's pipeline
        self._had_snapshot: set[str] = set()  # pipelines created from a snapshot
        self._left: set[str] = set()  # machines whose pipeline left memory since take_left()

    def __len__(self) -> int:
        return len(self._pipelines)

    def __contains__(self, machine: object) -> bool:
        return machine in self._pipelines

    def __getitem__(self, machine: str) -> MachinePipeline:
        return self._pipelines[machine]

    def restore(self, snapshots: Mapping[str, dict]) -> None:
        """The alarm states machines resume in (``AlarmTracker.to_dict``), before any input."""
        if self._pipelines:
            raise RuntimeError("alarm states are restored before the first input, not after")
        self._restored = dict(snapshots)

    def resume(self, streams: Mapping[str, object], now: float = 0.0) -> list[tuple[str, str]]:
        """Reopen the cuts that were open at the checkpoint (``MachinePipeline.to_state`` by
        machine), after :meth:`restore`. Returns (machine, problem) for each snapshot that could not
        be used: that machine starts with no open cut (its alarm state is kept)."""
        problems = []
        for machine, state in streams.items():
            if not self.watches(machine):
                continue
            if machine in self._pipelines or len(self._pipelines) >= self.spec.limits.max_machines:
                problems.append((machine, "more open cuts than limits.max_machines"))
                continue
            try:
                pipe = self._new_pipeline(machine)
                pipe.restore(state)
                pipe.last_input = now  # the cut's timeout counts from the restart
            except (SnapshotError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
                # SnapshotError names the field; anything else is a snapshot its checks let through
                problems.append((machine, f"{type(exc).__name__}: {exc}"[:300]))
                continue
            self._restored.pop(machine, None)
            self._pipelines[machine] = pipe
        return problems

    def machines(self) -> list[str]:
        """The machines with a pipeline in memory."""
        return list(self._pipelines)

    def streams(self, machines: Iterable[str]) -> dict[str, dict]:
        """The open-cut snapshots (``MachinePipeline.to_state``) of ``machines`` that have a pipeline."""
        return {m: self._pipelines[m].to_state() for m in machines if m in self._pipelines}

    def unwatched(self, machine: str) -> str | None:
        """Why the inputs of ``machine`` are not this monitor's, or None when they are."""
        if self.watches(machine):
            return None
        return (f"unknown machine {machine!r}: this monitor watches {', '.join(self.watched)} "
                "(configuration key machines)")

    def over_limit(self, machine: str) -> str | None:
        """Why a watched ``machine`` cannot be tracked (one machine too many), or None."""
        if machine in self._pipelines or len(self._pipelines) < self.spec.limits.max_machines:
            return None
        return (f"too many machines: this monitor already tracks {len(self._pipelines)}, the limit "
                f"(configuration key limits.max_machines); {machine!r} is not tracked")

    def refuse(self, machine: str, message: InboundMessage) -> str | None:
        """Why ``message`` may not create ``machine``'s pipeline, or None. A pipeline is created by a
        cut start, or by a command for a machine whose alarm state is known: made-up ids sending
        chunks or commands cannot take the places of real machines."""
        if self.known(machine) or isinstance(message, CutStart):
            return self.over_limit(machine)
        if isinstance(message, Command):
            return f"{message.cmd} for machine {machine!r}, which has sent no cut yet: nothing to {message.cmd}"
        kind = "chunk" if isinstance(message, SignalChunk) else "frame" if isinstance(message, SignalFrame) else "end"
        return f"{kind} for cut {message.cut!r}, which never started"

    def known(self, machine: str) -> bool:
        """Whether ``machine`` has a pipeline or an alarm state."""
        return machine in self._pipelines or machine in self._restored

    def known_machines(self) -> list[str]:
        """The machines with a pipeline or an alarm state."""
        return [*self._pipelines, *(m for m in self._restored if m not in self._pipelines)]

    def take_left(self) -> set[str]:
        """The machines whose pipeline left memory (idle, or discarded) since the last call."""
        left, self._left = self._left, set()
        return left

    def discard(self, machine: str) -> None:
        """Forget the pipeline that the machine's first input created but did not open (a refused
        cut start): it holds nothing."""
        pipe = self._pipelines.get(machine)
        if pipe is not None and pipe.idle:
            self._leave(machine, keep_state=machine in self._had_snapshot)  # a known state stays known

    def expire(self, now: float) -> list[tuple[str, Step]]:
        """Close the cuts with no input for ``limits.cut_timeout_s`` (aborted, with their summary),
        and let machines idle for ``limits.idle_machine_s`` leave memory (their alarm state stays,
        as a snapshot). Returns the steps of the cuts closed."""
        limits = self.spec.limits
        steps = []
        for machine, pipe in list(self._pipelines.items()):
            quiet = now - pipe.last_input
            if pipe.stream.is_open and quiet >= limits.cut_timeout_s:
                steps.append((machine, pipe.abort(f"no input for {quiet:.0f} s (limits.cut_timeout_s)")))
            elif pipe.idle and quiet >= limits.idle_machine_s:
                self._leave(machine, keep_state=True)
        return steps

    def pipeline(self, machine: str) -> MachinePipeline:
        """The pipeline of ``machine``, created (from its restored alarm state, if any) on first use."""
        pipe = self._pipelines.get(machine)
        if pipe is None:
            pipe = self._pipelines[machine] = self._new_pipeline(machine)
            if self._restored.pop(machine, None):
                self._had_snapshot.add(machine)
        return pipe

    def _new_pipeline(self, machine: str) -> MachinePipeline:
        """A pipeline for ``machine``, with its restored alarm state if it has one (not yet tracked)."""
        snapshot = self._restored.get(machine)
        tracker = AlarmTracker.from_dict(self.spec.policy, self.spec.thresholds, snapshot) if snapshot else None
        return MachinePipeline(machine, self.spec, tracker)

    def _leave(self, machine: str, keep_state: bool) -> None:
        """The pipeline of ``machine`` leaves memory; with ``keep_state`` its alarm state stays, as a snapshot."""
        pipe = self._pipelines.pop(machine)
        self._left.add(machine)
        if keep_state:
            self._restored[machine] = pipe.tracker.to_dict()

    def switch_model(self, spec: PipelineSpec) -> list[Output]:
        """Another model, or alarm policy, from now on (a reload): every pipeline switches
        (:meth:`MachinePipeline.switch_model`), the alarm states not in memory are carried over
        too. Returns every known alarm state, announced again with the new model id (the same
        state and ``since``: not a transition). Raises ValueError, changing nothing, when the new
        spec windows cuts differently or changes the limits."""
        if (spec.window, spec.stable, spec.fs, spec.limits) != (self.spec.window, self.spec.stable,
                                                                self.spec.fs, self.spec.limits):
            raise ValueError("the new model must window cuts as the running one does, with the same limits")
        same_scores = bool(spec.scoring_id) and spec.scoring_id == self.spec.scoring_id
        old_policy = self.spec.policy
        self.spec = spec
        for pipe in self._pipelines.values():
            pipe.switch_model(spec)
        self._restored = {m: AlarmTracker.from_dict(old_policy, spec.thresholds, s)
                          .for_model(spec.policy, spec.thresholds, same_scores).to_dict()
                          if same_scores else carried_over(s, spec.thresholds) for m, s in self._restored.items()}
        return self.announcements()

    def snapshots(self, machines: Iterable[str] | None = None) -> dict[str, dict]:
        """Every machine's alarm state as a snapshot (``AlarmTracker.to_dict``), restored or live;
        or those of ``machines`` that have one."""
        if machines is None:
            out = dict(self._restored)
            out.update({m: p.tracker.to_dict() for m, p in self._pipelines.items()})
            return out
        out = {}
        for m in machines:
            pipe = self._pipelines.get(m)
            if pipe is not None:
                out[m] = pipe.tracker.to_dict()
            elif m in self._restored:
                out[m] = self._restored[m]
        return out

    def announcements(self, machines: Iterable[str] | None = None) -> list[Output]:
        """The alarm message of each of ``machines`` (default: every machine with a known state) as
        it stands: what the retained alarm topic must show."""
        snapshots = self.snapshots()
        out = []
        for machine in sorted(snapshots if machines is None else set(machines) & set(snapshots)):
            pipe = self._pipelines.get(machine)
            if pipe is not None:
                out.append(Output(machine, pipe.shown_alarm()))
                continue
            s = snapshots[machine]
            message = AlarmMessage(machine=machine, state=str(s.get("state")), since=s.get("since"),
                                   cut=s.get("cut"), score=s.get("score"), threshold=s.get("threshold"),
                                   model=self.spec.model_id)
            out.append(Output(machine, message))
        return out

    def states(self) -> dict[str, str]:
        """Every machine's alarm state label."""
        states = {m: str(s.get("state")) for m, s in self._restored.items()}
        states.update({m: p.state.label for m, p in self._pipelines.items()})
        return states
