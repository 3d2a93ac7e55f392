"""At least once across crashes: the daemon SIGKILLed at random moments (mid-cut, and during a
graceful shutdown) and restarted while four machines publish at 10x real time. Every window is
scored with the values of an uninterrupted run, every cut summarised, the alarm transitions are
those of an uninterrupted run, and what comes twice comes byte for byte the same."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from daemon_support import POLICY, REPO, Collector, Daemon, machine_of, model_fixture

from edge_monitor.core import sparkplug_payload as sp
from edge_monitor.core.alarm import AlarmTracker
from edge_monitor.service.state import StateFile
from edge_monitor.service.state_format import encode_record

ROOT, INSTANCE = "t-crash", "k1"
MACHINES = 4  # cases 11, 13, 11, 13
# Sparkplug B on (issue 19): it must not cost the JSON topics anything across crashes
CONFIG = 'machines: "mill-*"\nstate_file: state.json\nstatus_interval_s: 1\nsparkplug: {enabled: true, group_id: t-crash}\n'
NODE = f"spBv1.0/t-crash/{{}}/{INSTANCE}"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def case_of(machine: str) -> int:
    return (11, 13)[(int(machine.split("-")[1]) - 1) % 2]


def expected_transitions(model, case: int) -> list[tuple[str, str]]:
    """(cut, state) of every alarm transition an uninterrupted run makes, from the offline scores."""
    tracker = AlarmTracker(POLICY, model.thresholds)
    out = []
    for cut in model.cuts_by_case[case]:
        recon = [r for (c, _), (r, _, _) in model.offline.items() if c == cut]
        t = tracker.cut_ended(float(np.median(recon)), len(recon), cut, 0.0, model_regime(model, cut))
        if t is not None:
            out.append((cut, t.new.label))
    return out


def model_regime(model, cut: str) -> str:
    from edge_monitor.core.calibration import regime_key

    c = next(c for c in model.archive.cuts if c.cut_id == cut)
    return regime_key(c.doc, c.feed, c.material)


def scores(collector: Collector) -> list[tuple[str, dict, bytes]]:
    """Every window's score as (machine, its message, its bytes), from one message per window
    (``score``) or from batches (``scores``: each window with its batch's ``cut``, re-encoded)."""
    out = []
    for topic, raw in collector.payloads:
        if topic.endswith("/score"):
            out.append((machine_of(topic, ROOT), json.loads(raw), raw))
        elif topic.endswith("/scores"):
            batch = json.loads(raw)
            for w in batch["windows"]:
                body = {"cut": batch["cut"], "model": batch["model"], **w}
                out.append((machine_of(topic, ROOT), body, json.dumps(body, sort_keys=True).encode()))
    return out


@pytest.mark.parametrize("signals", ["chunks", "frames", "frames, scores in batches", "frames, checkpoint groups"])
def test_sigkill_at_random_moments_loses_nothing(broker, model, tmp_path, signals):
    rng = random.Random(9)
    collector = Collector(broker, [f"{ROOT}/#", "spBv1.0/t-crash/#"], "collector-crash", persistent=True)
    config = CONFIG + ("outputs: {scores: batch}\n" if "batches" in signals else "")
    # three groups of the four machines: each checkpoint snapshots one group, the others' inputs held
    config += "delivery: {checkpoint_groups: 3}\n" if "groups" in signals else ""
    daemon = Daemon(tmp_path, broker, model.bundle, ROOT, INSTANCE, config).start()
    crashes = []
    try:
        daemon.wait_online(collector)
        args = [sys.executable, "-m", "edge_monitor", "replay", "--archive", str(model.archive_path),
                "--broker", broker.address, "--machines", str(MACHINES), "--cases", "11,13",
                "--speed", "10", "--root", ROOT, *(["--frames", "--chunk", "64"] if "frames" in signals else [])]
        replay = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        n_cuts = sum(len(model.cuts_by_case[case_of(f"mill-0{i + 1}")]) for i in range(MACHINES))
        assert collector.wait(lambda: len(scores(collector)) > 20, 60), "no scores"
        for how in ("kill", "kill during shutdown", "kill"):
            time.sleep(rng.uniform(0.2, 1.5))
            summaries = len({(machine_of(t, ROOT), b["cut"]) for t, b in collector.on("/summary")})
            if how == "kill during shutdown":
                daemon.process.terminate()
                time.sleep(rng.uniform(0.05, 0.4))
            daemon.kill()
            crashes.append((how, len(scores(collector)), summaries))
            daemon = Daemon(tmp_path, broker, model.bundle, ROOT, INSTANCE, config).start()
            daemon.wait_online(collector)
        out, err = replay.communicate(timeout=180)
        assert replay.returncode == 0, err

        def all_summarised() -> bool:
            return len({(machine_of(t, ROOT), b["cut"]) for t, b in collector.on("/summary")}) >= n_cuts

        caught_up = collector.wait(all_summarised, int(os.environ.get("CRASH_TEST_WAIT", "120")))
        assert any(s < n_cuts for _, _, s in crashes)  # at least one crash while cuts were open
        expected = {(f"mill-0{i + 1}", cut, offset) for i in range(MACHINES) for cut, offset in model.offline
                    if cut in model.cuts_by_case[case_of(f"mill-0{i + 1}")]}
        windows = collections.Counter((m, b["cut"], b["offset"]) for m, b, _ in scores(collector))
        summarised = {(machine_of(t, ROOT), b["cut"]) for t, b in collector.on("/summary")}
        print(f"\ncrashes (kind, scores seen, cuts summarised at the crash): {crashes}")
        print(f"windows {len(expected)}: lost {len(expected - set(windows))}, duplicated "
              f"{sum(n - 1 for n in windows.values())}; cuts summarised {len(summarised)} of {n_cuts}")
        if not caught_up:
            daemon.fail(f"not every cut was summarised: crashes {crashes}")

        # every window scored, with the values of an uninterrupted run (the offline scorer)
        seen = collections.Counter()
        for machine, body, _ in scores(collector):
            seen[(machine, body["cut"], body["offset"])] += 1
            recon, kl, _ = model.offline[(body["cut"], body["offset"])]
            assert body["recon"] == pytest.approx(recon, rel=1e-4, abs=1e-6)
        assert set(seen) == expected, f"missing {len(expected - set(seen))}, crashes {crashes}"
        batched = [t for t, _ in collector.payloads if t.endswith("/scores")]
        assert bool(batched) == ("batches" in signals) and not ("batches" in signals and collector.on("/score"))
        # duplicates are byte-identical: per (machine, cut, offset) one payload (a batched window:
        # the same values, its batch may be grouped otherwise when sent again)
        by_window = collections.defaultdict(set)
        for machine, body, raw in scores(collector):
            by_window[(machine, body["cut"], body["offset"])].add(raw)
        bad = {k: v for k, v in by_window.items() if len(v) != 1}
        assert not bad, "\n".join(r.decode() for v in list(bad.values())[:2] for r in v)
        summaries = collections.defaultdict(set)
        for topic, raw in collector.payloads:
            if topic.endswith("/summary"):
                summaries[(machine_of(topic, ROOT), json.loads(raw)["cut"])].add(raw)
        assert len(summaries) == n_cuts and all(len(v) == 1 for v in summaries.values())
        # alarm transitions: those of an uninterrupted run
        for i in range(MACHINES):
            machine = f"mill-0{i + 1}"
            got = []
            for topic, body in collector.on(f"/{machine}/alarm"):
                step = (body["cut"], body["state"])
                if not got or got[-1] != step:
                    got.append(step)
            assert got == expected_transitions(model, case_of(machine)), machine
        # Sparkplug: every killed process left its will, the NDEATH of its NBIRTH's bdSeq, and
        # each start took the next bdSeq (the project's decoder here; Tahu's in test_sparkplug.py)
        births = [sp.decode(raw) for t, raw in collector.payloads if t == NODE.format("NBIRTH")]
        deaths = [sp.decode(raw) for t, raw in collector.payloads if t == NODE.format("NDEATH")]
        bd_births = [next(m.value for m in b.metrics if m.name == "bdSeq") for b in births]
        bd_deaths = [d.metrics[0].value for d in deaths]
        assert bd_births == list(range(bd_births[0], bd_births[0] + len(crashes) + 1)), bd_births
        # (a kill during a graceful stop may come after its NDEATH: the will then repeats it)
        assert sorted(set(bd_deaths)) == bd_births[: len(crashes)], (bd_deaths, bd_births)
    finally:
        daemon.kill()
        collector.close()


def test_the_daemon_comes_online_whatever_the_state_file_holds(broker, model, tmp_path):
    """The crash loop found by reading the code: a snapshot whose ``since`` is not a number and
    whose state disagrees with the retained alarm; and a checkpoint cut short by a full disk."""
    root, instance = "t-corrupt", "c1"
    collector = Collector(broker, [f"{root}/#"], "collector-corrupt")
    pub = Collector(broker, [], "pub-corrupt")
    alarm = {"machine": "mill-02", "state": "alarm", "since": 100.0, "cut": "c13-r10", "score": 3.0,
             "threshold": 2.0, "model": "m"}
    pub.client.publish(f"{root}/mill-02/alarm", json.dumps(alarm), qos=1, retain=True).wait_for_publish(5)
    contents = [  # (file, a warning expected): the first is usable as far as it goes, the retained alarm wins
        (json.dumps({"format": 1, "model": "m", "machines": {"mill-02": {"state": "warning", "since": "yesterday"}}}),
         False),
        (json.dumps({"format": 2, "model": "m", "machines": {}, "streams": {"mill-01": {"stream": {}}}})[:-17], True),
        # the format written now, cut short in its last record
        (b"".join(StateFile.compose({}, {"mill-01": encode_record({"stream": {}, "rows": np.zeros((9, 6))})}, "m"))[:-17],
         True),
    ]
    try:
        for text, warned in contents:
            (tmp_path / "state.json").write_bytes(text if isinstance(text, bytes) else text.encode())
            daemon = Daemon(tmp_path, broker, model.bundle, root, instance, CONFIG).start()
            try:
                daemon.wait_online(collector)
                assert bool(daemon.events("state_file_ignored")) == warned
                restored = {e["machine"]: e["state"] for e in daemon.events("alarm_state_restored")}
                assert restored == {"mill-02": "alarm"}
            finally:
                daemon.kill()
    finally:
        pub.close()
        collector.close()
