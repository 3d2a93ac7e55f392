"""``python -m training {synth,fit,demo-bundle,export,thresholds,search,evaluate,crossval,lookahead-study,evidence-study,plot-bench}``: the training package's command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_ARCHIVE = Path("data/synthetic-mill.mat")


def _archive_arg(value: str | None) -> Path:
    """The archive to use: the one given, else the synthetic archive (written on first use)."""
    if value:
        return Path(value)
    if not DEFAULT_ARCHIVE.exists():
        from edge_monitor.archive.synthetic import write_synthetic

        print(f"no --archive given: writing the synthetic archive {DEFAULT_ARCHIVE}", flush=True)
        write_synthetic(DEFAULT_ARCHIVE, seed=0)
    return DEFAULT_ARCHIVE


def _cmd_synth(args: argparse.Namespace) -> None:
    from edge_monitor.archive.synthetic import write_synthetic

    synthetic = write_synthetic(args.out, seed=args.seed)
    corrupt = [t for t in synthetic.truth if t.corrupt]
    print(f"wrote {args.out}: {len(synthetic.truth)} cuts ({len(corrupt)} corrupt), seed {args.seed}")


def _cmd_fit(args: argparse.Namespace) -> None:
    from .fit import fit

    overrides = {"max_epochs": args.max_epochs} if args.max_epochs else None
    fit(
        _archive_arg(args.archive), args.out,
        preset="quick" if args.quick else args.preset,
        split_kind=args.split, seed=args.seed, overrides=overrides, folds=args.folds, repeats=args.repeats,
        rule=_rule(args),
    )


def _cmd_demo_bundle(args: argparse.Namespace) -> None:
    from .demo_bundle import provide

    provide(_archive_arg(args.archive), args.out)


def _rule(args: argparse.Namespace):
    from .operating import OperatingRule

    return OperatingRule(args.max_false_alarms, args.max_false_warnings)  # warnings None: twice the alarms' share


def _share(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.1 or 10%, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to below 1 (or 0% to below 100%), got {text!r}")
    return value


def _rule_args(p: argparse.ArgumentParser) -> None:
    from .operating import OperatingRule

    default = OperatingRule()
    p.add_argument("--max-false-alarms", type=_share, default=default.max_false_alarms, metavar="SHARE",
                   help="the operating point: the most sensitive alarm threshold that alarms at most this share of "
                        "the held-out healthy tool lives (default %(default)s; 0.1 or 10%%)")
    p.add_argument("--max-false-warnings", type=_share, metavar="SHARE",
                   help="the same for the warning, a lower level for earlier notice; one level when it gives "
                        f"none (default: twice --max-false-alarms, up to 0.5; {default.max_false_warnings} by default)")


def _cmd_thresholds(args: argparse.Namespace) -> None:
    from .rechoose import rechoose_bundle

    rechoose_bundle(args.bundle, _rule(args), dry_run=args.dry_run)


def _cmd_export(args: argparse.Namespace) -> None:
    from edge_monitor.archive.mill import read_archive
    from edge_monitor.model.bundle import export_bundle, load_bundle

    from .dataset import prepare_windows
    from .fit import describe_export

    archive = read_archive(_archive_arg(args.archive))
    meta = load_bundle(args.bundle).meta
    ws = prepare_windows(archive, meta.window, meta.stable_region)
    if len(ws) == 0:
        raise ValueError(f"{args.archive}: no stable windows to check the export on")
    meta = export_bundle(args.bundle, ws.data)
    print(f"bundle {args.bundle}: now model {meta.model_id}, format {meta.format}", flush=True)
    print(describe_export(meta), flush=True)


def _cmd_search(args: argparse.Namespace) -> None:
    from .search import run_search

    run_search(
        _archive_arg(args.archive), args.out, iterations=args.iterations, seed=args.seed,
        split_kind=args.split, max_epochs=args.max_epochs, folds=args.folds, repeats=args.repeats,
        rule=_rule(args),
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    evaluate(args.bundle, _archive_arg(args.archive), args.out)


def _cmd_crossval(args: argparse.Namespace) -> None:
    from .crossval import crossval

    crossval(_archive_arg(args.archive), args.out, preset="quick" if args.quick else args.preset,
             folds=args.folds, repeats=args.repeats, seed=args.seed, rule=_rule(args), from_dir=args.from_dir)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _cmd_lookahead_study(args: argparse.Namespace) -> None:
    from .lookahead import run

    run(args.seeds, args.lookaheads, args.half_width, args.exit_ramp_scale, args.entry_ramp_scale)


def _cmd_evidence_study(args: argparse.Namespace) -> None:
    from .evidence_study import run

    run([Path(d) for d in args.dirs], _rule(args))


def _cmd_plot_bench(args: argparse.Namespace) -> None:
    import json

    from .plots import plot_bench_scaling

    paths = [Path(p) for p in args.bench_json]
    labels = args.label or ([""] if len(paths) == 1 else [p.parent.name for p in paths])
    if len(labels) != len(paths):
        raise SystemExit(f"plot-bench: {len(labels)} --label for {len(paths)} files; give one per file")
    benches = {label: json.loads(p.read_text()) for label, p in zip(labels, paths)}
    out = args.out or paths[0].with_name("bench-scaling.png")
    print(f"wrote {plot_bench_scaling(benches, out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="of the log on stderr: TensorFlow's own lines (debug: its start-up notices; "
                             "warning: its errors) and Python warnings (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic archive in the mill.mat layout")
    p.add_argument("--out", required=True, help="path of the .mat file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("fit", help="train a β-VAE and write a model bundle")
    p.add_argument("--archive", help=f"mill.mat (default: the synthetic {DEFAULT_ARCHIVE})")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--quick", action="store_true",
                   help="small model, few epochs (3-7 minutes on 2 cores, with its fold models)")
    p.add_argument("--preset", default="default", choices=["default", "quick"])
    p.add_argument("--split", default="cut", choices=["cut", "window"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, help="override the preset's epoch limit")
    p.add_argument("--folds", type=int, default=4,
                   help="folds of tools for the thresholds (each one more model; the number of cases: "
                        "leave one case out)")
    p.add_argument("--repeats", type=int, default=1,
                   help="deal the tools into folds this many times (seeds --seed on) and choose the thresholds "
                        "on all of them; reports mean ± sd")
    _rule_args(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("demo-bundle", help="the demo's bundle: the shipped one (deploy/demo-bundle) for the "
                       "synthetic archive it was trained on, else a quick fit")
    p.add_argument("--archive", help="archive the demo replays (default: the synthetic data/synthetic-mill.mat)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory (kept when there already)")
    p.set_defaults(func=_cmd_demo_bundle)

    p = sub.add_parser("thresholds", help="move a bundle's operating point without training, on the held-out "
                                          "tool lives it stores; prints the trade-off")
    p.add_argument("--bundle", required=True, help="bundle directory (bundle.json rewritten: a new model id; "
                                                   "`systemctl reload edge-monitor` takes it up)")
    p.add_argument("--dry-run", action="store_true", help="print the trade-off and the choice, change nothing")
    _rule_args(p)
    p.set_defaults(func=_cmd_thresholds)

    p = sub.add_parser("export", help="export a bundle's scoring graph for ONNX Runtime (serving without "
                                      "TensorFlow), checked against TensorFlow on an archive's windows")
    p.add_argument("--bundle", required=True, help="bundle directory (rewritten in place: format 3, a new model id)")
    p.add_argument("--archive", help=f"mill.mat whose windows check the export (default: the synthetic {DEFAULT_ARCHIVE})")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("search", help="random hyper-parameter search (resumable)")
    p.add_argument("--archive", help=f"mill.mat (default: the synthetic {DEFAULT_ARCHIVE})")
    p.add_argument("--out", required=True, help="search directory (re-run to resume)")
    p.add_argument("--iterations", type=int, required=True, help="number of trials in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="cut", choices=["cut", "window"])
    p.add_argument("--max-epochs", type=int, default=300, help="epoch limit of each trial")
    p.add_argument("--folds", type=int, default=4,
                   help="folds of whole tools each trial is judged on (as fit chooses thresholds)")
    p.add_argument("--repeats", type=int, default=1, help="dealings of the tools into folds per trial")
    _rule_args(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("evaluate", help="score an archive with a bundle; metrics.json and plots")
    p.add_argument("--bundle", required=True)
    p.add_argument("--archive", help=f"mill.mat (default: the synthetic {DEFAULT_ARCHIVE})")
    p.add_argument("--out", help="output directory (default: inside the bundle)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("crossval", help="cross-validation by tool: tool-level outcomes and PR-AUC, mean ± sd over repeats")
    p.add_argument("--archive", help=f"mill.mat (default: the synthetic {DEFAULT_ARCHIVE})")
    p.add_argument("--out", required=True, help="directory for crossval.json")
    p.add_argument("--quick", action="store_true", help="the quick preset (the default preset takes far longer)")
    p.add_argument("--preset", default="default", choices=["default", "quick"])
    p.add_argument("--folds", type=int, default=4, help="groups of tools; the number of cases = leave-one-case-out")
    p.add_argument("--repeats", type=int, default=5, help="dealings of the tools into folds (seeds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="train nothing: decide again on the out-of-fold scores a previous crossval stored in DIR "
                        "(e.g. with another --max-false-alarms)")
    _rule_args(p)
    p.set_defaults(func=_cmd_crossval)

    p = sub.add_parser("lookahead-study",
                       help="the stable-region detector's window precision and recall per look-ahead, on synthetic archives")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3, 4], help="synthetic archives (default 0,1,2,3,4)")
    p.add_argument("--lookaheads", type=_ints, default=[1, 2, 3], help="blocks after a block (default 1,2,3)")
    p.add_argument("--half-width", type=int, default=3, help="blocks before a block (default 3)")
    p.add_argument("--exit-ramp-scale", type=float, default=1.0,
                   help="stretch the generator's exit ramps (a stress test; default 1)")
    p.add_argument("--entry-ramp-scale", type=float, default=1.0,
                   help="stretch the generator's entry ramps (a stress test; default 1)")
    p.set_defaults(func=_cmd_lookahead_study)

    p = sub.add_parser("evidence-study", help="compare figures per cut (median, quantiles, exceedance, per channel) "
                                              "on crossval's stored scores, under one operating rule; trains nothing")
    p.add_argument("dirs", metavar="DIR", nargs="+", help="a crossval --out directory (oof_scores.npz, crossval.json)")
    _rule_args(p)
    p.set_defaults(func=_cmd_evidence_study)

    p = sub.add_parser("plot-bench", help="plot edge-monitor bench's scaling: CPU and latency p99 over machines")
    p.add_argument("bench_json", metavar="BENCH_JSON", nargs="+",
                   help="bench.json written by `edge-monitor bench`; several: one line each (e.g. before, after)")
    p.add_argument("--label", action="append", help="a name per BENCH_JSON, in order (default: its folder's name)")
    p.add_argument("--out", type=Path, help="PNG to write (default: bench-scaling.png beside BENCH_JSON)")
    p.set_defaults(func=_cmd_plot_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line. ``main()`` runs as the process's own (``python -m training``, the console
    script): Python's stderr is kept off fd 2 and the log configured; ``main(argv)`` leaves the
    process as it is (tests). Either way TensorFlow's native lines go to the log, not to stderr
    (``edge_monitor/service/native_log.py``)."""
    from edge_monitor.service.native_log import NativeCapture

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines off
    args = build_parser().parse_args(argv)
    if argv is None:
        _own_process(args.log_level)
    try:
        with NativeCapture(during=args.command) as native:
            try:
                args.func(args)
            finally:
                _no_gpu_is_no_news(native)
    except (ValueError, FileExistsError) as exc:  # ArchiveError and BundleError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _no_gpu_is_no_news(native) -> None:
    """CUDA's "no GPU" errors are expected where TensorFlow sees none: training runs on the CPU."""
    if "tensorflow" in sys.modules:  # only if the command loaded it
        from edge_monitor.model.device import sees_no_gpu

        if sees_no_gpu():
            native.expect_no_gpu()


def _own_process(level: str) -> None:
    """Before TensorFlow loads: Python's stderr off fd 2, a log on it for TensorFlow's lines."""
    from edge_monitor.service.native_log import own_process_output

    own_process_output("auto", level)


if __name__ == "__main__":
    sys.exit(main())
