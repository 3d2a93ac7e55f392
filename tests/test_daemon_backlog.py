"""Backlogs: a graceful stop with over 10 000 inputs waiting loses nothing (what was not
acknowledged waits at the broker for the next start), and an overload makes the status say
degraded with the backlog, bounded in the monitor, until it has caught up and is online again."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from daemon_support import REPO, Collector, Daemon, machine_of, model_fixture

MACHINES = 10  # cases 11, 13, 11, 13, ...: 25 cuts, about 10 600 inputs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def replay(broker, model, root: str) -> int:
    args = [sys.executable, "-m", "edge_monitor", "replay", "--archive", str(model.archive_path),
            "--broker", broker.address, "--machines", str(MACHINES), "--cases", "11,13", "--speed", "0", "--chunk", "64",
            "--root", root]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(re.search(r"(\d+) messages in", done.stdout).group(1))


def expected_windows(model) -> set:
    out = set()
    for i in range(MACHINES):
        case = (11, 13)[i % 2]
        out |= {(f"mill-{i + 1:02d}", cut, offset) for cut, offset in model.offline if cut in model.cuts_by_case[case]}
    return out


def n_cuts(model) -> int:
    return sum(len(model.cuts_by_case[(11, 13)[i % 2]]) for i in range(MACHINES))


def test_sigterm_with_a_backlog_of_over_ten_thousand_inputs_loses_nothing(broker, model, tmp_path):
    root, instance = "t-backlog", "b1"
    config = 'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\n'
    collector = Collector(broker, [f"{root}/#"], "collector-backlog", persistent=True)
    daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
    try:
        daemon.wait_online(collector)
        assert daemon.terminate() == 0  # its session stays: the broker queues what comes now
        published = replay(broker, model, root)
        assert published > 10_000
        daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
        daemon.wait_online(collector)
        time.sleep(0.5)
        assert daemon.terminate() == 0  # with most of the backlog still waiting
        stopping = daemon.events("stopping")[-1]
        taken = daemon.events("stopped")[-1]["messages_in"]
        assert taken < published, "the backlog was gone before the stop: nothing tested"
        daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
        daemon.wait_online(collector)
        done = lambda: len({(machine_of(t, root), b["cut"]) for t, b in collector.on("/summary")}) >= n_cuts(model)  # noqa: E731
        if not collector.wait(done, 120):
            daemon.fail("not every cut summarised after the restart")
        seen = {(machine_of(t, root), b["cut"], b["offset"]) for t, b in collector.on("/score")}
        assert seen == expected_windows(model)
        print(f"\nbacklog {published} inputs; stopped after taking {taken}, with {stopping['queued']} queued "
              f"and {stopping['unacknowledged']} unacknowledged; nothing missing after the restart")
    finally:
        daemon.kill()
        collector.close()


GENERATORS = 3  # load generators at once, each as fast as the broker takes it


def test_an_overload_is_reported_bounded_and_caught_up(broker, model, tmp_path):
    root, instance = "t-overload", "o1"
    config = ('machines: "*"\nstate_file: state.json\nstatus_interval_s: 1\n'
              'delivery:\n  degraded_lag_s: 1\n  max_queued_inputs: 500\n')
    status = f"{root}/_monitor/{instance}/status"
    collector = Collector(broker, [f"{root}/+/summary", f"{root}/+/score", status], "collector-overload",
                          persistent=True)
    daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
    try:
        daemon.wait_online(collector)
        # On 2 cores, generators in Python publish about as fast as the daemon scores: the overload
        # is a data acquisition catching up after an outage. The inputs pile up at the broker
        # while the monitor is away; when it is back they come as fast as the broker can send.
        assert daemon.terminate() == 0
        generators = [
            subprocess.Popen([sys.executable, str(REPO / "tests" / "loadgen.py"), broker.address,
                              str(model.archive_path), root, f"g{k}-", str(MACHINES)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
            for k in range(GENERATORS)
        ]
        published = sum(int(g.communicate(timeout=300)[0]) for g in generators)
        daemon = Daemon(tmp_path, broker, model.bundle, root, instance, config).start()
        degraded = lambda: any(b.get("state") == "degraded" for _, b in collector.on(status))  # noqa: E731
        assert collector.wait(degraded, 30), "never degraded"
        report = next(b for _, b in collector.on(status) if b.get("state") == "degraded")
        assert report["backlog"]["lag_s"] >= 1 and report["backlog"]["queued"] <= 500 + 2  # + a (re)connection item
        assert daemon.events("degraded")
        cuts = GENERATORS * n_cuts(model)
        done = lambda: len({(machine_of(t, root), b["cut"]) for t, b in collector.on("/summary")}) >= cuts  # noqa: E731
        assert collector.wait(done, 180), "did not catch up"
        assert collector.wait(lambda: collector.on(status)[-1][1]["state"] == "online", 10)
        assert daemon.events("caught_up")[-1]["timestamp"] > daemon.events("degraded")[0]["timestamp"]
        seen = {(machine_of(t, root), b["cut"], b["offset"]) for t, b in collector.on("/score")}
        assert len(seen) == GENERATORS * len(expected_windows(model))
        rss = int(re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{daemon.process.pid}/status").read()).group(1))
        lags = [b["backlog"]["lag_s"] for _, b in collector.on(status) if "backlog" in b]
        print(f"\noverload: {published} inputs from {GENERATORS} generators; degraded, lag up to {max(lags):.1f} s "
              f"with at most {max(b['backlog']['queued'] for _, b in collector.on(status) if 'backlog' in b):.0f} "
              f"queued in the monitor; caught up, online; peak RSS {rss / 1024:.0f} MiB")
    finally:
        daemon.kill()
        collector.close()
