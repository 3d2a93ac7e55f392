"""Which windows the daemon owed, when each became due, and what it delivered.

The expected windows come from the archive offline, through ``cut_windows`` with the bundle's
window and stable-region specs: the code path the daemon runs live. For each window two moments,
from the generator's publish times (monotonic, comparable across processes):

- *complete*: the last of the six channels' chunks that carry the window's last sample was
  published (the daemon aligns rows only when every channel has them), or the frame carrying it;
- *decidable*: the same for sample ``block_end + lookahead - 1``, where ``block_end`` ends the
  stable-region block holding the window's last sample: the detector decides a block once its
  look-ahead has arrived. The cut's end decides the rest, so it counts if it came first.

Latency runs from *complete* to the score's arrival; the part beyond the look-ahead from
*decidable*. Scores are matched by (machine, cut, offset): missing, duplicated and unexpected
windows are counted (:func:`account`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ..archive.mill import Archive
from ..core.channels import CHANNELS
from ..core.stable_region import StableRegionSpec
from ..core.windowing import WindowSpec, cut_windows
from .load import CHUNK, END, FRAME, LoadPlan

WindowKey = tuple[str, str, int]  # machine, cut id, offset


@dataclass(frozen=True)
class Due:
    complete: float  # monotonic time the window's data was all published
    decidable: float  # ... and the look-ahead it is decided on (or the cut's end)


def window_starts(archive: Archive, plan: LoadPlan, window: WindowSpec, stable: StableRegionSpec) -> dict[int, np.ndarray]:
    """Archive cut index -> start offsets of its windows, for the cuts the plan replays."""
    cuts = {c.index: c for c in archive.cuts}
    return {i: cut_windows(cuts[i].signals, window, stable).starts
            for i in sorted({s.archive_index for s in plan.slots})}


def expected_windows(plan: LoadPlan, times: np.ndarray, starts: Mapping[int, np.ndarray],
                     window: WindowSpec, stable: StableRegionSpec) -> dict[WindowKey, Due]:
    """Every window the plan's cuts hold, with when it became complete and decidable."""
    lookahead = stable.lookahead_samples
    out: dict[WindowKey, Due] = {}
    chunks, frames = plan.kind == CHUNK, plan.kind == FRAME
    for i, slot in enumerate(plan.slots):
        mine = plan.slot == i
        n_chunks = -(-slot.n_samples // plan.chunk)
        published = np.full((n_chunks, len(CHANNELS)), np.nan)
        sel = mine & chunks
        published[plan.index[sel], plan.channel[sel]] = times[sel]
        sel = mine & frames
        published[plan.index[sel], :] = times[sel, None]
        rows = published.max(axis=1)  # a row of chunks is complete when its last channel is out
        ended = float(times[mine & (plan.kind == END)][0])
        for offset in starts[slot.archive_index].tolist():
            last = offset + window.length - 1
            need = (last // stable.block + 1) * stable.block + lookahead - 1  # last sample to decide on
            decided = ended if need >= slot.n_samples else min(ended, float(rows[need // plan.chunk]))
            out[(slot.machine, slot.cut_id, offset)] = Due(float(rows[last // plan.chunk]), decided)
    return out


@dataclass
class Accounting:
    expected: int
    received: int  # score messages, duplicates included
    missing: list[WindowKey] = field(default_factory=list)
    duplicated: dict[WindowKey, int] = field(default_factory=dict)  # window -> times received
    unexpected: list[WindowKey] = field(default_factory=list)
    latency: np.ndarray = field(default_factory=lambda: np.empty(0))  # seconds, complete -> first arrival
    beyond_lookahead: np.ndarray = field(default_factory=lambda: np.empty(0))  # decidable -> first arrival
    last_arrival: float | None = None
    arrivals: np.ndarray = field(default_factory=lambda: np.empty(0))  # monotonic, in the order of latency

    def save(self, path) -> None:
        """The windows' latencies with their arrival times, to see when a tail happened."""
        np.savez(path, arrival=self.arrivals, latency=self.latency, beyond_lookahead=self.beyond_lookahead)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def summary(self) -> dict:
        return {
            "windows_expected": self.expected,
            "scores_received": self.received,
            "lost": len(self.missing),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "lost_examples": [list(k) for k in self.missing[:5]],
            "duplicated_examples": [list(k) for k in list(self.duplicated)[:5]],
            "unexpected_examples": [list(k) for k in self.unexpected[:5]],
            "latency_ms": percentiles(self.latency),
            "beyond_lookahead_ms": percentiles(self.beyond_lookahead),
        }


def account(expected: Mapping[WindowKey, Due], arrivals: Iterable[tuple[WindowKey, float]]) -> Accounting:
    """Match score arrivals (window, monotonic time) against the expected windows."""
    counts: Counter = Counter()
    first: dict[WindowKey, float] = {}
    received = 0
    last = None
    for key, t in arrivals:
        received += 1
        counts[key] += 1
        if key not in first or t < first[key]:
            first[key] = t
        last = t if last is None else max(last, t)
    missing = [k for k in expected if k not in counts]
    duplicated = {k: n for k, n in counts.items() if n > 1}
    unexpected = [k for k in counts if k not in expected]
    got = [k for k in expected if k in first]
    latency = np.array([first[k] - expected[k].complete for k in got])
    beyond = np.array([first[k] - expected[k].decidable for k in got])
    return Accounting(len(expected), received, missing, duplicated, unexpected, latency, beyond, last,
                      np.array([first[k] for k in got]))


def percentiles(seconds: np.ndarray) -> dict:
    ms = np.asarray(seconds, dtype=float) * 1000.0
    if ms.size == 0:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(ms, [50, 99])
    return {"n": int(ms.size), "p50": round(float(p50), 2), "p99": round(float(p99), 2),
            "max": round(float(ms.max()), 2)}
