"""Command line: ``python -m edge_monitor run|replay|check|bench`` (console script ``edge-monitor``).

``run`` starts the monitor daemon; ``replay`` publishes archived cuts as live machines would;
``check`` checks an installation end to end (``service/check.py``); ``bench`` measures the
daemon's throughput with its own broker and load generator.
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
    run.add_argument("--metrics", metavar="ADDRESS:PORT", help="metrics endpoint: ADDRESS:PORT, PORT (0: any free "
                     "one) or off (overrides metrics.address/port/enabled)")
    run.set_defaults(func=_run)

    replay = commands.add_parser(
        "replay", help="publish archived cuts through a broker as live machines would",
        description="Publish archived cuts through a broker as live machines would.",
    )
    add_replay_arguments(replay)
    replay.set_defaults(func=_replay)

    check = commands.add_parser(
        "check", help="check an installation end to end, a line per check",
        description="Check an installation end to end: the configuration, the bundle (and its model), the "
                    "state directory, and the broker: its listeners (a WARN line for one that lets clients "
                    "choose their ids), both users' logins and the ACL. A line per check; exit code 1 when any "
                    "fails. The broker logins are skipped while a monitor with this configuration runs: logging "
                    "in as its users would take over its connections.",
    )
    check.add_argument("--config", default="config.yaml", help="configuration file (default: %(default)s)")
    check.add_argument("--broker", metavar="HOST:PORT", help="broker address (overrides broker.host/port)")
    check.add_argument("--bundle", metavar="PATH", help="model bundle directory (overrides bundle)")
    check.add_argument("--root", metavar="R", help="topic root (overrides topic_root)")
    check.add_argument("--instance", metavar="NAME", help="monitor instance name (overrides instance)")
    check.add_argument("--no-model", action="store_true",
                       help="check the bundle's metadata, files and model id, but do not load the model "
                            "(no model loaded: about a second)")
    check.add_argument("--broker-may-be-down", action="store_true",
                       help="a broker that cannot be reached is a skipped check, not a failure (the unit's "
                            "ExecStartPre: at boot the broker may still be starting)")
    check.add_argument("--broker-conf", metavar="PATH",
                       help="Mosquitto's main configuration, to check that every listener takes client ids from "
                            "user names (default: /etc/mosquitto/mosquitto.conf when the broker is on this host)")
    check.set_defaults(func=_check)

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
    # TensorFlow's C++ INFO and WARNING lines off once it runs; what it writes while it starts is
    # captured into the log (service/native_log.py), and Python's stderr is kept off fd 2 for that.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .service.config import ConfigError, load_config
    from .service.daemon import StartupError, run
    from .service.native_log import own_process_output

    overrides = {"broker": args.broker, "bundle": args.bundle, "root": args.root, "instance": args.instance,
                 "metrics": args.metrics}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        return _fail(str(exc))
    own_process_output(config.logging.format, config.logging.level)
    try:
        return run(config, lambda: load_config(args.config, overrides))  # read again on reload (SIGHUP)
    except StartupError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C before the daemon was up (afterwards it stops gracefully)
        return 130


def _replay(args: argparse.Namespace) -> int:
    from .archive.replay_cli import run_replay

    return run_replay(args)


def _check(args: argparse.Namespace) -> int:
    if not args.no_model:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
        # what TensorFlow writes while the model loads is captured (service/native_log.py): only
        # its real errors are shown, as warnings among the check's lines
        from .service.native_log import own_process_output

        own_process_output()
    from .service.check import run_check

    overrides = {"broker": args.broker, "bundle": args.bundle, "root": args.root, "instance": args.instance}
    return run_check(args.config, overrides, load_model=not args.no_model,
                     broker_may_be_down=args.broker_may_be_down, broker_conf=args.broker_conf)


def _bench(args: argparse.Namespace) -> int:
    from .bench.cli import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
