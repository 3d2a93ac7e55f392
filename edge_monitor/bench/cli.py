"""``edge-monitor bench``: the throughput benchmark's command line, its table and ``bench.json``.

In order: its own Mosquitto on a free port; the model's figures in this process (the scoring
call at several batch sizes, and one ``model.predict`` per window, the method's baseline); the
broker's fan-in to a do-nothing subscriber; then the daemon as its own process at each machine
count in real time, and once as fast as possible at the largest count. It prints one table and
writes every figure, with the CPU and memory over time, to ``<out>/bench.json``. It exits 1 when
a window was lost, duplicated or unexpected, or a run did not complete. Everything it started is
stopped at the end, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..archive.replay import ENCODINGS
from .load import LoadInput
from ..model.runtime import DEVICE_PREFERENCES, RUNTIMES  # no TensorFlow

MODEL_BATCHES = (1, 8, 32, 128)  # and the configuration's batching.max_batch


def default_archive() -> Path:
    real = Path("data/mill.mat")
    return real if real.exists() else Path("data/synthetic-mill.mat")


def machine_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected machine counts like 25,50,100, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"machine counts must be at least 1, got {text!r}")
    return levels


def load_inputs(text: str) -> list[str]:
    """Checked here, parsed with --chunk's default later (argparse has no order between options)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        for item in items:
            LoadInput.parse(item, 1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not items:
        raise argparse.ArgumentTypeError("expected chunks, frames or both")
    return items


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"), help="model bundle (default: %(default)s)")
    p.add_argument("--archive", type=Path, default=None,
                   help="archive to replay (default: data/mill.mat, else data/synthetic-mill.mat)")
    p.add_argument("--machines", type=machine_levels, default=[25, 50, 100], metavar="N,N,...",
                   help="machine counts of the daemon runs (default: 25,50,100)")
    p.add_argument("--chunk", type=positive, default=64,
                   help="samples per chunk or frame where --inputs does not say (default: %(default)s)")
    p.add_argument("--inputs", type=load_inputs, default="chunks", metavar="KIND[:SAMPLES[:ENCODING]],...",
                   help="how the machines send their samples, each kind its own runs: chunks (six per block, "
                        "one per channel) or frames (every channel in one message), e.g. chunks:64,frames:250, "
                        "or chunks:64:json,frames:250:f32 to compare encodings in one run (default: %(default)s)")
    p.add_argument("--cuts", type=positive, default=1, help="whole cuts each machine replays (default: %(default)s)")
    p.add_argument("--encoding", default="json", choices=ENCODINGS,
                   help="chunk and frame payloads where --inputs does not say: JSON or compact float32, as the "
                        "replay sends them (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory (default: %(default)s)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what serves the model in the daemon and the model figures (default: %(default)s; "
                        "the model figures add TensorFlow's where it is installed, for comparison)")
    p.add_argument("--device", default="auto", choices=DEVICE_PREFERENCES,
                   help="device for the model figures and the daemon (default: %(default)s)")
    p.add_argument("--daemon-config", type=Path, metavar="YAML",
                   help="settings for the daemon (e.g. batching); the benchmark sets broker, machines, "
                        "state file, status interval and logging itself")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="a real-time run at each machine count (default: on)")
    p.add_argument("--speed0", action=argparse.BooleanOptionalAction, default=True,
                   help="an as-fast-as-possible run at the largest machine count (default: on)")
    p.add_argument("--skip-model", action="store_true", help="no model figures")
    p.add_argument("--skip-fanin", action="store_true", help="no broker fan-in figure")
    p.add_argument("--model-seconds", type=float, default=2.0, help="timing per batch size (default: %(default)s)")
    p.add_argument("--baseline-windows", type=positive, default=50,
                   help="windows scored one model.predict each (default: %(default)s)")
    p.add_argument("--daemon-source", type=Path, metavar="DIR",
                   help="run the daemon of another checkout of edge-monitor (to compare two versions on one box)")
    p.add_argument("--seed", type=int, default=0, help="of the machines' staggered start times")
    p.add_argument("--stall-timeout", type=float, default=60.0,
                   help="seconds without a result, once the load is sent, before a run gives up")


def _stop_on_signal(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP unwind like Ctrl-C: every process is stopped


def run_bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    args.archive = args.archive or default_archive()
    if args.daemon_source is not None and not (args.daemon_source / "edge_monitor" / "__main__.py").is_file():
        print(f"edge-monitor bench: error: --daemon-source {args.daemon_source} is not a checkout of edge-monitor "
              "(no edge_monitor/__main__.py in it)", file=sys.stderr)
        return 2
    for what, path in (("archive", args.archive), ("bundle", args.bundle)):
        if not path.exists():
            print(f"edge-monitor bench: error: {what} {path} does not exist", file=sys.stderr)
            return 2
    # absolute: the daemon may run from another checkout (--daemon-source), with its own working directory
    args.archive, args.bundle, args.out = args.archive.resolve(), args.bundle.resolve(), args.out.resolve()
    try:
        return _bench(args)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped everything the benchmark started", file=sys.stderr)
        return 130


def _bench(args: argparse.Namespace) -> int:
    import yaml

    from ..archive.mill import read_archive
    from ..model.meta import BundleError, read_bundle_meta
    from ..model.runtime import ServingError, choose_runtime
    from ..model.serving import load_serving
    from ..service.config import ConfigError, load_config
    from .broker import BenchBroker, BrokerStartError
    from .runs import Bench, BenchError, run_daemon, run_fanin

    args.out.mkdir(parents=True, exist_ok=True)
    try:
        overlay = (yaml.safe_load(args.daemon_config.read_text()) if args.daemon_config else None) or {}
        if not isinstance(overlay, dict):
            raise ValueError(f"--daemon-config {args.daemon_config}: expected a mapping of settings")
        daemon_config = {**overlay, "runtime": args.runtime, "device": args.device}
        base = args.out / "daemon-config.yaml"  # validated now, not minutes later at the first daemon run
        base.write_text(yaml.safe_dump(daemon_config, sort_keys=False))
        checked = load_config(base)
        if checked.outputs.scores == "off":
            raise ValueError(f"--daemon-config {args.daemon_config}: outputs.scores: off publishes no scores, and the "
                             "benchmark times every window by its score: use window or batch")
        max_batch = checked.batching.max_batch
        meta = read_bundle_meta(args.bundle)
        choice = choose_runtime(args.runtime, args.device, meta, str(args.bundle))
        served = load_serving(args.bundle, choice, meta)
    except (OSError, yaml.YAMLError, ConfigError, ServingError, BundleError, ValueError) as exc:
        print(f"edge-monitor bench: error: {exc}", file=sys.stderr)
        return 2
    device = served.runtime.device
    inputs = list(dict.fromkeys(LoadInput.parse(i, args.chunk) for i in args.inputs))
    print(f"runtime {served.runtime.runtime} on {device} ({served.runtime.reason}); bundle {args.bundle} "
          f"(model {meta.model_id}); archive {args.archive}", flush=True)
    archive = read_archive(args.archive)
    report: dict = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source_version(args.daemon_source),
        "daemon_source": None if args.daemon_source is None else str(args.daemon_source),
        "runtime": served.runtime.runtime, "device": device, "cpu_count": os.cpu_count(),
        "host": platform.node(), "bundle": str(args.bundle), "model_id": meta.model_id,
        "archive": str(args.archive), "encoding": args.encoding, "inputs": [i.label for i in inputs],
        "cuts_per_machine": args.cuts,
        "lookahead_samples": meta.stable_region.lookahead_samples, "window": meta.window.to_dict(),
        "daemon_config": daemon_config, "model": None, "fanin": [], "runs": [], "errors": [],
    }
    out_json = args.out / "bench.json"
    out_json.unlink(missing_ok=True)  # a failed run must not leave the last one's figures behind

    def save() -> None:
        out_json.write_text(json.dumps(report, indent=1, default=_plain) + "\n")

    levels = sorted(set(args.machines))
    try:
        with BenchBroker(args.out / "broker") as broker:
            print(f"broker: mosquitto on {broker.address}", flush=True)
            if not args.skip_model:
                from .model import model_figures

                print("model: timing the scoring call ...", flush=True)
                report["model"] = model_figures(served, archive, MODEL_BATCHES, max_batch, args.model_seconds,
                                                args.baseline_windows)
                save()
            bench = Bench(broker, args.archive, archive, args.bundle, meta, args.out, cuts=args.cuts, seed=args.seed, encoding=args.encoding, daemon_config=daemon_config,
                          stall_timeout=args.stall_timeout, daemon_source=args.daemon_source)
            for inp in inputs if not args.skip_fanin else []:
                print(f"fan-in: {levels[-1]} machines as fast as possible to a do-nothing subscriber, "
                      f"{inp.label} ...", flush=True)
                report["fanin"].append(run_fanin(bench, levels[-1], inp))
                save()
            for inp in inputs:
                runs = [(n, 1.0) for n in levels] if args.realtime else []
                if args.speed0:
                    runs.append((levels[-1], 0.0))
                for machines, speed in runs:
                    print(f"daemon: {machines} machines, {'real time' if speed else 'as fast as possible'}, "
                          f"{inp.label} ...", flush=True)
                    report["runs"].append(run_daemon(bench, machines, speed, inp))
                    save()
    except (BenchError, BrokerStartError, BundleError) as exc:
        report["errors"].append(str(exc))
        save()
        print(f"edge-monitor bench: error: {exc}", file=sys.stderr)
        return 1
    report["ratios"] = ratios(report)
    save()
    print()
    print(format_report(report))
    print(f"\nwrote {out_json}")
    failed = [r["label"] for r in report["runs"] if not r["complete"] or r["lost"] or r["duplicated"] or r["unexpected"]]
    if failed:
        print(f"FAILED: windows lost, duplicated or unexpected, or results missing, in {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def source_version(here: Path | None = None) -> dict:
    """The commit the daemon ran from (``here``, default this checkout) and the files changed since
    (figures depend on both)."""
    here = here or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit, status = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return {"commit": None if commit is None else commit.strip(),
            "modified": None if status is None else [line[3:] for line in status.splitlines()]}


def ratios(report: dict) -> dict:
    """Figures of one run over another of the same benchmark (the box's noise mostly cancels)."""
    out: dict = {}
    fanin = {f["input"]: f for f in report["fanin"]}
    fast = {r["input"]: r for r in report["runs"] if r["speed"] == 0}
    over_fanin = {k: round(r["msgs_per_s_in"] / fanin[k]["msgs_per_s"], 3) for k, r in fast.items() if k in fanin}
    if over_fanin:
        out["speed0_daemon_over_fanin"] = over_fanin
    chunks = [r for k, r in fast.items() if k.startswith("chunks")]
    frames = [r for k, r in fast.items() if k.startswith("frames")]
    if chunks and frames:  # windows/s as fast as possible: what one process can take
        out["speed0_windows_frames_over_chunks"] = {
            f"{f['input']}/{c['input']}": round(f["windows_per_s"] / c["windows_per_s"], 2) for f in frames for c in chunks}
    if report["model"] and "speedup_max_batch_over_predict" in report["model"]:
        out["max_batch_over_predict"] = report["model"]["speedup_max_batch_over_predict"]
    return out


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _ms(figures: dict, key: str) -> str:
    return "-" if figures[key] is None else f"{figures[key]:.0f}"


COLUMNS = (("machines", 8), ("speed", 6), ("input", 14), ("msgs/s in", 10), ("windows/s", 10), ("CPU cores", 10),
           ("CPU ms/msg", 11), ("RSS MiB", 8), ("lat p50", 8), ("lat p99", 8), ("beyond p50", 11),
           ("beyond p99", 11), ("lost", 5), ("dup", 5))


def format_report(report: dict) -> str:
    source = report.get("source") or {}
    changed = f" + {len(source['modified'])} modified files" if source.get("modified") else ""
    lines = [f"runtime {report.get('runtime', 'tensorflow')} on {report['device']}, {report['cpu_count']} cores; model {report['model_id']}; "
             f"{report['cuts_per_machine']} cut(s) per machine, {report['encoding']} payloads"
             f"{' where the input does not say' if any('-' in i for i in report.get('inputs', [])) else ''}; "
             f"source {source.get('commit')}{changed}; latencies in ms"]
    model = report["model"]
    if model:
        for runtime, rows in model.get("by_runtime", {"": model["scoring"]}).items():
            for r in rows:
                lines.append(f"model  {runtime:<12} score(batch {r['batch']:>4})"
                             f"{' = max_batch' if r['batch'] == model['max_batch'] else '':12}"
                             f"{r['windows_per_s']:>10.0f} windows/s  ({r['ms_per_call']:.1f} ms per call)")
        b = model.get("predict_baseline")
        if b:
            lines.append(f"model  TensorFlow predict, 1 window per call {b['windows_per_s']:>10.0f} windows/s  "
                         f"({b['ms_per_window']:.1f} ms per window, {b['windows']} windows)")
        for name, parity in model.get("parity", {}).items():
            lines.append(f"model  {name} vs tensorflow on the same windows: max relative difference "
                         + ", ".join(f"{k} {v['max_rel']:.2g}" for k, v in parity.items()))
    for fanin in report["fanin"]:
        lines.append(f"broker fan-in to a do-nothing QoS 1 subscriber, {fanin['input']}: {fanin['msgs_per_s']:.0f} "
                     f"msgs/s ({fanin['received']} of {fanin['messages']} messages, {fanin['machines']} machines; "
                     f"the generator published {fanin['publish_msgs_per_s']:.0f} msgs/s)")
    if report["runs"]:
        lines.append("")
        lines.append("".join(f"{name:>{width}}" for name, width in COLUMNS))
        for r in report["runs"]:
            cells = (r["machines"], "max" if r["speed"] == 0 else f"{r['speed']:g}", r["input"],
                     f"{r['msgs_per_s_in']:.0f}", f"{r['windows_per_s']:.0f}", f"{r['cpu_cores_steady']:.2f}",
                     f"{r['cpu_ms_per_msg']:.3f}", f"{r['rss_max_mib']:.0f}",
                     _ms(r["latency_ms"], "p50"), _ms(r["latency_ms"], "p99"),
                     _ms(r["beyond_lookahead_ms"], "p50"), _ms(r["beyond_lookahead_ms"], "p99"),
                     r["lost"], r["duplicated"])
            line = "".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS))
            if r["unexpected"]:
                line += f"  {r['unexpected']} UNEXPECTED"
            lines.append(line + ("" if r["complete"] else "  INCOMPLETE"))
    for r in report["runs"]:
        cores = {role: c for role, c in (r.get("thread_cores_steady") or {}).items() if c is not None}
        if cores:
            lines.append(f"cores by thread, steady part, {r['label']}: "
                         + ", ".join(f"{role} {c:.2f}" for role, c in cores.items()))
    busy = [f"{r['label']} {r['other_load_cores']:.2f}" for r in report["runs"] if r["other_load_cores"] > 0.2]
    if busy:
        lines.append(f"other processes on the box used CPU cores during: {', '.join(busy)} (figures disturbed)")
    ratio = report.get("ratios", {})
    for label, value in ratio.get("speed0_daemon_over_fanin", {}).items():
        lines.append(f"speed-0 daemon input rate / broker fan-in, {label}: {value:.2f}")
    for label, value in ratio.get("speed0_windows_frames_over_chunks", {}).items():
        lines.append(f"speed-0 windows/s, {label}: {value:.2f}x")
    if "max_batch_over_predict" in ratio:
        lines.append(f"scoring at max_batch / one predict per window: {ratio['max_batch_over_predict']:.0f}x")
    return "\n".join(lines)
