"""Scoring: the windows of all machines, batched for the bundle's one scoring call.

Pipelines hand out their windows as :class:`~edge_monitor.core.pipeline.WindowBatch` arrays; the
:class:`~edge_monitor.core.batching.Batcher` packs them into batches of at most ``max_batch``
windows (splitting a run where it must) and :meth:`WindowScorer.score` scales, infers and
calibrates each batch in one call. Every window's input-to-score latency and every batch's size
and inference time are recorded for the status, and handed to the ``observer`` (the metrics'
histograms, :mod:`.metrics`) when there is one.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from ..core.batching import Batcher
from ..core.scores import WindowScores
from ..core.steps import WindowBatch
from ..model.scorer import WindowScorer  # neither this nor serving imports TensorFlow
from ..model.serving import ServingModel, call_size_warning
from .config import Batching
from .status import Counters


@dataclass(frozen=True, eq=False)
class _Queued:
    """A run of windows and when the input that completed them arrived (monotonic)."""

    windows: WindowBatch
    received: float

    def __len__(self) -> int:
        return len(self.windows)

    def split(self, n: int) -> tuple["_Queued", "_Queued"]:
        head, rest = self.windows.split(n)
        return _Queued(head, self.received), _Queued(rest, self.received)


@dataclass
class ScoringStats:
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


class ScoringObserver(Protocol):
    def batch(self, size: int, infer_seconds: float, latencies: list[tuple[float, int]]) -> None:
        """A batch was scored and its results published: its windows, its inference time and
        (seconds from input to publication, windows) of each run of windows in it."""


def report_call_size(log, serving: ServingModel) -> None:
    """Warn when the runtime scores in smaller calls than usual to keep each window's bits
    (model/serving.call_size_warning): at start and after a reload."""
    slow = call_size_warning(serving)
    if slow:
        log.warning("small_inference_calls", rows=serving.scorer().inference.rows, detail=slow)


def warm_up(scorer: WindowScorer) -> None:
    """Trace ``scorer``'s inference function now rather than on the first live window."""
    scorer.raw_scores(np.zeros((1, scorer.window_length, scorer.n_channels)))


class Scoring:
    def __init__(self, scorer: WindowScorer, batching: Batching, counters: Counters) -> None:
        self.scorer = scorer
        self.batcher: Batcher[_Queued] = Batcher(batching.max_batch, batching.max_wait_ms)
        self.stats = ScoringStats()
        self.counters = counters  # windows_scored and batches are counted here
        self.observer: ScoringObserver | None = None

    def __len__(self) -> int:
        """Windows waiting to be scored."""
        return len(self.batcher)

    def warm_up(self) -> None:
        """Trace the inference function now rather than on the first live window."""
        warm_up(self.scorer)

    def switch(self, scorer: WindowScorer, batching: Batching) -> None:
        """Score with another scorer (a reload), once every window waiting has been scored."""
        if len(self.batcher):
            raise RuntimeError("score the windows waiting before switching scorers")
        self.scorer = scorer
        self.batcher = Batcher(batching.max_batch, batching.max_wait_ms)

    def take_stats(self) -> dict:
        """Latency, batch and inference figures since the last call (for the status)."""
        summary, self.stats = self.stats.summary(), ScoringStats()
        return summary

    def add(self, runs: list[WindowBatch], received: float) -> None:
        """Queue the windows an input completed; ``received``: when that input arrived (monotonic).
        Their wait for a batch counts from then: windows whose input waited in the inbox (behind a
        checkpoint, say) have waited already, and go in the next batch."""
        for windows in runs:
            self.batcher.add(_Queued(windows, received), received)

    def deadline(self) -> float | None:
        return self.batcher.deadline()

    def ready(self, force: bool = False) -> Iterator[tuple[WindowBatch, WindowScores]]:
        """Score every batch that is ready (with ``force``: everything waiting) and yield each run
        of windows with its calibrated scores, in arrival order."""
        while batch := self.batcher.take(time.monotonic(), force=force):
            data = np.concatenate([q.windows.data for q in batch])
            regimes = [q.windows.regime for q in batch for _ in range(len(q))]
            started = time.perf_counter()
            scores = self.scorer.score(data, regimes)
            infer_seconds = time.perf_counter() - started
            self.stats.infer_seconds += infer_seconds
            at = 0
            for q in batch:
                yield q.windows, scores.subset(slice(at, at + len(q)))
                at += len(q)
            done = time.monotonic()  # after the caller published the batch's results
            self.stats.latencies.extend(done - q.received for q in batch for _ in range(len(q)))
            self.stats.batch_sizes.append(at)
            self.counters.windows_scored += at
            self.counters.batches += 1
            if self.observer is not None:
                self.observer.batch(at, infer_seconds, [(done - q.received, len(q)) for q in batch])
