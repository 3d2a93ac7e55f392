"""The ``replay`` command: arguments, the archive to replay, a progress display, the exit code."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from ..core.inbound import DEFAULT_LIMITS
from ..core.topics import cmd_topic, validate_root
from ..service.mqtt import (
    BrokerError,
    BrokerSettings,
    TlsSettings,
    connect,
    disconnect,
    make_client,
    parse_address,
)
from .mill import Archive, ArchiveError, read_archive
from .publisher import Publisher
from .replay import (
    DEFAULT_CHUNK,
    ENCODINGS,
    TOOL_CHANGE,
    MachineProgress,
    ReplayEvent,
    ReplayStats,
    plan_machines,
    replay,
)

DEFAULT_ARCHIVE = Path("data/synthetic-mill.mat")


class Progress:
    """One line per machine, redrawn in place on a terminal; plain lines (one per finished cut)
    otherwise."""

    def __init__(self, out: TextIO, tty: bool | None = None, interval: float = 0.25) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.interval = interval
        self._drawn = 0
        self._last = 0.0
        self.stats: ReplayStats | None = None  # the latest, also when the replay was interrupted

    def __call__(self, event: ReplayEvent, stats: ReplayStats) -> None:
        self.stats = stats
        if not self.tty:
            if event.kind == "end":
                m = stats.machines[event.machine]
                self.out.write(
                    f"{m.machine}: cut {event.cut_id} done (case {event.job.case}, "
                    f"{m.cuts_done} cuts, {m.messages} messages)\n"
                )
                self.out.flush()
            elif event.kind == TOOL_CHANGE:
                self.out.write(
                    f"{event.machine}: new tool (case {event.job.case}) before cut {event.cut_id}: "
                    "no reset sent (--no-resets), left to the operator\n"
                )
                self.out.flush()
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.draw(stats)
            self._last = now

    def draw(self, stats: ReplayStats) -> None:
        if not self.tty:
            return
        lines = [self._line(m) for m in stats.machines.values()]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)

    @staticmethod
    def _line(m: MachineProgress) -> str:
        if m.cut is None:
            return f"{m.machine}  waiting"
        frac = m.samples_sent / m.cut_samples if m.cut_samples else 0.0
        bar = "#" * round(20 * frac)
        state = "done" if m.finished else f"[{bar:<20}] {100 * frac:3.0f}%"
        return f"{m.machine}  case {m.case:>2}  cut {m.cut:<14} {state}  cuts {m.cuts_done}  messages {m.messages}"


# ----------------------------------------------------------------------------------------- CLI


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--archive", type=Path, default=None,
        help=f"the archive (mill.mat layout); default {DEFAULT_ARCHIVE}, synthesised if missing",
    )
    parser.add_argument("--broker", default="localhost:1883", help="HOST:PORT of the MQTT broker (default %(default)s)")
    parser.add_argument("--machines", type=int, default=2, help="virtual machines publishing in parallel (default %(default)s)")
    parser.add_argument(
        "--speed", type=float, default=1.0,
        help="real time times X (default %(default)s); 0 = as fast as the broker acknowledges",
    )
    parser.add_argument("--cases", default=None, help="comma-separated cases to replay, e.g. 1,13 (default: all)")
    parser.add_argument("--loop", action="store_true", help="start over when done, until interrupted")
    parser.add_argument(
        "--no-resets", dest="resets", action="store_false",
        help="send no reset (R/<machine>/cmd) when a case starts a new tool: leave tool changes to the "
             "operator, who resets from SCADA. For a machine's data acquisition user (daq-<machine>), "
             "which may not send commands; the end of the replay says how many were left",
    )
    parser.add_argument("--root", default="mill", help="topic root R (default %(default)s)")
    parser.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK,
        help="samples per signal message (default %(default)s = 1 s at 250 Hz)",
    )
    parser.add_argument(
        "--encoding", choices=ENCODINGS, default="json",
        help="signal chunks (or frames) as JSON (default) or f32: compact float32 with an MQTT 5 content type",
    )
    parser.add_argument(
        "--frames", action="store_true",
        help="each block of --chunk samples as one frame of every channel (R/<machine>/frame, one message "
             "where chunks take six; docs/protocol.md) rather than a chunk per channel",
    )
    parser.add_argument("--username", default=None, help="broker user (a broker without anonymous access)")
    parser.add_argument(
        "--password-file", type=Path, default=None, help="file whose first line is that user's password"
    )
    parser.add_argument("--cafile", type=Path, default=None, help="CA certificate: connect with TLS")


def parse_cases(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        cases = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--cases: expected comma-separated case numbers like 1,13, got {text!r}") from None
    if not cases:
        raise ValueError("--cases: no case given")
    return list(dict.fromkeys(cases))  # keep the order given, drop repeats


def load_replay_archive(path: Path | None, out: TextIO) -> Archive:
    if path is None:
        path = DEFAULT_ARCHIVE
        if not path.exists():
            from .synthetic import write_synthetic

            out.write(f"no --archive given and {path} does not exist: writing the synthetic archive there\n")
            write_synthetic(path)
    return read_archive(path)


def run_replay(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``replay`` command; returns the exit code (0 done, 1 error, 130 interrupted)."""
    out = out or sys.stdout
    try:
        host, port = parse_address(args.broker)
        cases = parse_cases(args.cases)
        validate_root(args.root)
        if not args.speed >= 0:
            raise ValueError(f"--speed must be 0 (as fast as possible) or positive, got {args.speed}")
        if not 1 <= args.chunk <= DEFAULT_LIMITS.max_chunk:
            raise ValueError(f"--chunk must be 1-{DEFAULT_LIMITS.max_chunk} samples, got {args.chunk}")
        archive = load_replay_archive(args.archive, out)
        plan = plan_machines(archive, args.machines, cases)
    except (ValueError, ArchiveError, OSError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    if archive.dropped:
        out.write(f"{archive.path}: {len(archive.dropped)} corrupt cut(s) left out: " +
                  "; ".join(str(d) for d in archive.dropped) + "\n")
    for machine, jobs in plan.items():
        cases_of = list(dict.fromkeys(job.case for job in jobs))
        out.write(f"{machine}: {len(jobs)} cuts of case(s) {', '.join(map(str, cases_of))}\n")

    settings = BrokerSettings(
        host=host, port=port, client_id=f"edge-monitor-replay-{os.getpid()}",
        username=args.username, password_file=args.password_file,
        tls=TlsSettings(ca=args.cafile) if args.cafile else None,
    )
    try:
        client = make_client(settings, clean_start=True)
        connect(client)
    except BrokerError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    progress = Progress(out)
    stop = threading.Event()
    code = 0
    try:
        replay(
            Publisher(client), args.root, plan, speed=args.speed, chunk=args.chunk, loop=args.loop,
            stop=stop, on_event=progress, encoding=args.encoding, resets=args.resets, frames=args.frames,
        )
    except KeyboardInterrupt:
        stop.set()
        code = 130
        out.write("interrupted\n")
    finally:
        disconnect(client)
    stats = progress.stats
    if stats is not None:
        progress.draw(stats)
        out.write(
            f"replayed {stats.cuts} cuts on {len(plan)} machine(s) to {settings.address} under {args.root}/: "
            f"{stats.chunks} {'frames' if args.frames else 'chunks'}, {stats.samples} samples per channel, {stats.messages} messages "
            f"in {stats.seconds:.1f} s\n"
        )
        if stats.tool_changes_left:
            per_machine = ", ".join(
                f"{m.machine} {m.tool_changes_left}" for m in stats.machines.values() if m.tool_changes_left
            )
            out.write(
                f"left {stats.tool_changes_left} tool change(s) to the operator (--no-resets; {per_machine}): "
                "until a machine is reset, the monitor keeps its alarm state and judges the new tool's cuts "
                "against the previous tool's; reset it from SCADA when its tool is changed (docs/scada.md, "
                "\"Resetting a machine after a tool change\")\n"
            )
        if stats.refused and report_refusals(stats, args) != 0:
            code = 1
    return code


def report_refusals(stats: ReplayStats, args: argparse.Namespace) -> int:
    """Say what the broker refused; 0 when it refused tool-change resets only (a data acquisition
    user rightly may not send commands, and everything else went through), 1 when it refused
    anything else."""
    who = f"user {args.username}" if args.username else "an anonymous client"
    reset_topics = {cmd_topic(args.root, m) for m in stats.machines}
    resets = {key: n for key, n in stats.refusals.items() if key[0] in reset_topics}
    others = {key: n for key, n in stats.refusals.items() if key[0] not in reset_topics}
    if resets:
        reasons = _reasons(resets)
        print(
            f"replay: the broker refused {stats.refused_resets} of {stats.resets} tool-change reset(s) on "
            f"{_topics(resets)} ({reasons}): "
            + (f"{who} may not send commands, so " if "Not authorized" in reasons else "")
            + "the monitor was not told of those tool changes. Reset the machines from SCADA when their "
            "tool is changed (docs/scada.md), or replay with --no-resets to leave tool changes to the operator",
            file=sys.stderr,
        )
    if not others:
        return 0
    print(
        f"replay: the broker refused {sum(others.values())} message(s) ({_reasons(others)}) on {_topics(others)}: "
        f"{who} may not publish there. A data acquisition user (daq-<machine>) may publish only its own "
        "machine's topics, and replay names its machines mill-01, mill-02, … (--machines): check --machines "
        "and --root against the broker's ACL (docs/deploy.md, \"Users and roles\")",
        file=sys.stderr,
    )
    return 1


def _reasons(refusals: dict[tuple[str, str], int]) -> str:
    return ", ".join(sorted({reason for _, reason in refusals}))


def _topics(refusals: dict[tuple[str, str], int], most: int = 4) -> str:
    """The topics refused most often, then how many more."""
    by_topic: dict[str, int] = {}
    for (topic, _), n in refusals.items():
        by_topic[topic] = by_topic.get(topic, 0) + n
    shown = sorted(by_topic, key=lambda t: (-by_topic[t], t))[:most]
    more = len(by_topic) - len(shown)
    return ", ".join(shown) + (f" and {more} more topic(s)" if more else "")
