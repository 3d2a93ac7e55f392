"""The machines one monitor tracks: which inputs it takes, each machine's pipeline, alarm states.

A machine gets its pipeline on its first accepted input; one whose alarm state was restored at
start-up (state file or retained alarm) starts from that snapshot. The number of pipelines is
bounded (``limits.max_machines``): a publisher inventing machine ids cannot exhaust memory, and
the inputs of machines past the bound are refused with a reason naming the configuration key.
"""

from __future__ import annotations

from typing import Callable, Mapping

from .alarm import AlarmTracker
from .pipeline import MachinePipeline, PipelineSpec


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

    def __len__(self) -> int:
        return len(self._pipelines)

    def __getitem__(self, machine: str) -> MachinePipeline:
        return self._pipelines[machine]

    def restore(self, snapshots: Mapping[str, dict]) -> None:
        """The alarm states machines resume in (``AlarmTracker.to_dict``), before any input."""
        if self._pipelines:
            raise RuntimeError("alarm states are restored before the first input, not after")
        self._restored = dict(snapshots)

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

    def pipeline(self, machine: str) -> MachinePipeline:
        """The pipeline of ``machine``, created (from its restored alarm state, if any) on first use."""
        pipe = self._pipelines.get(machine)
        if pipe is None:
            snapshot = self._restored.pop(machine, None)
            tracker = AlarmTracker.from_dict(self.spec.policy, self.spec.thresholds, snapshot) if snapshot else None
            pipe = self._pipelines[machine] = MachinePipeline(machine, self.spec, tracker)
        return pipe

    def snapshots(self) -> dict[str, dict]:
        """Every machine's alarm state as a snapshot (``AlarmTracker.to_dict``), restored or live."""
        out = dict(self._restored)
        out.update({m: p.tracker.to_dict() for m, p in self._pipelines.items()})
        return out

    def states(self) -> dict[str, str]:
        """Every machine's alarm state label."""
        states = {m: str(s.get("state")) for m, s in self._restored.items()}
        states.update({m: p.state.label for m, p in self._pipelines.items()})
        return states
