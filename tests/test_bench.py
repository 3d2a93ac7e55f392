"""``edge-monitor bench``: a tiny benchmark end to end (its own Mosquitto, the real daemon as a
process, TensorFlow on the CPU), and the bookkeeping that decides its verdict: when each window
became due, and which windows came late, never, twice or unasked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_support import REPO, model_fixture

from edge_monitor.bench.accounting import Due, account, expected_windows
from edge_monitor.bench.load import CHUNK, END, FRAME, CutSlot, LoadInput, plan_slots
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.windowing import WindowSpec


def test_missing_duplicated_and_unexpected_windows_are_counted():
    a, b, c = ("bench-001", "c1", 0), ("bench-001", "c1", 64), ("bench-002", "c1", 0)
    expected = {a: Due(complete=10.0, decidable=10.5), b: Due(complete=11.0, decidable=11.5)}
    arrivals = [(a, 12.0), (a, 10.75), (c, 13.0)]  # a twice, b never, c was not asked for
    acc = account(expected, arrivals)
    assert acc.missing == [b]
    assert acc.duplicated == {a: 2}
    assert acc.unexpected == [c]
    assert not acc.ok
    assert acc.latency == pytest.approx([0.75])  # from the first arrival
    assert acc.beyond_lookahead == pytest.approx([0.25])
    summary = acc.summary()
    assert (summary["lost"], summary["duplicated"], summary["unexpected"]) == (1, 1, 1)
    assert summary["latency_ms"]["p50"] == pytest.approx(750.0)
    assert account(expected, [(a, 10.6), (b, 11.6)]).ok


def test_a_window_is_complete_with_its_last_row_and_decidable_with_its_look_ahead():
    window, stable = WindowSpec(64, 64), StableRegionSpec(block=64)
    slot = CutSlot("bench-001", "c1", archive_index=0, n_samples=640, start=0.0)
    plan = plan_slots("r", 32, 250.0, 1.0, ["bench-001"], [slot])  # chunks of half a block
    times = np.arange(len(plan)) * 0.01  # every message later than the one before

    def published(chunk: int) -> float:  # the last channel's chunk completes a row of chunks
        at = np.flatnonzero((plan.kind == CHUNK) & (plan.index == chunk))
        return float(times[at].max())

    due = expected_windows(plan, times, {0: np.array([128, 512])}, window, stable)
    lookahead = stable.lookahead_samples
    # window [128, 192): its last sample is in chunk 5; its block ends at 192, decided at 192 + lookahead - 1
    assert due[("bench-001", "c1", 128)].complete == published(191 // 32)
    assert due[("bench-001", "c1", 128)].decidable == published((192 + lookahead - 1) // 32)
    # window [512, 576): the look-ahead runs past the cut, so the cut's end decides it
    end = float(times[plan.kind == END][0])
    assert due[("bench-001", "c1", 512)] == Due(published(575 // 32), end)


def test_a_frame_completes_its_rows_at_once():
    window, stable = WindowSpec(64, 64), StableRegionSpec(block=64)
    slot = CutSlot("bench-001", "c1", archive_index=0, n_samples=640, start=0.0)
    plan = plan_slots("r", 100, 250.0, 1.0, ["bench-001"], [slot], frames=True)
    assert plan.frames and list(plan.kind) == [0] + [FRAME] * 7 + [END]  # start, 7 frames of 100 rows, end
    assert plan.topics()[1] == "r/bench-001/frame"
    times = np.arange(len(plan)) * 0.01
    due = expected_windows(plan, times, {0: np.array([128])}, window, stable)
    assert due[("bench-001", "c1", 128)].complete == times[1 + 191 // 100]


def test_load_inputs_are_named_and_checked():
    assert LoadInput.parse("frames:250", 64) == LoadInput(True, 250)
    assert LoadInput.parse("chunks", 64).label == "chunks64"
    assert LoadInput.parse("frames:250:f32", 64) == LoadInput(True, 250, "f32")
    assert LoadInput.parse("chunks::json", 64).label == "chunks64-json"
    for bad in ("frame", "chunks:0", "frames:x", "frames:250:f16"):
        with pytest.raises(ValueError, match="chunks or frames|positive|encoding must be one of json, f32"):
            LoadInput.parse(bad, 64)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_fixture(tmp_path_factory)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_a_tiny_bench_reports_every_figure_and_loses_nothing(model, tmp_path):
    out = tmp_path / "bench"
    args = [sys.executable, "-m", "edge_monitor", "bench", "--bundle", str(model.bundle),
            "--archive", str(model.archive_path), "--machines", "2", "--cuts", "1", "--no-realtime", "--speed0",
            "--inputs", "chunks,frames:100",
            "--model-seconds", "0.05", "--baseline-windows", "3", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert processes_mentioning(str(out)) == []  # the broker and the daemon are gone
    report = json.loads((out / "bench.json").read_text())
    assert report["device"] == "cpu"

    model_rows = report["model"]
    assert [r["batch"] for r in model_rows["scoring"]] == [1, 8, 32, 128, 256]  # and the default max_batch
    assert all(r["windows_per_s"] > 0 for r in model_rows["scoring"])
    assert model_rows["predict_baseline"]["windows_per_s"] > 0
    assert [f["input"] for f in report["fanin"]] == ["chunks64", "frames100"]
    assert all(f["received"] == f["messages"] > 0 for f in report["fanin"])
    assert report["ratios"]["speed0_daemon_over_fanin"].keys() == {"chunks64", "frames100"}
    assert report["ratios"]["speed0_windows_frames_over_chunks"]["frames100/chunks64"] > 0

    chunks, run = report["runs"]
    assert (chunks["input"], run["input"], run["frames"]) == ("chunks64", "frames100", True)
    assert run["messages"] < chunks["messages"] / 3  # one frame stands for six chunks
    assert run["windows_expected"] == chunks["windows_expected"]  # the same cuts, the same windows
    assert chunks["scores_received"] == chunks["windows_expected"] and chunks["lost"] == 0
    assert (run["machines"], run["speed"], run["complete"], run["daemon_exit_code"]) == (2, 0.0, True, 0)
    assert run["windows_expected"] > 0 and run["scores_received"] == run["windows_expected"]
    assert (run["lost"], run["duplicated"], run["unexpected"]) == (0, 0, 0)
    assert run["status"]["counters"]["messages_in"] == run["messages"]
    for key in ("msgs_per_s_in", "windows_per_s", "cpu_ms_per_msg", "cpu_cores_steady", "rss_max_mib"):
        assert run[key] > 0, key
    for key in ("latency_ms", "beyond_lookahead_ms"):
        assert run[key]["n"] == run["windows_expected"]
        assert 0 < run[key]["p50"] <= run[key]["p99"], key
    assert run["beyond_lookahead_ms"]["p99"] <= run["latency_ms"]["p99"]
    assert len(run["usage"]["daemon"]["t"]) >= 2
    # the daemon's threads, named in its log, sampled apart (None: a steady part too short for two samples)
    assert set(run["thread_cores_steady"]) == {"main", "inputs", "outputs", "checkpoint"}
    box = run["cpu_seconds_by_process"]
    assert box["box"] >= box["daemon"] > 0  # the whole box's CPU includes the daemon's
    assert "msgs/s in" in done.stdout and "beyond p99" in done.stdout

    from training.plots import plot_bench_scaling

    report["runs"] = [{**r, "speed": 1.0, "machines": m} for r in (chunks, run) for m in (2, 4)]  # as if real time
    png = plot_bench_scaling({"": report}, tmp_path / "scaling.png")
    assert png.stat().st_size > 10_000


def test_the_daemons_threads_are_read_from_its_online_line_only(tmp_path):
    from edge_monitor.bench.runs import daemon_threads

    log = tmp_path / "daemon.log"
    log.write_text('{"event": "caught_up", "state": "online"}\n["online"]\nnot json "online"\n'
                   '{"event": "online", "threads": {"main": 11, "inputs": 12, "odd": "x"}}\n')
    assert daemon_threads(log, wait=0) == {"main": 11, "inputs": 12}
    log.write_text('{"event": "online", "model": "m"}\n')  # an older daemon: no threads named
    assert daemon_threads(log, wait=0) == {}
    assert daemon_threads(tmp_path / "absent.log", wait=0) == {}


def test_a_threads_cpu_time_is_its_own():
    import threading

    from edge_monitor.service.metrics import thread_cpu_seconds

    spent = threading.Event()

    def busy() -> None:
        deadline = time.thread_time() + 0.3
        while time.thread_time() < deadline:
            pass
        spent.set()
        done.wait(5)

    done = threading.Event()
    worker = threading.Thread(target=busy)
    worker.start()
    try:
        assert spent.wait(10)
        assert thread_cpu_seconds(worker.native_id) >= 0.25  # its 0.3 s (clock ticks of 10 ms)
    finally:
        done.set()
        worker.join()
    assert thread_cpu_seconds(worker.native_id) is None and thread_cpu_seconds(None) is None
