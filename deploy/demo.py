"""``make demo``: the whole product on one machine, as a SCADA dashboard would see it.

Starts a local Mosquitto with the deployment's configuration (users, ACL, TLS listener) on free
ports, starts the monitor daemon with the monitor's credentials, replays machines from the
archive through the broker with the replay user's credentials, and shows each machine's state
live from the retained alarm topics with the SCADA user's credentials. Then it stops everything it
started and prints a summary: cuts, windows scored, alarms raised (and the cut they were raised
at), and the end-to-end latency from the message that completes a window to its score reaching
the dashboard.

    .venv/bin/python deploy/demo.py --archive data/synthetic-mill.mat --bundle runs/demo/bundle
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.publisher import Publisher
from edge_monitor.archive.replay import plan_machines, replay
from edge_monitor.service.mqtt import BrokerSettings, connect, disconnect, make_client
from edge_monitor.service.native_log import NativeCapture, own_process_output

HERE = Path(__file__).resolve().parent
ROOT = "mill"
DEFAULT_CASES = "13,9,14,3"  # three tools that wear out and one that does not


def local_broker(workdir: Path, machines: list[str]):
    """Mosquitto with the deploy configuration, set up as install.sh sets up a box but in a folder
    and on free ports: the same set-up the deployment tests use (tests/deploy_broker.py). With the
    demo user `replay` (make-users.sh --replay), which plays every machine and sends the resets;
    a box installed by install.sh has no such user."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from deploy_broker import DeployBroker

    # The demo's own dashboard user: `scada` stays free for a dashboard you connect yourself
    # (docs/scada.md), since a second connection of one user takes the first one's place.
    return DeployBroker(workdir, tuple(machines), root=ROOT, replay=True, dashboards=(DASHBOARD_NAME,))


@dataclass
class MachineView:
    """What the dashboard knows of one machine."""

    case: int | None = None
    cut: str = "-"
    cuts_done: int = 0
    windows: int = 0
    score: float | None = None
    state: str = "normal"
    state_cut: str = "-"


DASHBOARD_NAME = "demo"  # make-users.sh --dashboard demo: the user scada-demo
DASHBOARD_USER = f"scada-{DASHBOARD_NAME}"


class Dashboard:
    """A SCADA-like subscriber: retained alarms, scores and summaries; measures latency."""

    def __init__(self, settings: BrokerSettings, machines: list[str], completes: "CompletionClock",
                 broker_log: Path | None = None) -> None:
        self.user, self.broker_log = settings.username, broker_log
        self.view = {m: MachineView() for m in machines}
        self.alarms: list[tuple[str, str, str, float]] = []  # machine, state, cut, since
        self.latencies: list[float] = []
        self.windows = 0
        self.status = "-"
        self._completes = completes
        self._lock = threading.Lock()
        self.dropped = 0  # times the connection was lost
        self.client = make_client(settings, clean_start=True)
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.dropped += 1

    def problem(self) -> str | None:
        """What keeps this dashboard from seeing the monitor, when it is not the monitor: its
        connection closed by the broker, by another client logging in as its user (Mosquitto
        closes the older connection of a client id, and it takes the id from the user name,
        without telling an MQTT 5 client why: the broker's log says it)."""
        if not self.dropped:
            return None
        log = self.broker_log.read_text(errors="replace") if self.broker_log and self.broker_log.exists() else ""
        if f"Client {self.user} already connected, closing old connection" in log:
            return (f"another client logged in as {self.user}, the demo dashboard's user, and took its connection "
                    "(the broker allows one connection per user): give that client a user of its own, "
                    "`make-users.sh --dashboard NAME` (docs/scada.md, \"Connecting\")")
        return f"the broker closed the demo dashboard's connection {self.dropped} times; its log: {self.broker_log}"

    def start(self) -> None:
        connect(self.client)
        for suffix in ("+/alarm", "+/score", "+/summary", "_monitor/+/status"):
            self.client.subscribe(f"{ROOT}/{suffix}", qos=1)

    def stop(self) -> None:
        disconnect(self.client)

    def _on_message(self, client, userdata, msg) -> None:
        now = time.perf_counter()
        parts = msg.topic.split("/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if parts[1] == "_monitor":
                self.status = body.get("state", "?")
                return
            machine, kind = parts[1], parts[2]
            view = self.view.setdefault(machine, MachineView())
            if kind == "score":
                self.windows += 1
                view.windows += 1
                view.score = body["score"]
                view.cut = body["cut"]
                done = self._completes.when(machine, body["cut"], body["offset"])
                if done is not None:
                    self.latencies.append(now - done)
            elif kind == "summary":
                view.cuts_done += 1
            elif kind == "alarm":
                if body["state"] != view.state or not msg.retain:
                    view.state, view.state_cut = body["state"], body.get("cut") or "-"
                    if not msg.retain and body["state"] != "normal":
                        self.alarms.append((machine, body["state"], view.state_cut, body["since"]))

    def table(self) -> str:
        with self._lock:
            rows = [f"{'machine':<9}{'case':>5}  {'cut':<12}{'cuts':>5}{'windows':>9}{'score':>8}  {'state':<8}{'since cut':<12}"]
            for m, v in sorted(self.view.items()):
                score = "-" if v.score is None else f"{v.score:.2f}"
                rows.append(
                    f"{m:<9}{v.case or '-':>5}  {v.cut:<12}{v.cuts_done:>5}{v.windows:>9}{score:>8}  "
                    f"{v.state.upper() if v.state != 'normal' else v.state:<8}{v.state_cut:<12}"
                )
            rows.append(f"monitor {self.status}; {self.windows} windows scored")
            problem = self.problem()
            if problem:
                rows.append(f"WARNING: {problem}")
            return "\n".join(rows)


class CompletionClock:
    """When the replay published the message that lets the monitor decide each window.

    A window [o, o + 64) is decided once every channel holds the samples up to the end of the
    stable-region detector's look-ahead after it, or when its cut ends. The replay publishes a
    block of rows as one frame, or as six chunks in channel order (the last channel's chunk
    completes the block).
    """

    def __init__(self, window: int, block: int, lookahead_blocks: int) -> None:
        self.window, self.block, self.h = window, block, lookahead_blocks
        self._chunks: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        self._ends: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def record(self, machine: str, cut: str, kind: str, topic: str, last_sample: int) -> None:
        now = time.perf_counter()
        with self._lock:
            if kind == "frame" or (kind == "chunk" and topic.endswith("/AE_spindle")):
                self._chunks[(machine, cut)].append((last_sample, now))
            elif kind == "end":
                self._ends[(machine, cut)] = now

    def when(self, machine: str, cut: str, offset: int) -> float | None:
        need = ((offset + self.window - 1) // self.block + 1 + self.h) * self.block  # samples needed
        with self._lock:
            for last, t in self._chunks.get((machine, cut), ()):
                if last >= need:
                    return t
            return self._ends.get((machine, cut))


def write_monitor_config(path: Path, broker, bundle: Path, workdir: Path) -> None:
    config = {
        "broker": {"host": "127.0.0.1", "port": broker.port, "username": "edge-monitor",
                   "password_file": str(broker.password_file("edge-monitor")),
                   "output_username": "edge-monitor-out",
                   "output_password_file": str(broker.password_file("edge-monitor-out"))},
        "topic_root": ROOT,
        "instance": "demo",
        "machines": "*",
        "bundle": str(bundle.resolve()),
        "device": "auto",
        "state_file": str(workdir / "alarm-state.json"),
        "status_interval_s": 2,
        "logging": {"format": "json", "level": "info"},
        "metrics": {"port": 0},  # any free port (its URL is in the log): the box's own monitor may hold 8469
    }
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--machines", type=int, default=4)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--speed", type=float, default=20.0, help="real time times X (default %(default)s)")
    parser.add_argument("--frames", action=argparse.BooleanOptionalAction, default=True,
                        help="each block of samples as one frame of every channel, as a data acquisition "
                             "samples them (default); --no-frames: a chunk per channel")
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo/live"))
    args = parser.parse_args(argv)

    args.workdir = args.workdir.resolve()  # the monitor resolves config paths against the config file
    with NativeCapture(during="bundle") as native:  # the bundle module loads TensorFlow: its lines to the log
        from edge_monitor.model.bundle import read_bundle_meta
        from edge_monitor.model.device import sees_no_gpu

        if sees_no_gpu():  # then CUDA's complaints about it are no news
            native.expect_no_gpu()
    meta = read_bundle_meta(args.bundle)
    archive = read_archive(args.archive)
    cases = [int(c) for c in args.cases.split(",")]
    plan = plan_machines(archive, args.machines, [c for c in cases if c in archive.by_case()] or None)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)

    started = time.monotonic()
    broker = local_broker(args.workdir / "broker", list(plan))
    daemon: subprocess.Popen | None = None
    dashboard: Dashboard | None = None
    try:
        broker.start()
        print(f"broker: mosquitto with deploy/mosquitto/ on 127.0.0.1:{broker.port} (TLS {broker.tls_port}), "
              f"users and test CA in {broker.workdir}")
        config_path = args.workdir / "monitor.yaml"
        write_monitor_config(config_path, broker, args.bundle, args.workdir)
        log = open(args.workdir / "monitor.log", "w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge_monitor", "run", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        print(f"monitor: model {meta.model_id}, {meta.thresholds.describe()}; log {log.name}")

        clock = CompletionClock(meta.window.length, meta.stable_region.block, meta.stable_region.lookahead)
        scada = broker.settings(DASHBOARD_USER, "demo-scada", tls=True)  # dashboards connect over TLS
        dashboard = Dashboard(scada, list(plan), clock, broker.log)
        for machine, jobs in plan.items():
            dashboard.view[machine].case = jobs[0].case
        dashboard.start()
        deadline = time.monotonic() + 120
        while dashboard.status != "online":
            if dashboard.problem():
                raise RuntimeError(dashboard.problem())
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not come online; see {log.name}")
            time.sleep(0.1)

        client = make_client(broker.settings("replay", "demo-replay"), clean_start=True)
        connect(client)
        done = threading.Event()

        def on_event(event, stats) -> None:
            clock.record(event.machine, event.cut_id, event.kind, event.topic, event.end)

        stats_box: dict = {}

        def run_replay() -> None:
            try:
                stats_box["stats"] = replay(Publisher(client), ROOT, plan, speed=args.speed, on_event=on_event,
                                             frames=args.frames)
            finally:
                done.set()

        threading.Thread(target=run_replay, daemon=True).start()
        tty = sys.stdout.isatty()
        last_lines = 0
        while not done.wait(0.5 if tty else 5.0):
            table = dashboard.table()
            if tty and last_lines:
                sys.stdout.write(f"\x1b[{last_lines}F\x1b[J")
            print(table, flush=True)
            last_lines = table.count("\n") + 1
        expected_cuts = sum(len(j) for j in plan.values())
        settle = time.monotonic() + 20
        while sum(v.cuts_done for v in dashboard.view.values()) < expected_cuts and time.monotonic() < settle:
            time.sleep(0.2)
        disconnect(client)
        if tty and last_lines:
            sys.stdout.write(f"\x1b[{last_lines}F\x1b[J")
        print(dashboard.table())
        summary(dashboard, stats_box.get("stats"), time.monotonic() - started, wear_of(plan))
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if dashboard is not None:
            dashboard.stop()
        broker.stop()
        print("stopped the monitor and the broker")


def wear_of(plan) -> dict[str, str]:
    """Each replayed cut's flank wear and class, as training labels it (VB interpolated between the
    measured runs of its tool): what an alarm in the summary is set against."""
    from training.wear import CLASS_NAMES, interpolate_vb, tool_class

    jobs = [job for machine_jobs in plan.values() for job in machine_jobs]
    vb = interpolate_vb([j.case for j in jobs], [j.cut.run for j in jobs], [j.cut.vb for j in jobs])
    return {job.cut.cut_id: "VB unknown" if np.isnan(v) else f"VB {v:.2f} mm, {CLASS_NAMES[int(tool_class(v))]} tool"
            for job, v in zip(jobs, vb)}


def summary(dashboard: Dashboard, stats, seconds: float, wear: dict[str, str] | None = None) -> None:
    lat = np.asarray(dashboard.latencies) * 1000
    print()
    print(f"demo summary ({seconds:.0f} s)")
    if stats is not None:
        print(f"  cuts replayed       {stats.cuts} ({stats.messages} messages)")
    print(f"  windows scored      {dashboard.windows}")
    print(f"  alarms raised       {len(dashboard.alarms)}")
    for machine, state, cut, _ in dashboard.alarms:
        print(f"    {machine}: {state} at cut {cut}" + (f" ({wear[cut]})" if wear and cut in wear else ""))
    if lat.size:
        print(f"  end-to-end latency  p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms "
              f"(message completing a window -> its score at the dashboard; {lat.size} windows)")


if __name__ == "__main__":
    own_process_output()  # before TensorFlow loads; its errors shown, not its notices (service/native_log.py)
    sys.exit(main())
