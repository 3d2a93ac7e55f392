"""What crosses the boundary of a machine's pipeline: its spec in, and what each step hands out
(windows to score, messages to publish, log events). Pure data; :mod:`.pipeline` makes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .alarm import AlarmPolicy, Thresholds
from .inbound import DEFAULT_LIMITS, Limits
from .outbound import MachineOutput, ScoreBatchMessage, ScoreMessage
from .stable_region import StableRegionSpec
from .windowing import WindowSpec


@dataclass(frozen=True)
class PipelineSpec:
    """What every machine's pipeline shares: the bundle's specs and the daemon's policies."""

    window: WindowSpec
    stable: StableRegionSpec
    fs: float  # the model's sample rate, Hz: a cut at another rate is refused
    thresholds: Thresholds
    policy: AlarmPolicy
    model_id: str
    limits: Limits = DEFAULT_LIMITS
    scoring_id: str = ""  # what makes the scores (model/meta.scoring_id); "" unknown


@dataclass(frozen=True, eq=False)
class WindowBatch:
    """Consecutive windows of one cut of one machine, waiting to be scored."""

    machine: str
    cut: str
    regime: str  # the cut's operating regime (calibration.regime_key): which healthy reference scores it
    offsets: np.ndarray  # (n,) first sample of each window in the cut
    ts: np.ndarray  # (n,) when that sample was taken: the cut's start ts + offset / fs
    data: np.ndarray  # (n, length, channels) raw float64 signal values

    def __len__(self) -> int:
        return int(self.offsets.size)

    def split(self, n: int) -> tuple["WindowBatch", "WindowBatch"]:
        """The first ``n`` windows and the rest."""
        cut = slice(None, n), slice(n, None)
        return tuple(  # type: ignore[return-value]
            WindowBatch(self.machine, self.cut, self.regime, self.offsets[s], self.ts[s], self.data[s]) for s in cut
        )


@dataclass(frozen=True)
class Output:
    """A message to publish on one of the machine's topics (the message knows its topic leaf)."""

    machine: str
    message: MachineOutput


def score_batches(outputs: Sequence[Output]) -> list[Output]:
    """``outputs`` with each run of score messages of one machine, cut and model made one
    :class:`~.outbound.ScoreBatchMessage`; the other messages keep their places (an alarm or a
    summary between two scores splits the run), so the order of everything published stays."""
    grouped: list[Output] = []
    run: list[ScoreMessage] = []
    machine = ""
    for out in outputs:
        m = out.message
        if type(m) is ScoreMessage and run and out.machine == machine and m.cut == run[0].cut \
                and m.model == run[0].model:
            run.append(m)
            continue
        if run:
            grouped.append(Output(machine, ScoreBatchMessage(tuple(run))))
            run = []
        if type(m) is ScoreMessage:
            run, machine = [m], out.machine
        else:
            grouped.append(out)
    if run:
        grouped.append(Output(machine, ScoreBatchMessage(tuple(run))))
    return grouped


@dataclass(frozen=True)
class Event:
    """Something worth a log line: its name, fields and level."""

    name: str
    fields: dict[str, Any]
    level: str = "info"


@dataclass
class Step:
    """What one inbound message (or one scored batch) did to the pipeline."""

    windows: list[WindowBatch] = field(default_factory=list)  # to score, in order
    outputs: list[Output] = field(default_factory=list)  # to publish now, in order
    duplicate_samples: int = 0
    gap_samples: int = 0
    events: list[Event] = field(default_factory=list)
    alarm_changed: bool = False  # what the alarm topic shows changed
    faults: list[str] = field(default_factory=list)  # problems to report on the errors topic
    nonfinite_scores: int = 0
