"""The benchmark's measured runs against its broker: the broker's fan-in to a do-nothing
subscriber, and the real daemon fed by the load generator.

Each run has a directory of its own under the output (logs, the daemon's configuration and state
file, the generator's records) and a topic root of its own, so that runs share nothing but the
broker. Every process a run starts is stopped when it ends, also on an error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..archive.mill import Archive
from ..model.meta import BundleMeta
from ..service.config import ConfigError, load_config
from .accounting import account, expected_windows, window_starts
from .broker import BenchBroker
from .load import LoadInput, LoadPlan, active_span, build_plan
from .loadgen import read_records
from .probe import ScoreProbe
from .procs import Child, ProcSampler

ONLINE_TIMEOUT = 300.0  # seconds for the daemon to load TensorFlow and the bundle on a busy box
READY_TIMEOUT = 300.0  # for the generator to read the archive and encode its payloads


class BenchError(RuntimeError):
    """A run could not be carried out; the message says why (and shows the end of a log)."""


@dataclass
class Bench:
    """What every run shares."""

    broker: BenchBroker
    archive_path: Path
    archive: Archive
    bundle_path: Path
    meta: BundleMeta
    out: Path
    cuts: int = 1
    seed: int = 0
    encoding: str = "json"
    daemon_config: dict = field(default_factory=dict)  # the daemon's settings before the per-run ones
    stall_timeout: float = 60.0  # seconds without a result, the load sent, before a run gives up
    python: str = sys.executable
    daemon_source: Path | None = None  # another checkout whose daemon to run (comparing versions)

    def plan(self, root: str, machines: int, speed: float, inp: LoadInput) -> LoadPlan:
        return build_plan(self.archive, machines, cuts=self.cuts, chunk=inp.samples, speed=speed, root=root,
                          seed=self.seed, frames=inp.frames)

    def daemon_env(self) -> dict:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if self.daemon_source is not None:  # its edge_monitor package before the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.daemon_source.resolve()), env.get("PYTHONPATH")]))
        return env

    def run_dir(self, label: str) -> Path:
        where = self.out / label
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        return where

    def loadgen(self, where: Path, root: str, machines: int, speed: float, inp: LoadInput) -> Child:
        args = [self.python, "-m", "edge_monitor.bench.loadgen", "--broker", self.broker.address,
                "--archive", str(self.archive_path), "--root", root, "--machines", str(machines),
                "--records", str(where / "records.npz"), "--cuts", str(self.cuts), "--chunk", str(inp.samples),
                "--speed", str(speed), "--seed", str(self.seed), "--encoding", inp.encoding or self.encoding,
                *(["--frames"] if inp.frames else [])]
        return Child("load generator", args, log=where / "loadgen.log", stdin=True)


def wait_ready(gen: Child, plan: LoadPlan) -> None:
    line = gen.line(READY_TIMEOUT)
    if line != f"ready {len(plan)}":
        raise BenchError(f"the load generator did not get ready (said {line!r}, expected 'ready {len(plan)}')"
                         f"{gen.log_tail()}")


def finish_loadgen(gen: Child, plan: LoadPlan, where: Path, timeout: float) -> tuple[np.ndarray, float]:
    """Wait for the generator's end; the monotonic time of each message of ``plan``, and the CPU
    seconds the generator used publishing."""
    code = gen.wait(timeout)
    if code != 0:
        raise BenchError(f"the load generator {'did not finish' if code is None else f'exited with {code}'}"
                         f"{gen.log_tail()}")
    published, times, cpu = read_records(where / "records.npz")
    if published.meta() != plan.meta() or not np.array_equal(published.due, plan.due):
        raise BenchError("the load generator published another plan than the benchmark expects")
    return times, cpu


def run_fanin(bench: Bench, machines: int, inp: LoadInput) -> dict:
    """Messages/s the broker delivers to a do-nothing QoS 1 subscriber, from the generator at speed 0."""
    label = f"fanin-{inp.label}-{machines:03d}"
    where, root = bench.run_dir(label), f"bench-{label}"
    plan = bench.plan(root, machines, 0.0, inp)
    with ExitStack() as stack:
        gen = bench.loadgen(where, root, machines, 0.0, inp)
        stack.callback(gen.stop)
        wait_ready(gen, plan)
        sink = Child("sink", [bench.python, "-m", "edge_monitor.bench.sink", "--broker", bench.broker.address,
                              "--root", root, "--expect", str(len(plan)), "--idle-timeout", "10"],
                     log=where / "sink.log")
        stack.callback(sink.stop)
        if sink.line(30) != "subscribed":
            raise BenchError(f"the fan-in subscriber did not subscribe{sink.log_tail()}")
        gen.send("go")
        times, _ = finish_loadgen(gen, plan, where, 600)
        if sink.wait(60) is None:
            raise BenchError(f"the fan-in subscriber did not finish{sink.log_tail()}")
        got = json.loads(sink.line(5) or "{}")
    if not got.get("received"):
        raise BenchError(f"the fan-in subscriber received nothing{sink.log_tail()}")
    first = float(times.min())
    seconds = got["last"] - first
    return {"machines": machines, "chunk": inp.samples, "frames": inp.frames, "input": inp.label, "messages": len(plan), "received": got["received"],
            "seconds": round(seconds, 3), "msgs_per_s": round(got["received"] / seconds, 1),
            "publish_msgs_per_s": round(len(plan) / (float(times.max()) - first), 1)}


def write_daemon_config(bench: Bench, where: Path, machines: int) -> Path:
    config = {"metrics": {"port": 0}, **bench.daemon_config, "machines": "*", "state_file": str(where / "state.json"),
              "status_interval_s": 1, "logging": {"format": "json", "level": "info"}}
    limits = dict(config.get("limits") or {})
    limits["max_machines"] = max(int(limits.get("max_machines", 0)), machines)  # room for every machine of the run
    config["limits"] = limits
    path = where / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        load_config(path)
    except ConfigError as exc:
        raise BenchError(f"the daemon's configuration: {exc}") from None
    return path


def run_daemon(bench: Bench, machines: int, speed: float, inp: LoadInput) -> dict:
    """The daemon (its own process) fed ``machines`` at ``speed`` (0: as fast as possible)."""
    label = f"{'realtime' if speed == 1 else f'speed{speed:g}'}-{inp.label}-{machines:03d}"
    where, root = bench.run_dir(label), f"bench-{label}"
    plan = bench.plan(root, machines, speed, inp)
    starts = window_starts(bench.archive, plan, bench.meta.window, bench.meta.stable_region)
    config = write_daemon_config(bench, where, machines)
    with ExitStack() as stack:
        probe = ScoreProbe(bench.broker.host, bench.broker.port, root, label).start()
        stack.callback(probe.stop)
        gen = bench.loadgen(where, root, machines, speed, inp)
        stack.callback(gen.stop)
        started = time.monotonic()
        daemon = Child("daemon", [bench.python, "-m", "edge_monitor", "run", "--config", str(config),
                                  "--broker", bench.broker.address, "--bundle", str(bench.bundle_path),
                                  "--root", root, "--instance", label],
                       log=where / "daemon.log", capture=False, env=bench.daemon_env(), cwd=bench.daemon_source)
        stack.callback(daemon.stop)
        _wait_online(daemon, probe)
        online_s = time.monotonic() - started  # the process started, the model loaded, the broker reached
        wait_ready(gen, plan)
        threads = {f"thread:{role}": f"{daemon.pid}/task/{tid}" for role, tid in daemon_threads(where / "daemon.log").items()}
        sampler = ProcSampler({"daemon": daemon.pid, "broker": bench.broker.pid, "loadgen": gen.pid,
                               "bench": os.getpid(), "box": None, **threads}).start()
        stack.callback(sampler.stop)
        gen.send("go")
        complete = _wait_results(bench, plan, gen, daemon, probe)
        sampler.stop()
        exit_code = daemon.stop(60)
        times, loadgen_cpu = finish_loadgen(gen, plan, where, 60)
    expected = expected_windows(plan, times, starts, bench.meta.window, bench.meta.stable_region)
    acc = account(expected, probe.scores)
    acc.save(where / "latencies.npz")
    return {**_daemon_figures(plan, times, acc, probe, sampler, loadgen_cpu, complete, exit_code, label),
            "input": inp.label, "start_to_online_s": round(online_s, 2)}


def daemon_threads(log: Path, wait: float = 2.0) -> dict[str, int]:
    """The daemon's working threads by role (main, inputs, outputs, checkpoint), their native ids
    as its ``online`` log line names them (written just after its status says online: waited for up
    to ``wait`` seconds); none from a daemon that does not name them (an older checkout)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            if '"online"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "online":
                threads = record.get("threads")
                threads = threads if isinstance(threads, dict) else {}
                return {str(role): tid for role, tid in threads.items() if isinstance(tid, int)}
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.1)


def _wait_online(daemon: Child, probe: ScoreProbe) -> None:
    deadline = time.monotonic() + ONLINE_TIMEOUT
    while not probe.online.wait(0.2):
        if not daemon.running or time.monotonic() > deadline:
            raise BenchError(f"the daemon did not come online{daemon.log_tail()}")


def _wait_results(bench: Bench, plan: LoadPlan, gen: Child, daemon: Child, probe: ScoreProbe) -> bool:
    """Wait for every cut's summary; False when the results stopped coming (or the daemon died)."""
    cuts = {(s.machine, s.cut_id) for s in plan.slots}
    seen, quiet_since = -1, time.monotonic()
    while not cuts <= probe.summaries.keys():
        time.sleep(0.1)
        if not daemon.running:
            return False
        if gen.running:
            quiet_since = time.monotonic()
        elif probe.progress() != seen:
            seen, quiet_since = probe.progress(), time.monotonic()
        elif time.monotonic() - quiet_since > bench.stall_timeout:
            return False
    return True


def _daemon_figures(plan: LoadPlan, times: np.ndarray, acc, probe: ScoreProbe, sampler: ProcSampler,
                    loadgen_cpu: float, complete: bool, exit_code: int, label: str) -> dict:
    first, last_publish = float(times.min()), float(times.max())
    # the last result: a cut's summary comes once its end is applied, after its last window's score
    end = max([*probe.summaries.values(), acc.last_arrival or first])
    seconds = end - first
    daemon = sampler.usage["daemon"]
    if plan.speed > 0:
        a, b = active_span(plan)
        began = float(times[0]) - float(plan.due[0]) / plan.speed  # the generator's clock start
        steady = (began + a / plan.speed, began + b / plan.speed)
    else:
        steady = (first + 1.0, end - 1.0)  # the ramps of a run at full speed left out
    span = daemon.t[-1] - daemon.t[0] if len(daemon.t) > 1 else float("nan")
    cores_mean = daemon.cpu_used / span
    cores_steady = daemon.cores_between(*steady)
    if cores_steady is None:  # a steady part too short for two samples: the whole run
        steady, cores_steady = (daemon.t[0], daemon.t[-1]), cores_mean
    received = len(acc.latency)
    threads = {name.split(":", 1)[1]: u for name, u in sampler.usage.items() if name.startswith("thread:")}
    thread_cores = {role: u.cores_between(*steady) for role, u in threads.items()}
    used = {name: u.cpu_used for name, u in sampler.usage.items() if not name.startswith("thread:")}
    used["loadgen"] = loadgen_cpu
    box = sampler.usage["box"]
    foreign = (used["box"] - sum(v for name, v in used.items() if name != "box")) / (box.t[-1] - box.t[0])
    figures = {
        "label": label,
        "machines": len(plan.machines),
        "speed": plan.speed,
        "chunk": plan.chunk,
        "frames": plan.frames,
        "cuts": len(plan.slots),
        "messages": len(plan),
        "publish_seconds": round(last_publish - first, 3),
        "seconds": round(seconds, 3),  # first publish -> last result
        "complete": complete,
        "daemon_exit_code": exit_code,
        "msgs_per_s_in": round(len(plan) / seconds, 1),
        "offered_msgs_per_s": round(len(plan) / (last_publish - first), 1),
        "windows_per_s": round(received / seconds, 1),
        "cpu_seconds": round(daemon.cpu_used, 3),
        "cpu_ms_per_msg": round(1000 * daemon.cpu_used / len(plan), 4),
        "cpu_cores_steady": round(cores_steady, 3),
        "cpu_cores_mean": round(cores_mean, 3),
        # the steady part's cores by thread: which one is at its limit (main, inputs, outputs, checkpoint)
        "thread_cores_steady": {role: None if c is None else round(c, 3) for role, c in thread_cores.items()},
        "steady_s": [round(steady[0] - first, 3), round(steady[1] - first, 3)],
        "rss_max_mib": round(max(daemon.rss_kib, default=0) / 1024, 1),
        **acc.summary(),
        "results_unreadable": probe.bad[:5],
        "daemon_device": probe.status.get("device"),
        "daemon_runtime": probe.status.get("runtime"),
        "status": probe.status,
        "usage": {name: u.series(first) for name, u in sampler.usage.items() if not name.startswith("thread:")},
        "cpu_seconds_by_process": {name: round(v, 3) for name, v in used.items()},  # box: every process
        "other_load_cores": round(foreign, 3),  # processes on the box that are not the benchmark's
    }
    return figures
