"""Replaying archived cuts through an MQTT broker, as machines on the shop floor would publish them.

``python -m edge_monitor replay --machines N --speed X [--archive mill.mat] [--cases 1,13]``:
N virtual machines ``mill-01`` … publish in parallel (one connection, their messages interleaved
in time). The selected cases (default: every case of the archive, in order) are dealt out like
cards: machine *i* works through cases *i*, *i + N*, *i + 2N*, … of the selection, each case's
runs in order, so wear grows as on a real machine. With more machines than cases, machine *i*
takes case *i mod #cases* (several machines then replay the same case). Before each case the
machine sends a ``reset`` command: a new case is a new tool. ``--no-resets`` sends none and leaves
the tool changes to the operator, who resets from SCADA (a machine's data acquisition user may not
send commands); the command then says how many it left. ``--loop`` starts every machine over when
it has finished (cut ids of later passes get a ``.p2``, ``.p3`` … suffix, since cut ids are unique
per machine). Corrupt cuts, which the archive reader drops, are not replayed.

Per cut: the cut start (QoS 1, with the cutting parameters), then chunks of ``--chunk`` samples
(default 250 = 1 s) of the six channels in turn, each published when its last sample would have
been taken (real time divided by ``--speed``; ``--speed 0`` publishes as fast as the broker
acknowledges), then the cut end with the sample count. Every message is QoS 1 and at most
``max_unacked`` of them wait for the broker's acknowledgement, so memory stays bounded at any
speed and nothing is lost while the broker is briefly away (paho resends after reconnecting).

For tests: :func:`cut_messages` gives the exact messages of one cut (to corrupt or interleave),
:class:`~edge_monitor.archive.publisher.Publisher` publishes any messages with the same flow
control, and :func:`replay_cuts` replays given cuts for one machine. The command line is in
:mod:`.replay_cli`.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import paho.mqtt.client as paho

from ..core.channels import CHANNELS, MATERIALS, SAMPLE_RATE_HZ
from ..core.inbound import (
    DEFAULT_LIMITS,
    F32_CONTENT_TYPE,
    F32_FRAME_CONTENT_TYPE,
    Command,
    CutEnd,
    CutParams,
    CutStart,
    SignalChunk,
    SignalFrame,
)
from ..core.outbound import encode
from ..core.topics import cmd_topic, cut_topic, frame_topic, signal_topic, validate_root
from ..service.mqtt import BrokerSettings, connect, disconnect, make_client
from .mill import Archive, Cut
from .publisher import MAX_UNACKED, Message, Publisher

DEFAULT_CHUNK = 250  # samples: 1 s of signal at 250 Hz
RESET_BY = "replay"
# The event of a tool change whose reset is left to the operator (resets=False): nothing is published.
TOOL_CHANGE = "tool-change"
# How signal chunks are encoded: JSON, or compact float32 (docs/protocol.md), with the MQTT 5
# content type that says so.
CHUNK_CONTENT_TYPES: dict[str, str | None] = {"json": None, "f32": F32_CONTENT_TYPE}
FRAME_CONTENT_TYPES: dict[str, str | None] = {"json": None, "f32": F32_FRAME_CONTENT_TYPE}
ENCODINGS = tuple(CHUNK_CONTENT_TYPES)


def chunk_payload(chunk: SignalChunk | SignalFrame, encoding: str) -> bytes:
    """A chunk's or a frame's payload in ``encoding`` (its content type: CHUNK_ or FRAME_CONTENT_TYPES)."""
    return chunk.to_f32() if encoding == "f32" else encode(chunk)


def machine_ids(n: int) -> list[str]:
    """``mill-01``, ``mill-02``, … (three digits from 100 machines on)."""
    width = max(2, len(str(n)))
    return [f"mill-{i:0{width}d}" for i in range(1, n + 1)]


def cut_params(cut: Cut) -> CutParams | None:
    """The cut start's ``params`` (None for a material the protocol has no name for)."""
    material = MATERIALS.get(cut.material)
    return None if material is None else CutParams(doc=cut.doc, feed=cut.feed, material=material)


def chunk_bounds(n_samples: int, chunk: int) -> Iterator[tuple[int, int]]:
    for first in range(0, n_samples, chunk):
        yield first, min(n_samples, first + chunk)


def cut_messages(
    root: str,
    machine: str,
    cut: Cut,
    *,
    cut_id: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    fs: float = SAMPLE_RATE_HZ,
    ts: float | None = None,
) -> list[Message]:
    """Every message of one cut in publishing order: start, chunks (channels in turn), end (JSON)."""
    cut_id = cut_id or cut.cut_id
    ts = time.time() if ts is None else ts
    n = cut.n_samples
    out = [(cut_topic(root, machine), encode(CutStart(cut_id, ts, fs, cut_params(cut))))]
    for first, last in chunk_bounds(n, chunk):
        for c, name in enumerate(CHANNELS):
            payload = encode(SignalChunk(cut_id, first, cut.signals[first:last, c]))
            out.append((signal_topic(root, machine, name), payload))
    out.append((cut_topic(root, machine), encode(CutEnd(cut_id, ts + n / fs, n))))
    return out


def reset_message(root: str, machine: str, by: str = RESET_BY) -> Message:
    # an id, so that a reset the broker delivers twice (a reconnect) is applied once
    return cmd_topic(root, machine), encode(Command("reset", by, secrets.token_hex(8)))


# ------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class ReplayJob:
    case: int
    cut: Cut
    tool_change: bool  # the first cut of a case: send a reset before it


def plan_machines(archive: Archive, n_machines: int, cases: Sequence[int] | None = None) -> dict[str, list[ReplayJob]]:
    """Which cuts each machine replays, in order (see the module docstring)."""
    if n_machines < 1:
        raise ValueError(f"--machines must be at least 1, got {n_machines}")
    by_case = archive.by_case()
    if cases is None:
        cases = sorted(by_case)
    missing = [c for c in cases if c not in by_case]
    if missing:
        raise ValueError(
            f"case(s) {', '.join(map(str, missing))} have no usable cuts in {archive.path} "
            f"(its cases: {', '.join(map(str, sorted(by_case)))})"
        )
    if not cases:
        raise ValueError("no cases to replay")
    plan: dict[str, list[ReplayJob]] = {}
    for i, machine in enumerate(machine_ids(n_machines)):
        mine = cases[i::n_machines] if n_machines <= len(cases) else [cases[i % len(cases)]]
        plan[machine] = [
            ReplayJob(case, cut, tool_change=(k == 0)) for case in mine for k, cut in enumerate(by_case[case])
        ]
    return plan


# ----------------------------------------------------------------------------------- replaying


@dataclass
class MachineProgress:
    machine: str
    cuts_done: int = 0
    case: int | None = None
    cut: str | None = None
    cut_samples: int = 0
    samples_sent: int = 0  # of the current cut, per channel
    messages: int = 0
    tool_changes_left: int = 0  # tool changes without a reset (resets=False)
    finished: bool = False


@dataclass
class ReplayStats:
    cuts: int = 0
    chunks: int = 0
    samples: int = 0  # per channel, over all cuts
    messages: int = 0
    resets: int = 0  # tool-change resets published
    tool_changes_left: int = 0  # tool changes left to the operator: no reset published (resets=False)
    refused: int = 0  # messages the broker acknowledged with a failure reason code
    refused_resets: int = 0  # of those, tool-change resets
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, reason) -> messages
    seconds: float = 0.0
    machines: dict[str, MachineProgress] = field(default_factory=dict)


@dataclass(order=True)
class ReplayEvent:
    due: float  # signal seconds since the replay started
    seq: int
    machine: str = field(compare=False)
    kind: str = field(compare=False)  # reset | start | chunk | frame | end | tool-change (nothing published)
    topic: str = field(compare=False)
    payload: Callable[[], bytes] = field(compare=False)  # built at publish time (start/end carry the clock)
    job: ReplayJob | None = field(compare=False, default=None)
    cut_id: str = field(compare=False, default="")
    samples: int = field(compare=False, default=0)
    end: int = field(compare=False, default=0)  # cut offset just past the chunk's samples (chunk, end)
    content_type: str | None = field(compare=False, default=None)  # MQTT 5 content type (compact chunks)


def _machine_events(
    root: str, machine: str, jobs: Sequence[ReplayJob], chunk: int, fs: float, loop: bool, seq: Iterator[int],
    encoding: str = "json", ts_offset: float = 0.0, resets: bool = True, frames: bool = False,
) -> Iterator[ReplayEvent]:
    content_type = CHUNK_CONTENT_TYPES[encoding]
    frame_type = FRAME_CONTENT_TYPES[encoding]
    t = 0.0
    for p in itertools.count(1) if loop else (1,):
        for job in jobs:
            cut, n = job.cut, job.cut.n_samples
            cut_id = cut.cut_id if p == 1 else f"{cut.cut_id}.p{p}"
            if job.tool_change and resets:
                topic, payload = reset_message(root, machine)
                yield ReplayEvent(t, next(seq), machine, "reset", topic, lambda b=payload: b, job, cut_id)
            elif job.tool_change:
                yield ReplayEvent(t, next(seq), machine, TOOL_CHANGE, "", lambda: b"", job, cut_id)
            params = cut_params(cut)
            yield ReplayEvent(
                t, next(seq), machine, "start", cut_topic(root, machine),
                lambda i=cut_id, pr=params: encode(CutStart(i, time.time() + ts_offset, fs, pr)), job, cut_id, n,
            )
            for first, last in chunk_bounds(n, chunk):
                if frames:  # every channel of the block in one message, as a data acquisition samples them
                    yield ReplayEvent(
                        t + last / fs, next(seq), machine, "frame", frame_topic(root, machine),
                        lambda i=cut_id, f=first, l=last, s=cut.signals:
                            chunk_payload(SignalFrame(i, f, s[f:l]), encoding),
                        job, cut_id, last - first, last, frame_type,
                    )
                    continue
                for c, name in enumerate(CHANNELS):
                    yield ReplayEvent(
                        t + last / fs, next(seq), machine, "chunk", signal_topic(root, machine, name),
                        lambda i=cut_id, f=first, l=last, c=c, s=cut.signals:
                            chunk_payload(SignalChunk(i, f, s[f:l, c]), encoding),
                        job, cut_id, last - first, last, content_type,
                    )
            t += n / fs
            yield ReplayEvent(
                t, next(seq), machine, "end", cut_topic(root, machine),
                lambda i=cut_id, n=n: encode(CutEnd(i, time.time() + ts_offset, n)), job, cut_id, n, n,
            )


def replay(
    publisher: Publisher,
    root: str,
    plan: Mapping[str, Sequence[ReplayJob]],
    *,
    speed: float = 0.0,
    chunk: int = DEFAULT_CHUNK,
    fs: float = SAMPLE_RATE_HZ,
    loop: bool = False,
    stop: threading.Event | None = None,
    on_event: Callable[[ReplayEvent, ReplayStats], None] | None = None,
    encoding: str = "json",
    ts_offset: float = 0.0,
    resets: bool = True,
    frames: bool = False,
) -> ReplayStats:
    """Publish ``plan`` (machine -> jobs) interleaved in signal time, paced by ``speed`` (0 or
    infinity: as fast as acknowledgements allow). Returns when every message is acknowledged,
    or when ``stop`` is set. ``ts_offset``: seconds added to the clock the cuts' timestamps are
    taken from (negative: data taken earlier, as a data acquisition sends it catching up after an
    outage). ``resets=False``: no reset at a tool change, which is counted instead (and passed to
    ``on_event`` as a ``tool-change`` event, with nothing published). ``on_event`` is called after
    each event. ``frames``: each block of samples as one frame of every channel
    (``R/<machine>/frame``) rather than a chunk per channel."""
    validate_root(root)
    if not 1 <= chunk <= DEFAULT_LIMITS.max_chunk:
        raise ValueError(f"chunk must be 1-{DEFAULT_LIMITS.max_chunk} samples, got {chunk}")
    if not speed >= 0:
        raise ValueError(f"speed must be 0 (as fast as possible) or positive, got {speed}")
    paced = 0 < speed < float("inf")
    stop = stop or threading.Event()
    stats = ReplayStats(machines={m: MachineProgress(m) for m in plan})
    seq = itertools.count()
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    streams = {
        m: _machine_events(root, m, jobs, chunk, fs, loop, seq, encoding, ts_offset, resets, frames)
        for m, jobs in plan.items()
    }
    heap = [e for e in (next(s, None) for s in streams.values()) if e is not None]
    heapq.heapify(heap)
    started = time.monotonic()
    while heap and not stop.is_set():
        event = heapq.heappop(heap)
        if paced:
            delay = started + event.due / speed - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
        if event.kind != TOOL_CHANGE:
            publisher.publish(event.topic, event.payload(), content_type=event.content_type)
        _count(stats, event)
        stats.seconds = time.monotonic() - started
        if on_event is not None:
            on_event(event, stats)
        following = next(streams[event.machine], None)
        if following is not None:
            heapq.heappush(heap, following)
        else:
            stats.machines[event.machine].finished = True
    publisher.wait_all()
    stats.refused = publisher.refused
    stats.refusals = dict(publisher.refusals)
    # Only resets go to the cmd topics: a user without command rights is refused these alone.
    reset_topics = {cmd_topic(root, m) for m in plan}
    stats.refused_resets = sum(n for (topic, _), n in publisher.refusals.items() if topic in reset_topics)
    stats.seconds = time.monotonic() - started
    return stats


def _count(stats: ReplayStats, event: ReplayEvent) -> None:
    m = stats.machines[event.machine]
    if event.kind == TOOL_CHANGE:
        m.tool_changes_left += 1
        stats.tool_changes_left += 1
        return
    m.messages += 1
    stats.messages += 1
    if event.kind == "reset":
        stats.resets += 1
    elif event.kind == "start":
        m.case, m.cut, m.cut_samples, m.samples_sent = event.job.case, event.cut_id, event.samples, 0
    elif event.kind in ("chunk", "frame"):
        stats.chunks += 1
        if event.kind == "frame" or event.topic.endswith("/" + CHANNELS[-1]):  # a row of chunks is complete
            m.samples_sent += event.samples
            stats.samples += event.samples
    elif event.kind == "end":
        m.cuts_done += 1
        stats.cuts += 1


def replay_cuts(
    target: paho.Client | BrokerSettings,
    root: str,
    machine: str,
    cuts: Sequence[Cut],
    speed: float = 0.0,
    *,
    chunk: int = DEFAULT_CHUNK,
    reset_first: bool = False,
    max_unacked: int = MAX_UNACKED,
) -> ReplayStats:
    """Replay ``cuts`` in order as ``machine``, with their own cut ids. ``target``: a connected
    client (its ``on_publish`` is taken over) or the settings to connect with (clean session,
    disconnected at the end). Returns once the broker has acknowledged everything."""
    jobs = [ReplayJob(cut.case, cut, tool_change=(reset_first and i == 0)) for i, cut in enumerate(cuts)]
    if isinstance(target, BrokerSettings):
        client = make_client(target, clean_start=True)
        connect(client)
        try:
            return replay(Publisher(client, max_unacked), root, {machine: jobs}, speed=speed, chunk=chunk)
        finally:
            disconnect(client)
    return replay(Publisher(target, max_unacked), root, {machine: jobs}, speed=speed, chunk=chunk)


