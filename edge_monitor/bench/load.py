"""The benchmark's load: which cuts each machine replays, and every message in publishing order.

N machines ``bench-001`` … take their cuts as the replay deals them (``plan_machines``). Each one
replays ``cuts`` whole cuts back to back; their start times are staggered at random across the
first cut, as on a shop floor where machines are not synchronised. A message is due when its
last sample would have been taken: a cut's start at its first instant, a block of samples when
its last sample is taken (as six chunks in channel order, or with ``frames`` as one frame of every
channel), the cut's end with its last block.

The plan is plain arrays (one entry per message), so that the load generator publishes from
pre-encoded payloads and the benchmark reads back what was published when.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..archive.mill import Archive, Cut
from ..archive.replay import (
    CHUNK_CONTENT_TYPES,
    FRAME_CONTENT_TYPES,
    chunk_payload,
    cut_params,
    plan_machines,
)
from ..core.channels import CHANNELS, SAMPLE_RATE_HZ
from ..core.inbound import CutEnd, CutStart, SignalChunk, SignalFrame
from ..core.outbound import encode
from ..core.topics import cut_topic, frame_topic, signal_topic

START, CHUNK, END, FRAME = 0, 1, 2, 3  # message kinds
DATA = (CHUNK, FRAME)  # the kinds carrying samples


@dataclass(frozen=True)
class LoadInput:
    """How the machines send their samples: six chunks per block, or one frame; ``samples`` per
    block; ``encoding`` of the payloads (None: the benchmark's ``--encoding``)."""

    frames: bool
    samples: int
    encoding: str | None = None

    @property
    def label(self) -> str:
        return f"{'frames' if self.frames else 'chunks'}{self.samples}" + (f"-{self.encoding}" if self.encoding else "")

    @staticmethod
    def parse(text: str, default_samples: int) -> "LoadInput":
        """``chunks``, ``frames``, ``chunks:64``, ``frames:250``, ``frames:250:f32``, ``chunks::json``."""
        kind, _, rest = text.strip().partition(":")
        samples, _, encoding = rest.partition(":")
        if kind not in ("chunks", "frames"):
            raise ValueError(f"expected chunks or frames, optionally with :<samples> and :<encoding>, got {text!r}")
        try:
            n = int(samples) if samples else default_samples
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"samples per block must be a positive integer, got {text!r}")
        if encoding and encoding not in CHUNK_CONTENT_TYPES:
            raise ValueError(f"encoding must be one of {', '.join(CHUNK_CONTENT_TYPES)}, got {text!r}")
        return LoadInput(kind == "frames", n, encoding or None)


def machine_names(n: int) -> list[str]:
    return [f"bench-{i:03d}" for i in range(1, n + 1)]


@dataclass(frozen=True)
class CutSlot:
    """One cut one machine replays."""

    machine: str
    cut_id: str  # unique per machine: a cut replayed again gets a .p2, .p3 … suffix
    archive_index: int  # Cut.index in the archive
    n_samples: int
    start: float  # due time of its start, signal seconds from the start of the load


@dataclass
class LoadPlan:
    root: str
    chunk: int  # samples per chunk (or per frame)
    fs: float
    speed: float  # 0: as fast as possible
    machines: list[str]
    slots: list[CutSlot]
    # one entry per message, in publishing order
    slot: np.ndarray  # int32 index into slots
    kind: np.ndarray  # int8: START, CHUNK, FRAME or END
    channel: np.ndarray  # int8 index into CHANNELS; -1 for starts, frames and ends
    index: np.ndarray  # int32 chunk index in the cut (starts: 0, ends: the number of chunks)
    due: np.ndarray  # float64 signal seconds from the start of the load

    @property
    def frames(self) -> bool:
        return bool(np.any(self.kind == FRAME))

    def __len__(self) -> int:
        return int(self.slot.size)

    def topics(self) -> list[str]:
        cut_topics = {m: cut_topic(self.root, m) for m in self.machines}
        signal_topics = {(m, c): signal_topic(self.root, m, name)
                         for m in self.machines for c, name in enumerate(CHANNELS)}
        frame_topics = {m: frame_topic(self.root, m) for m in self.machines}
        machine = [s.machine for s in self.slots]
        return [signal_topics[(machine[s], c)] if k == CHUNK else frame_topics[machine[s]] if k == FRAME
                else cut_topics[machine[s]]
                for s, k, c in zip(self.slot.tolist(), self.kind.tolist(), self.channel.tolist())]

    def meta(self) -> str:
        """Everything but the arrays, as JSON (stored beside them)."""
        return json.dumps({"root": self.root, "chunk": self.chunk, "fs": self.fs, "speed": self.speed,
                           "machines": self.machines, "slots": [asdict(s) for s in self.slots]})

    def arrays(self) -> dict[str, np.ndarray]:
        return {"slot": self.slot, "kind": self.kind, "channel": self.channel, "index": self.index, "due": self.due}

    @staticmethod
    def from_saved(meta: str, arrays) -> "LoadPlan":
        m = json.loads(meta)
        return LoadPlan(m["root"], m["chunk"], m["fs"], m["speed"], m["machines"],
                        [CutSlot(**s) for s in m["slots"]],
                        *(np.asarray(arrays[k]) for k in ("slot", "kind", "channel", "index", "due")))


def build_plan(archive: Archive, n_machines: int, *, cuts: int = 1, chunk: int = 64, speed: float = 0.0,
               root: str = "bench", seed: int = 0, fs: float = SAMPLE_RATE_HZ, frames: bool = False) -> LoadPlan:
    if cuts < 1:
        raise ValueError(f"cuts per machine must be at least 1, got {cuts}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 sample, got {chunk}")
    rng = np.random.default_rng(seed)
    dealt = plan_machines(archive, n_machines)  # mill-01 … in order
    machines = machine_names(n_machines)
    slots: list[CutSlot] = []
    for machine, jobs in zip(machines, dealt.values()):
        t = float(rng.uniform(0.0, jobs[0].cut.n_samples / fs))
        for k in range(cuts):
            cut: Cut = jobs[k % len(jobs)].cut
            rerun = k // len(jobs) + 1
            cut_id = cut.cut_id if rerun == 1 else f"{cut.cut_id}.p{rerun}"
            slots.append(CutSlot(machine, cut_id, cut.index, cut.n_samples, t))
            t += cut.n_samples / fs
    return plan_slots(root, chunk, fs, speed, machines, slots, frames)


def plan_slots(root: str, chunk: int, fs: float, speed: float, machines: list[str], slots: list[CutSlot],
               frames: bool = False) -> LoadPlan:
    """The messages of ``slots``, in publishing order: per block of samples six chunks, or one frame."""
    parts = [_slot_messages(i, s, chunk, fs, 1 if frames else len(CHANNELS)) for i, s in enumerate(slots)]
    slot, kind, channel, index, due = (np.concatenate([p[k] for p in parts]) for k in range(5))
    # by due time; equal times keep the order each machine sends in (stable sort)
    order = np.argsort(due, kind="stable")
    return LoadPlan(root, chunk, fs, speed, machines, slots,
                    slot[order], kind[order], channel[order], index[order], due[order])


def _slot_messages(i: int, s: CutSlot, chunk: int, fs: float, per_block: int) -> tuple[np.ndarray, ...]:
    n_chunks = -(-s.n_samples // chunk)
    ends = np.minimum(np.arange(1, n_chunks + 1) * chunk, s.n_samples)
    n = n_chunks * per_block + 2
    kind = np.full(n, CHUNK if per_block > 1 else FRAME, np.int8)
    kind[0], kind[-1] = START, END
    channel = np.full(n, -1, np.int8)
    if per_block > 1:
        channel[1:-1] = np.tile(np.arange(per_block, dtype=np.int8), n_chunks)
    index = np.zeros(n, np.int32)
    index[1:-1] = np.repeat(np.arange(n_chunks, dtype=np.int32), per_block)
    index[-1] = n_chunks
    due = np.empty(n)
    due[0] = s.start
    due[1:-1] = s.start + np.repeat(ends, per_block) / fs
    due[-1] = s.start + s.n_samples / fs
    return np.full(n, i, np.int32), kind, channel, index, due


def chunk_payloads(plan: LoadPlan, archive: Archive, encoding: str = "json") -> list[bytes | None]:
    """Every chunk's and frame's payload in ``encoding`` (the replay's: JSON or compact float32), in
    plan order (None for starts and ends, which carry the clock and are encoded when the load
    starts). Machines replaying the same cut share its payloads."""
    if encoding not in CHUNK_CONTENT_TYPES:
        raise ValueError(f"encoding must be one of {', '.join(CHUNK_CONTENT_TYPES)}, got {encoding!r}")
    cuts = {c.index: c for c in archive.cuts}
    cache: dict[tuple[str, int, int, int], bytes] = {}
    out: list[bytes | None] = []
    for s, k, c, i in zip(plan.slot.tolist(), plan.kind.tolist(), plan.channel.tolist(), plan.index.tolist()):
        if k not in DATA:
            out.append(None)
            continue
        slot = plan.slots[s]
        key = (slot.cut_id, slot.archive_index, i, c)
        payload = cache.get(key)
        if payload is None:
            first = i * plan.chunk
            rows = cuts[slot.archive_index].signals[first:first + plan.chunk]
            data = SignalChunk(slot.cut_id, first, rows[:, c]) if k == CHUNK else SignalFrame(slot.cut_id, first, rows)
            payload = cache[key] = chunk_payload(data, encoding)
        out.append(payload)
    return out


def content_types(plan: LoadPlan, encoding: str) -> list[str | None]:
    """Each message's MQTT 5 content type: the chunks' and frames' encoding may need one."""
    types = {CHUNK: CHUNK_CONTENT_TYPES[encoding], FRAME: FRAME_CONTENT_TYPES[encoding]}
    return [types.get(k) for k in plan.kind.tolist()]


def fill_cut_messages(plan: LoadPlan, archive: Archive, payloads: list[bytes | None], wall0: float) -> None:
    """Encode the cut starts and ends in place, stamped as if the load started at Unix time ``wall0``
    (speed 0: as if in real time)."""
    cuts = {c.index: c for c in archive.cuts}
    pace = plan.speed if plan.speed > 0 else 1.0
    for at in np.flatnonzero((plan.kind == START) | (plan.kind == END)).tolist():
        slot = plan.slots[int(plan.slot[at])]
        ts = wall0 + slot.start / pace
        if plan.kind[at] == START:
            payloads[at] = encode(CutStart(slot.cut_id, ts, plan.fs, cut_params(cuts[slot.archive_index])))
        else:
            payloads[at] = encode(CutEnd(slot.cut_id, ts + slot.n_samples / plan.fs / pace, slot.n_samples))


def active_span(plan: LoadPlan, share: float = 0.9) -> tuple[float, float]:
    """The due-time span in which at least ``share`` of the most machines ever cutting at once are
    cutting: the steady part of the load."""
    # a start sorts before an end at the same time: a machine going on to its next cut never stops
    events = sorted([(s.start, -1) for s in plan.slots] + [(s.start + s.n_samples / plan.fs, 1) for s in plan.slots])
    times = np.array([t for t, _ in events])
    active = -np.cumsum([d for _, d in events])  # machines cutting after each event
    high = active >= share * active.max()
    first = int(np.argmax(high))
    last = first + int(np.argmin(high[first:]))  # the last event leaves no machine cutting
    return float(times[first]), float(times[last])
