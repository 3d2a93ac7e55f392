"""Micro-benchmark of the per-message core path: µs per input message, the current classes
against the reference (``tests/reference_core.py``, the path before it was made cheap), measured
in the same run.

Run with ``.venv/bin/python -m tests.bench_pipeline [--cuts N] [--rounds N] [--chunk N]``.

Several synthetic-archive cuts are sent as the daemon receives them: a cut start, then 64-sample
chunks of the six channels in turn, then the cut end. Two paths are timed:

- ``pipeline``: ``MachinePipeline.handle`` for every message (the reference run swaps the reference
  assembler and windower into the pipeline; the windows it hands out are not scored);
- ``frames+windows``: just ``CutAssembler.add`` → ``CutWindower.feed`` (and their ``finish``).

Old and new run in alternating rounds; each figure is the median over the rounds of CPU time
(``time.process_time``) per message. The box is shared and noisy: read the ratios, not the
absolute figures. Both paths must give the same windows, or the benchmark stops.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_core, also under `python -m`

from reference_core import RefCutAssembler, RefCutWindower

from edge_monitor.archive.synthetic import synthesize
from edge_monitor.core import frames, pipeline
from edge_monitor.core.alarm import AlarmPolicy, Thresholds
from edge_monitor.core.channels import CHANNELS, SAMPLE_RATE_HZ
from edge_monitor.core.frames import CutAssembler
from edge_monitor.core.inbound import CutEnd, CutStart, SignalChunk
from edge_monitor.core.pipeline import MachinePipeline
from edge_monitor.core.stable_region import StableRegionSpec
from edge_monitor.core.steps import PipelineSpec
from edge_monitor.core.windowing import CutWindower, WindowSpec

SPEC = PipelineSpec(WindowSpec(), StableRegionSpec(), SAMPLE_RATE_HZ, Thresholds(1.0, 2.0), AlarmPolicy(), "bench")


def messages(cuts: list[np.ndarray], chunk: int) -> list[tuple]:
    """(message, channel) in the order the daemon receives them."""
    out: list[tuple] = []
    for k, signals in enumerate(cuts):
        cut = f"c{k}"
        out.append((CutStart(cut, 1000.0 + 40 * k, SAMPLE_RATE_HZ), None))
        for offset in range(0, signals.shape[0], chunk):
            for c, name in enumerate(CHANNELS):
                samples = np.ascontiguousarray(signals[offset : offset + chunk, c])
                samples.flags.writeable = False  # as inbound.parse_signal hands them out
                out.append((SignalChunk(cut, offset, samples), name))
        out.append((CutEnd(cut, 1036.0 + 40 * k, signals.shape[0]), None))
    return out


@contextlib.contextmanager
def reference_classes():
    """The pipeline with the reference assembler and windower in place of the current ones."""
    saved = frames.CutAssembler, pipeline.CutWindower
    frames.CutAssembler, pipeline.CutWindower = RefCutAssembler, RefCutWindower
    try:
        yield
    finally:
        frames.CutAssembler, pipeline.CutWindower = saved


def run_pipeline(msgs: list[tuple]) -> tuple[float, list]:
    p = MachinePipeline("mill-01", SPEC)
    handle = p.handle
    out = []
    gc.disable()
    t = time.process_time()
    for message, channel in msgs:
        out.append(handle(message, channel=channel).windows)
    elapsed = time.process_time() - t
    gc.enable()
    return elapsed, [(b.cut, b.offsets, b.data) for step in out for b in step]


def run_frames(msgs: list[tuple], assembler=CutAssembler, windower=CutWindower) -> tuple[float, list]:
    out = []
    gc.disable()
    t = time.process_time()
    for message, channel in msgs:
        if isinstance(message, CutStart):
            asm = assembler(max_lead=15_000, cut=message.cut)
            win = windower(SPEC.window, SPEC.stable)
        elif isinstance(message, CutEnd):
            fin = asm.finish(message.samples)
            out.append(win.feed(fin.parts))
            out.append(win.finish())
        else:
            out.append(win.feed(asm.add(channel, message.offset, message.samples).parts))
    elapsed = time.process_time() - t
    gc.enable()
    return elapsed, [(w.starts, w.data) for w in out if len(w)]


def same(a: list, b: list) -> bool:
    flat = [[np.asarray(x) for x in item] for item in a], [[np.asarray(x) for x in item] for item in b]
    return len(a) == len(b) and all(
        all(np.array_equal(x, y, equal_nan=x.dtype.kind == "f") for x, y in zip(p, q)) for p, q in zip(*flat)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=6, help="synthetic cuts (9000 samples each)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating old/new rounds")
    parser.add_argument("--chunk", type=int, default=64, help="samples per message")
    args = parser.parse_args(argv)

    synthetic = synthesize(seed=0, cases=[1, 5, 11, 13], max_runs=max(1, -(-args.cuts // 4)))
    cuts = [np.stack([r[c] for c in CHANNELS], axis=1) for r in synthetic.records[: args.cuts]]
    msgs = messages(cuts, args.chunk)
    n = len(msgs)

    def old_pipeline():
        with reference_classes():
            return run_pipeline(msgs)

    variants = {
        "pipeline": (old_pipeline, lambda: run_pipeline(msgs)),
        "frames+windows": (lambda: run_frames(msgs, RefCutAssembler, RefCutWindower), lambda: run_frames(msgs)),
    }
    print(f"{len(cuts)} cuts, {n} messages ({args.chunk}-sample chunks of {len(CHANNELS)} channels in turn), "
          f"{args.rounds} rounds; CPU µs per message, median (min) over rounds")
    for name, (old, new) in variants.items():
        _, old_windows = old()  # warm up, and check that both give the same windows
        _, new_windows = new()
        if not same(old_windows, new_windows):
            raise SystemExit(f"{name}: the current classes give other windows than the reference")
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            times["old"].append(old()[0] / n * 1e6)
            times["new"].append(new()[0] / n * 1e6)
        o, w = statistics.median(times["old"]), statistics.median(times["new"])
        windows = sum(len(item[-2]) for item in new_windows)
        print(f"{name:<15} old {o:7.1f} ({min(times['old']):6.1f})   new {w:7.1f} ({min(times['new']):6.1f})   "
              f"old/new {o / w:5.2f}x   ({windows} windows, identical)")


if __name__ == "__main__":
    main()
