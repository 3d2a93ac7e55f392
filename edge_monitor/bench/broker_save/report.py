"""The five tables, and the figures derived from the fits of table 2 (table 5b)."""

from __future__ import annotations

import statistics
import sys

from .changes import ChangeRow
from .crash import CANDIDATES, CrashResult
from .experiments import GrowthResult, QueueResult, SteadyResult
from .harness import DESIGN_HOUR, FULL_QUEUE, RATE_20

Fit = tuple[float, float]  # (a, b) of y = a + b x


def table(title: str, headers: list[str], rows: list[list[str]], notes: list[str] = ()) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  " + "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


def mb(n: float) -> str:
    return f"{n / 1e6:.3f}" if n < 1e6 else f"{n / 1e6:,.1f}" if n < 1e9 else f"{n / 1e6:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def fit(xs: list[float], ys: list[float]) -> Fit:
    """Least squares y = a + b x (through the origin with a single point)."""
    if len(xs) < 2:
        return 0.0, ys[0] / xs[0] if xs else 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def report_steady(results: list[SteadyResult]) -> None:
    rows = []
    for r in results:
        times = [s.seconds for s in r.saves]
        written = [s.written - s.started for s in r.saves]
        rows.append([f"{r.machines} machines", f"{r.load['target']} / {r.load['rate']:.0f}",
                     f"{statistics.median(s.size for s in r.saves):,.0f}", ms(statistics.median(written)),
                     ms(statistics.median(times)), ms(max(times)), mb(r.rss),
                     ms(r.load["max_puback_wait"]), f"{r.load['received']:,}/{r.load['accepted']:,}"])
    table("1. Steady state: the monitor keeps up (saves by SIGUSR1 every ~0.3 s)",
          ["load", "chunks/s target/got", "db bytes", "written ms", "save ms (median)", "max", "RSS MB",
           "max PUBACK wait ms", "received/accepted"], rows,
          ["db: the session, its subscriptions, the retained alarms (1/machine) and the <= 20 chunks",
           "in flight at that instant; 'written': .new created -> closed (incl. fsync); save: -> renamed."])


def report_queue(q: QueueResult) -> tuple[Fit, Fit]:
    """Table 2; returns the fits (db bytes by chunks queued, save seconds by db bytes)."""
    rows = []
    for step in q.steps:
        save, cpu = step.saves[-1]
        held = min(step.published, FULL_QUEUE)
        rows.append([f"{step.published:,}", f"{held:,}", mb(save.size), f"{save.size / max(held, 1):,.0f}",
                     f"{min(s.seconds for s, _ in step.saves):.2f} / {max(s.seconds for s, _ in step.saves):.2f}",
                     f"{save.written - save.started:.2f}", f"{cpu:.2f}", f"{save.size / save.seconds / 1e6:,.0f}",
                     mb(step.rss), f"{step.restart:.2f}"])
    size_fit = fit([min(s.published, FULL_QUEUE) for s in q.steps], [s.saves[-1][0].size for s in q.steps])
    time_fit = fit([s.saves[-1][0].size for s in q.steps],
                   [statistics.fmean(x.seconds for x, _ in s.saves) for s in q.steps])
    table("2. Queue for the absent monitor (chunks of 5,006 B; saves by SIGUSR1 with no traffic)",
          ["published", "queued", "db MB", "db B/chunk", "save s (min/max of 2)", "written s", "CPU s",
           "MB/s", "RSS MB", "restart s"], rows,
          [f"fit: db bytes = {size_fit[0]:,.0f} + {size_fit[1]:,.1f} x chunks; "
           f"save s = {time_fit[0]:.3f} + size / {1 / time_fit[1] / 1e6 if time_fit[1] else float('inf'):,.0f} MB/s",
           f"the publisher filled at {q.fill_rate:,.0f} chunks/s; after the last restart (from the db after a SIGKILL)"
           f" the monitor drained {q.held:,} chunks in {q.drain_seconds:.1f} s "
           f"({q.held / q.drain_seconds if q.drain_seconds else 0:,.0f}/s)"
           + ("; the broker logged dropping chunks (max_queued_bytes)" if q.dropped_logged else ""),
           "queued: what max_queued_bytes lets in (2^31-1 B / 5,006 B); 'restart': SIGKILL, then start until it "
           "accepts connections (loads the db)."])
    return size_fit, time_fit


def report_changes(rows: list[ChangeRow], per_save: int) -> None:
    out = []
    for r in rows:
        out.append([r.event, f"{r.events:,}", f"{r.saves}", f"{r.logged}",
                    f"{r.saves * per_save / r.events:.2f} +- {per_save / r.events:.2f}", r.rule])
    table(f"3. autosave_on_changes true, autosave_interval {per_save}: what counts as a change (Mosquitto 2.0.11)",
          ["event", "events", "saves (inotify)", "(log)", "changes/event", "source: db.persistence_changes++ in"], out,
          ["a save happens in the main loop once the counter reaches the interval; the counter is reset only by such a",
           "save (not by SIGUSR1 or a shutdown save). Not counted: anything else (session expiry, QoS 0, wills, $SYS)."])


def report_crash(results: list[CrashResult]) -> None:
    rows = []
    for r in results:
        age = "none since start" if r.last_save_age is None else f"{r.last_save_age:.1f} s"
        retained = ", ".join(f"{k}: {v}" for k, v in r.retained.items()) or "-"
        rows.append([r.candidate.name, r.mode, f"{r.window:.0f} s", age, f"{r.accepted_before_kill:,}",
                     f"{r.lost_before_kill:,}", f"{r.lost - r.lost_before_kill:,}", f"{r.duplicates:,}",
                     str(r.session_present), retained, "-" if r.new_session is None else str(r.new_session),
                     f"{r.saves} / {mb(r.save_bytes)}", "-" if r.period is None else f"{r.period:.1f}",
                     f"{r.restart:.2f}"])
    table("4. Crash window: SIGKILL after the window, restart 1 s later from mosquitto.db (20 machines: 120 chunks/s)",
          ["setting", "monitor", "window", "last save", "accepted", "lost", "lost after", "dupl.",
           "session", "retained after restart", "new session", "saves / MB in window", "period s", "restart s"], rows,
          ["steady: the monitor connected, keeping up; away: disconnected (session kept), its queue growing.",
           "accepted: chunks the broker acknowledged to the publisher before the kill; lost: of those, never received",
           "by the monitor; lost after: acknowledged after the restart and never received; dupl.: received twice.",
           "session: session_present on the monitor's reconnection; new session: a dashboard's persistent session",
           "created 7 s before the kill still there; retained: 'older value' = the alarm saved before came back.",
           "period: median time between two saves in the window; restart: from start until it accepts connections."])


def report_growth(results: list[GrowthResult], steady: SteadyResult, size_fit: Fit, time_fit: Fit,
                  drain_rate: float) -> None:
    """Table 5a (measured) and 5b (derived for 20 machines; ``steady``: table 1's 20 machines)."""
    rows = []
    for g in results:
        rows.append([g.name, f"{g.queued:,}", f"{g.fill_seconds:.1f}", f"{len(g.fill_saves)}",
                     mb(sum(s.size for s in g.fill_saves)), f"{sum(s.seconds for s in g.fill_saves):.1f}",
                     f"{g.drain_seconds:.1f}", f"{len(g.drain_saves)}", mb(sum(s.size for s in g.drain_saves)),
                     f"{sum(s.seconds for s in g.drain_saves):.1f}"])
    table("5a. Measured: a queue filled as fast as the publisher goes, then drained by the monitor",
          ["setting", "chunks", "fill s", "saves", "MB written", "s saving", "drain s", "saves", "MB written",
           "s saving"], rows,
          ["time-based saves are fewer here than at the real rate (the fill is compressed in time); change-based",
           "saves are not: one per 600 chunks queued, one per 600 chunks acknowledged, whatever the rate.",
           "drain: until the monitor has every chunk and the broker has processed their PUBACKs (and saved)."])

    def size(chunks: float) -> float:
        return size_fit[0] + size_fit[1] * chunks

    def seconds(nbytes: float) -> float:
        return time_fit[0] + time_fit[1] * nbytes

    full = min(DESIGN_HOUR, FULL_QUEUE)  # an hour away, as much of it as max_queued_bytes lets in
    states = [("steady, 20 machines", statistics.median(s.size for s in steady.saves), "steady"),
              ("away 1 min", size(RATE_20 * 60), "grow"),
              ("away 10 min", size(RATE_20 * 600), "grow"),
              ("away 1 h (queue full)", size(full), "full")]
    steady_seconds = statistics.median(s.seconds for s in steady.saves)
    half_full = size(full / 2)  # the average database while a full queue drains
    rows = []
    for cand in CANDIDATES:
        interval = cand.conf["autosave_interval"]
        on_changes = cand.conf.get("autosave_on_changes") == "true"
        cells = [cand.name]
        for _, nbytes, kind in states:
            t = steady_seconds if kind == "steady" else seconds(nbytes)
            if on_changes:  # a change per chunk acknowledged or queued; none once the queue is full
                per_min = (RATE_20 if kind != "full" else 0) * 60 / interval
            else:
                per_min = 60 / (interval + 1)
                if cand.usr1_every and nbytes < cand.usr1_below:
                    per_min += 60 / cand.usr1_every
            per_min = min(per_min, 60 / t) if t > 0 else per_min
            cells.append(f"{mb(per_min * nbytes)} MB/min ({per_min:.1f} x {mb(nbytes)} MB, {100 * per_min * t / 60:.0f} %)")
        base = full / drain_rate if drain_rate else float("nan")
        n_saves = full / interval if on_changes else base / (interval + 1)
        cells.append(f"{base + n_saves * seconds(half_full):,.0f} s ({n_saves:,.0f} saves, {mb(n_saves * half_full)} MB)")
        rows.append(cells)
    table("5b. Derived for 20 machines (120 chunks/s) from the fits of table 2: saves/min x db MB = MB rewritten/min,"
          " % of the broker's time spent saving",
          ["setting"] + [s[0] for s in states] + [f"draining {full:,} chunks: time (saves, MB)"], rows,
          ["'queue full': max_queued_bytes reached, further chunks dropped (no change counted for them).",
           "time-based: a save every interval + 1 s (2.0.11 saves when now > last + interval, in whole seconds);",
           "when a save takes longer than that the broker saves back to back (capped here at 100 %).",
           "SIGUSR1 helper: only while the last save was < 64 MB; above, the interval 300 alone.",
           "steady: the save time measured in table 1 (20 machines); the others: the fit of table 2.",
           f"draining at the measured {drain_rate:,.0f} chunks/s plus the saves (each of the average size, half full)."])
