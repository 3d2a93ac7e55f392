"""What saving costs: the steady state (table 1), a full queue for the absent monitor (table 2),
and a queue filled and drained under each setting (table 5a)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .clients import Monitor, Publisher
from .harness import Broker, Save, SaveWatcher, save_now, wait_idle

CHECKOUT = Path(__file__).resolve().parents[3]  # for the load process's "-m edge_monitor..."


# ---------------------------------------------------------------------------------------- 1. steady state

@dataclass
class SteadyResult:
    machines: int
    saves: list[Save]
    rss: int
    load: dict


def steady_state(workdir: Path, machines: int, n_saves: int, warmup: float) -> SteadyResult:
    broker = Broker(workdir, f"steady-{machines}")
    watcher = None
    load = None
    try:
        broker.start()
        watcher = SaveWatcher(broker)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")]))
        load = subprocess.Popen([sys.executable, "-m", __package__, "--load", f"{broker.port}:{machines}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if load.stdout.readline().strip() != "ready":
            raise RuntimeError("the load process did not start")
        time.sleep(warmup)
        saves = []
        for _ in range(n_saves):
            saves.append(save_now(broker, watcher)[0])
            time.sleep(0.3)
        rss = broker.rss_bytes()
        load.stdin.write("stop\n")
        load.stdin.flush()
        figures = json.loads(load.stdout.readline())
        load.wait(30)
        return SteadyResult(machines, saves, rss, figures)
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        if watcher is not None:
            watcher.close()
        broker.stop()


# ---------------------------------------------------------------------------------------- 2. a full queue

@dataclass
class QueueStep:
    published: int  # chunks published while the monitor was away, in all
    saves: list[tuple[Save, float]]  # (save, CPU s)
    rss: int
    restart: float  # seconds from start to accepting, loading the database


@dataclass
class QueueResult:
    steps: list[QueueStep]
    fill_rate: float  # chunks/s the publisher got acknowledged
    held: int  # chunks the monitor got on reconnecting after the last restart
    drain_seconds: float
    dropped_logged: bool


def full_queue(workdir: Path, sizes: list[int]) -> QueueResult:
    broker = Broker(workdir, "queue")
    watcher = None
    steps: list[QueueStep] = []
    try:
        broker.start()
        watcher = SaveWatcher(broker)
        monitor = Monitor(broker.port).start()
        monitor.stop()  # away: its session (subscriptions) stays, its chunks are queued
        seq, fill_time = 0, 0.0
        for size in sizes:
            publisher = Publisher(broker.port, 20, window=1000).start()
            t0 = time.monotonic()
            while seq < size:
                publisher.publish(seq)
                seq += 1
            if not publisher.wait_acknowledged(600):
                raise RuntimeError("the broker did not acknowledge the queue's chunks")
            fill_time += time.monotonic() - t0
            publisher.stop()
            saves = [save_now(broker, watcher) for _ in range(2)]
            rss = broker.rss_bytes()
            broker.kill()
            restart = broker.start()
            steps.append(QueueStep(seq, saves, rss, restart))
            print(f"  queue of {seq:,} chunks published: db {saves[-1][0].size / 1e6:,.1f} MB, "
                  f"save {saves[-1][0].seconds:.2f} s, restart {restart:.2f} s", flush=True)
        monitor = Monitor(broker.port)
        t0 = time.monotonic()
        monitor.start()
        monitor.wait_drained(set(range(seq)), idle=5, timeout=900)
        drain = monitor.last_message - t0
        held = len(set(monitor.received))
        monitor.stop()
        dropped = "Outgoing messages are being dropped" in broker.log.read_text(errors="replace")
        return QueueResult(steps, seq / fill_time if fill_time else 0.0, held, drain, dropped)
    finally:
        if watcher is not None:
            watcher.close()
        broker.stop()


# ---------------------------------------------------------------------------------------- 5a. growing / draining

@dataclass
class GrowthResult:
    name: str
    queued: int
    fill_seconds: float
    fill_saves: list[Save]
    drain_seconds: float
    drain_saves: list[Save]


def growth(workdir: Path, name: str, conf: dict, queued: int, index: int) -> GrowthResult:
    broker = Broker(workdir, f"growth-{index}", **conf)
    watcher = None
    try:
        broker.start()
        watcher = SaveWatcher(broker)
        monitor = Monitor(broker.port).start()
        monitor.stop()
        publisher = Publisher(broker.port, 20, window=1000).start()
        t0 = time.monotonic()
        for seq in range(queued):
            publisher.publish(seq)
        publisher.wait_acknowledged(1800)
        t1 = time.monotonic()
        publisher.stop()
        monitor = Monitor(broker.port)
        monitor.start()
        monitor.wait_drained(set(range(queued)), idle=20, timeout=1800)
        idle = wait_idle(broker, watcher, timeout=1800)
        drain = [s for s in watcher.saves if t1 < s.done <= idle]
        t2 = max([monitor.last_message] + [s.done for s in drain])
        monitor.stop()
        return GrowthResult(name, queued, t1 - t0, [s for s in watcher.saves if t0 <= s.done <= t1],
                            t2 - t1, drain)
    finally:
        if watcher is not None:
            watcher.close()
        broker.kill()  # a graceful stop would only add a save of an empty queue
