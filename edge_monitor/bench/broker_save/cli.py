"""``python -m edge_monitor.bench.broker_save [--quick]``: runs the experiments in order and prints
each table as soon as it is measured."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..broker import NOT_INSTALLED, find_mosquitto
from . import __doc__ as ABOUT
from .changes import count_changes
from .clients import load_main
from .crash import CANDIDATES, crash_window
from .experiments import full_queue, growth, steady_state
from .harness import DESIGN_HOUR
from .report import report_changes, report_crash, report_growth, report_queue, report_steady


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_monitor.bench.broker_save", description=ABOUT.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller queues, shorter windows (~3 min)")
    p.add_argument("--load", help=argparse.SUPPRESS)  # PORT:MACHINES, the steady-state load process
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        port, machines = (int(x) for x in args.load.split(":"))
        return load_main(port, machines)
    mosquitto = find_mosquitto()
    if mosquitto is None:
        print(NOT_INSTALLED, file=sys.stderr)
        return 2
    quick = args.quick
    version = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    print(f"{' '.join(version)}; {os.cpu_count()} CPUs; mode {'quick' if quick else 'full'}", flush=True)
    sizes = [10_000, 50_000] if quick else [10_000, 50_000, 100_000, DESIGN_HOUR]
    window = 8.0 if quick else 15.0
    grow = 10_000 if quick else 50_000
    per_save = 50 if quick else 100
    workdir = Path(tempfile.mkdtemp(prefix="broker-save-"))
    started = time.monotonic()
    lap = [started]

    def section(title: str) -> None:
        # the figure in brackets is how long the previous section took
        now = time.monotonic()
        print(f"\n[{now - lap[0]:.0f} s] {title} ...", flush=True)
        lap[0] = now

    try:
        section("1. steady state")
        steady = [steady_state(workdir, m, 8 if quick else 20, 2.0 if quick else 4.0) for m in (20, 100)]
        report_steady(steady)
        section("2. queue for the absent monitor")
        queue = full_queue(workdir, sizes)
        size_fit, time_fit = report_queue(queue)
        shutil.rmtree(workdir / "queue", ignore_errors=True)  # up to GBs of database
        section("3. what counts as a change")
        report_changes(count_changes(workdir, 10 * per_save, per_save), per_save)
        section("4. crash window")
        crashes = []
        for i, cand in enumerate(CANDIDATES):
            crashes += crash_window(workdir, cand, window, i)
        report_crash(crashes)
        section("5. growing and draining queue")
        growths = [growth(workdir, name, conf, grow, i) for i, (name, conf) in enumerate([
            ("autosave off", {"autosave_interval": 0}),
            ("interval 5", {"autosave_interval": 5}),
            ("on_changes, 600", {"autosave_interval": 600, "autosave_on_changes": "true"})])]
        drain_rate = queue.held / queue.drain_seconds if queue.drain_seconds else 0.0
        report_growth(growths, steady[0], size_fit, time_fit, drain_rate)
        section("done")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.monotonic() - started:.0f} s")
    return 0
