"""The Prometheus / OpenMetrics endpoint (``metrics:`` in config.yaml; the metrics: docs/metrics.md).

The hot path pays for it a dict increment per input (~70 ns): the main loop counts in plain dicts
(:class:`Metrics`) whose keys all exist from the start, so that the scrape thread can copy them
while they change, and a collector reads those and the monitor's live figures at scrape time. What
the scrape thread must not compute itself (the fleet's dicts change under it) the main loop hands
over at each checkpoint turn as a fresh dict (:meth:`Metrics.look`). The histograms are bucket
counts kept here, added to once per run of windows (its windows share one latency):
prometheus_client's ``Histogram.observe`` takes a lock per bucket and sum, ~2 µs for every window.
prometheus_client serves them from a registry of their own (not the process-wide one), with the
process, platform and garbage-collector figures it collects itself.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import itertools
import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..core.alarm import Level
from ..core.inbound import Command, CutEnd, CutStart, SignalChunk, SignalFrame
from ..core.outbound import LEVELS, SENSOR_FAULT, ScoreMessage
from ..core.steps import Output
from .config import MetricsEndpoint
from .inbox import Rejected
from .status import Counters

if TYPE_CHECKING:
    from ..core.fleet import Fleet
    from .monitor import Monitor

PREFIX = "edge_monitor_"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: inputs by kind: the parsed message's type ...
INPUT_KINDS: dict[type, str] = {SignalChunk: "signal", SignalFrame: "frame", CutStart: "cut_start", CutEnd: "cut_end",
                                 Command: "command"}
#: ... or, refused before their payload was parsed, their topic's kind ("unparsed": the topic itself)
TOPIC_KINDS: dict[str, str] = {"signal": "signal", "frame": "frame", "cut": "cut", "cmd": "command"}
#: where an input was refused: a bounded label (the reasons themselves are free text)
REJECT_STAGES: tuple[str, ...] = ("topic", "unwatched_machine", "payload", "untracked_machine", "pipeline", "stale")
COUNTER_HELP: dict[str, str] = {
    "messages_in": "Inputs received (every one, also those rejected)",
    "windows_scored": "Windows scored",
    "gap_samples": "Samples missing in the cuts' signals, filled in",
    "duplicate_samples": "Samples received twice, dropped",
    "batches": "Inference calls (batches of windows)",
    "errors_suppressed": "Rejections logged but not echoed on the errors topic (its rate limit)",
    "inputs_redelivered": "Inputs the broker marked as sent before (after a crash or reconnect)",
    "duplicate_inputs": "Redelivered inputs the checkpoint already covered, dropped",
    "inputs_acknowledged": "Inputs acknowledged to the broker, once a checkpoint covered them",
    "checkpoints": "Checkpoints taken",
    "checkpoints_failed": "State file writes that failed (nothing acknowledged)",
    "outputs_dropped": "QoS 0 results dropped while disconnected (as of the last status message)",
    "nonfinite_scores": "Windows that scored non-finite",
    "inputs_other_instance": "Inputs of machines another monitor instance on the topic root owns, dropped unreported",
    "sparkplug_unsent": "Sparkplug B messages not sent while its connection was down (the next birth has the state)",
    "outputs_refused": "Results the broker refused (its ACL), not delivered",
}
WEAR_LEVEL: dict[str, int] = {level.label: int(level) for level in Level}
# seconds, per window: from its input's arrival to its score's publication (max_wait_ms is 50 by default)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # seconds per batch


class MetricsError(RuntimeError):
    """The endpoint cannot listen; the message names the key to fix (``metrics.port``...)."""


class Buckets:
    """A histogram's counts, one writer (the main loop); ``value`` lands in the first bucket
    whose upper bound it does not exceed (Prometheus's ``le``)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.sum
        cumulative = itertools.accumulate(counts)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        return HistogramMetricFamily(name, documentation, buckets=list(zip(les, cumulative)), sum_value=total)


class Metrics:
    """The monitor's figures for the endpoint, and the endpoint (:meth:`start`, :meth:`stop`)."""

    def __init__(self, settings: MetricsEndpoint, monitor: Monitor) -> None:
        self.settings = settings
        self.monitor = monitor
        # counted by the main loop (every key present from the start: the scrape thread copies them)
        self.inputs: dict[type, int] = dict.fromkeys(INPUT_KINDS, 0)  # by the parsed message's type
        self.unparsed: dict[str, int] = dict.fromkeys([*TOPIC_KINDS.values(), "unparsed"], 0)
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_STAGES, 0)
        self.scores: dict[str, int] = dict.fromkeys(LEVELS, 0)
        # 1, 2, 4, ... 65536: the whole range of batching.max_batch, which a reload may change
        self.batch_windows = Buckets(tuple(2.0 ** i for i in range(17)))
        self.inference = Buckets(INFERENCE_BUCKETS)
        self.latency = Buckets(LATENCY_BUCKETS)
        self.checkpointed = time.monotonic()  # when the last checkpoint was confirmed (or the monitor built)
        # handed over by the main loop at each checkpoint turn
        self.levels: dict[str, tuple[int, bool]] = {}  # machine -> (wear level, sensor fault shown)
        self.lag = 0.0
        self.registry = CollectorRegistry()
        for builtin in (ProcessCollector, PlatformCollector, GCCollector):
            builtin(registry=self.registry)
        self.registry.register(_Live(self))
        self._server = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the main loop's calls

    def refused(self, item: Rejected) -> None:
        """An input the inbox refused before its payload was parsed (or with its payload)."""
        self.unparsed["unparsed" if item.stage == "topic" else TOPIC_KINDS.get(item.kind, "unparsed")] += 1

    def published(self, outputs: list[Output]) -> None:
        for out in outputs:
            message = out.message
            if type(message) is ScoreMessage:
                self.scores[message.level] += 1

    def batch(self, size: int, infer_seconds: float, latencies: list[tuple[float, int]]) -> None:
        """A scored batch (:class:`~.scoring.ScoringObserver`)."""
        self.batch_windows.observe(size)
        self.inference.observe(infer_seconds)
        for seconds, n in latencies:
            self.latency.observe(seconds, n)

    def confirmed(self, checkpoints: int) -> None:
        if checkpoints:
            self.checkpointed = time.monotonic()

    def look(self, fleet: Fleet, lag: float) -> None:
        """What the scrape thread reads of the fleet, and the lag (:meth:`.backlog.Backlog.lag`: it counts
        the age of the data applied since the last turn), as they stand now."""
        levels = {}
        for machine, state in fleet.states().items():
            if state in WEAR_LEVEL:
                levels[machine] = (WEAR_LEVEL[state], machine in fleet and fleet[machine].level == SENSOR_FAULT)
        self.levels, self.lag = levels, lag

    # ------------------------------------------------------------------ the endpoint

    def start(self) -> None:
        """Listen on ``metrics.address``:``metrics.port`` (unless disabled); :class:`MetricsError`
        naming the key when it cannot."""
        s = self.settings
        if not s.enabled:
            return
        try:
            self._server, self._thread = start_http_server(s.port, s.address, registry=self.registry)
        except OSError as exc:
            raise MetricsError(_problem(s, exc)) from None
        host, port = self._server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        self.monitor.log.info("metrics_endpoint", url=f"http://{shown}:{port}/metrics", address=host, port=port)

    @property
    def port(self) -> int | None:
        """The port listened on (None: not listening)."""
        return None if self._server is None else self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # the port is free again
            self._thread.join(5.0)
            self._server = self._thread = None


def _problem(s: MetricsEndpoint, exc: OSError) -> str:
    where = f"{s.address}:{s.port}"
    if isinstance(exc, socket.gaierror):
        return (f"metrics.address: cannot listen on {s.address!r} ({exc.strerror}); give an address of this "
                "machine (127.0.0.1, or 0.0.0.0 for every interface)")
    if exc.errno == errno.EADDRINUSE:
        return (f"metrics.port: {s.port} is in use on {s.address} (another monitor or exporter?); set metrics.port "
                "to a free port, or metrics.enabled: false")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"metrics.address: {s.address} is not an address of this machine ({exc.strerror})"
    if exc.errno == errno.EACCES:
        return f"metrics.port: listening on {where} is not permitted ({exc.strerror}); use a port above 1023"
    return f"metrics: cannot listen on {where} ({exc.strerror or exc})"


class _Live(Collector):
    """The monitor's figures, read at scrape time (prometheus_client's HTTP thread)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m, monitor = self.metrics, self.metrics.monitor
        counters = monitor.counters
        for f in dataclasses.fields(Counters):
            if f.name != "rejected":  # by stage below; the stages add up to it
                yield CounterMetricFamily(PREFIX + f.name, COUNTER_HELP.get(f.name, f.name),
                                          value=getattr(counters, f.name))
        rejected = CounterMetricFamily(PREFIX + "rejected", "Inputs rejected, by where: topic, unwatched_machine, "
                                       "payload, untracked_machine, pipeline, stale", labels=["reason"])
        for stage, n in list(m.rejected.items()):
            rejected.add_metric([stage], n)
        yield rejected
        inputs = CounterMetricFamily(PREFIX + "inputs", "Inputs received, by kind (cut, signal, command and "
                                     "unparsed: refused before their payload or topic was parsed)", labels=["kind"])
        totals = {INPUT_KINDS[t]: n for t, n in list(m.inputs.items())}
        for kind, n in list(m.unparsed.items()):
            totals[kind] = totals.get(kind, 0) + n
        for kind, n in totals.items():
            inputs.add_metric([kind], n)
        yield inputs
        scores = CounterMetricFamily(PREFIX + "scores", "Windows scored, by the level published with the score",
                                     labels=["level"])
        for level, n in list(m.scores.items()):
            scores.add_metric([level], n)
        yield scores
        yield m.batch_windows.family(PREFIX + "batch_windows", "Windows per inference call")
        yield m.inference.family(PREFIX + "inference_seconds", "Inference time per batch")
        yield m.latency.family(PREFIX + "score_latency_seconds",
                               "Per window, from its input's arrival to its score's publication")
        now = time.monotonic()
        lag = max(m.lag, monitor.inbox.lag(now))  # the inbox's own: also while the main loop is stuck
        yield _gauge("lag_seconds", "How far behind the monitor is (the status's backlog.lag_s)", lag)
        yield _gauge("queued_inputs", "Inputs waiting in the monitor", monitor.inbox.qsize())
        yield _gauge("unacknowledged_inputs", "Inputs processed, not yet acknowledged",
                     monitor.checkpoints.unacknowledged)
        yield _gauge("pending_windows", "Windows waiting for their batch", len(monitor.scoring))
        yield _gauge("machines_tracked", "Machines with a pipeline in memory", len(monitor.fleet))
        yield _gauge("checkpoint_age_seconds", "Seconds since the last checkpoint was confirmed (written, its "
                     "inputs acknowledged); grows while idle", now - m.checkpointed)
        connected = GaugeMetricFamily(PREFIX + "broker_connected", "1 while the connection to the broker is up",
                                      labels=["connection"])
        connected.add_metric(["inputs"], float(monitor.client.is_connected()))
        connected.add_metric(["outputs"], float(monitor.out.is_connected()))
        yield connected
        level = GaugeMetricFamily(PREFIX + "alarm_level", "Alarm state: 0 normal, 1 warning, 2 alarm (the wear "
                                  "state, also under a sensor fault)", labels=["machine"])
        fault = GaugeMetricFamily(PREFIX + "sensor_fault", "1 while the machine shows sensor_fault",
                                  labels=["machine"])
        for machine, (wear, faulty) in sorted(m.levels.items()):
            level.add_metric([machine], wear)
            fault.add_metric([machine], float(faulty))
        yield level
        yield fault
        cpu = CounterMetricFamily(PREFIX + "thread_cpu_seconds", "CPU time of each of the monitor's working threads "
                                  "(main loop, the MQTT connections' network threads, checkpoint writer): which one "
                                  "is at its limit", labels=["thread"])
        for role, thread in monitor.threads().items():
            seconds = thread_cpu_seconds(thread.native_id)
            if seconds is not None:
                cpu.add_metric([role], seconds)
        yield cpu
        yield InfoMetricFamily(PREFIX + "model", "The model scoring now, the runtime and device it runs on, the "
                               "monitor's version", value={"model_id": monitor.model_id, "device": monitor.device,
                                                           "runtime": monitor.runtime, "version": __version__})


def thread_cpu_seconds(native_id: int | None) -> float | None:
    """CPU seconds (user + system) of this process's thread ``native_id`` (Linux's /proc; None
    elsewhere, or once the thread is gone)."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            return stat_cpu_seconds(f.read())
    except OSError:
        return None


def stat_cpu_seconds(stat: bytes | str) -> float:
    """CPU seconds (user + system) in a ``/proc/.../stat`` line, of a process or of a thread."""
    if isinstance(stat, str):
        stat = stat.encode()
    fields = stat[stat.rindex(b")") + 2:].split()  # the command's name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value if math.isfinite(value) else math.nan)
