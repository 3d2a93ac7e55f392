"""Command line: ``python -m edge_monitor run|replay|bench`` (console script ``edge-monitor``).

``run`` starts the monitor daemon; ``replay`` publishes archived cuts as live machines would;
``bench`` measures the daemon's throughput with its own broker and load generator.
Start-up problems (a configuration key, the bundle, the device, the broker) end with one line
naming what to fix and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__

EXIT_STARTUP = 2


def build_parser() -> argparse.ArgumentParser:
    from .archive.replay_cli import add_replay_arguments
    from .bench.cli import add_bench_arguments

    parser = argparse.ArgumentParser(
        prog="edge-monitor",
        description="Streaming tool-wear monitor: MQTT channels in, β-VAE scores and alarms out.",
    )
    parser.add_argument("--version", action="version", version=f"edge-monitor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the monitor daemon", description="Run the monitor daemon.")
    run.add_argument("--config", default="config.yaml", help="configuration file (default: %(default)s)")
    run.add_argument("--broker", metavar="HOST:PORT", help="broker address (overrides broker.host/port)")
    run.add_argument("--bundle", metavar="PATH", help="model bundle directory (overrides bundle)")
    run.add_argument("--root", metavar="R", help="topic root (overrides topic_root)")
    run.add_argument("--instance", metavar="NAME", help="monitor instance name (overrides instance)")
    run.set_defaults(func=_run)

    replay = commands.add_parser(
        "replay", help="publish archived cuts through a broker as live machines would",
        description="Publish archived cuts through a broker as live machines would.",
    )
    add_replay_arguments(replay)
    replay.set_defaults(func=_replay)

    bench = commands.add_parser(
        "bench", help="measure the daemon's throughput, CPU, memory and latency",
        description="Throughput benchmark: its own Mosquitto, the model's scoring call, the broker's fan-in, "
                    "and the real daemon fed by a load generator at several machine counts.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def _fail(message: str) -> int:
    print(f"edge-monitor: error: {message}", file=sys.stderr)
    return EXIT_STARTUP


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from .service.config import ConfigError, load_config
    from .service.daemon import StartupError, run
    from .service.logging import configure_logging

    overrides = {"broker": args.broker, "bundle": args.bundle, "root": args.root, "instance": args.instance}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging(config.logging.format, config.logging.level)
    try:
        return run(config)
    except StartupError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C before the daemon was up (afterwards it stops gracefully)
        return 130


def _replay(args: argparse.Namespace) -> int:
    from .archive.replay_cli import run_replay

    return run_replay(args)


def _bench(args: argparse.Namespace) -> int:
    from .bench.cli import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
