"""The operating point: the alarm and warning thresholds as a stated choice, with the price of each.

Every threshold on the judged figure (a cut's median score over the tool's start, ``core/alarm``)
buys some failing tools caught and costs some healthy tools alarmed. On held-out tool lives (each
tool scored by a model that never saw it: ``outoffold``), :func:`trade_off` counts, for every
threshold at which an outcome changes, what an operator would count per dealing of the tools into
folds: failing tools caught in time, late and missed; tools alarmed on a healthy cut, and their
share of the healthy tool lives; tools that never failed but alarmed; the alarm's lead. The
decision is the daemon's own: ``CutEvidence`` judges every cut and ``raise_points`` (the tracker's
raising rule) says up to which threshold each cut's state is raised, so a row is what the monitor
would have shown with that threshold.

:class:`OperatingRule` is the choice, stated so that a user can change it: the alarm at the most
sensitive threshold (never below 1, no growth) whose estimated share of healthy tool lives alarmed
is at most ``max_false_alarms``; the warning the same at ``max_false_warnings``. A warning that
gives no failing tool earlier notice than the alarm on these tools is no warning: then there is one
level, said so in the rule. The share is the mean over dealings; with the few tools an archive has,
its upper 95 % bound (Jeffreys) is shown beside it.

The held-out lives are stored in the bundle (``metrics.out_of_fold.lives``), so the operating
point can be moved later without training (``python -m training thresholds``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edge_monitor.core.alarm import AlarmPolicy, CutEvidence, Thresholds, raise_points

from .toollife import IN_TIME_CUTS
from .wear import FAILED, HEALTHY

#: Judged figures are growth over the tool's start: a threshold below 1 would flag a tool for
#: scoring lower than when it was new.
MIN_THRESHOLD = 1.0
#: Without any judged healthy cut (every tool's healthy cuts are its reference), growth by half.
DEFAULT_GROWTH = 1.5
#: The counts of one threshold on one dealing's tools, in table order.
COUNTS = ("failing_tools", "failing_caught_in_time", "failing_alarmed_late", "failing_missed",
          "failing_warned_early", "healthy_lives", "healthy_lives_alarmed", "tools_alarmed_on_a_healthy_cut",
          "never_failed_tools_alarmed")


@dataclass(frozen=True)
class HeldOutLife:
    """One tool's cuts in run order, scored out of fold in one dealing: what the trade-off needs."""

    dealing: int
    case: int
    runs: list[int]
    classes: list[int]  # 0 healthy, 1 degraded, 2 failed
    medians: dict[str, list[float]]  # per score name: each cut's median calibrated score
    windows: list[int]
    regimes: list[str]

    def to_dict(self) -> dict:
        return {"dealing": self.dealing, "case": self.case, "runs": self.runs, "classes": self.classes,
                "medians": self.medians, "windows": self.windows, "regimes": self.regimes}

    @classmethod
    def from_dict(cls, data: Any) -> "HeldOutLife":
        try:
            life = cls(int(data["dealing"]), int(data["case"]), [int(r) for r in data["runs"]],
                       [int(c) for c in data["classes"]],
                       {str(k): [float(v) for v in vs] for k, vs in data["medians"].items()},
                       [int(w) for w in data["windows"]], [str(r) for r in data["regimes"]])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"a held-out tool life must hold dealing, case, runs, classes, medians, windows "
                             f"and regimes ({type(exc).__name__}: {exc})") from None
        n = len(life.runs)
        if any(len(x) != n for x in (life.classes, life.windows, life.regimes, *life.medians.values())):
            raise ValueError(f"held-out tool life of case {life.case}: its per-cut lists differ in length")
        return life


def lives_from_cuts(dealing: int, cases: np.ndarray, runs: np.ndarray, classes: np.ndarray,
                    medians: dict[str, np.ndarray], windows: np.ndarray, regimes: np.ndarray) -> list[HeldOutLife]:
    """The tool lives of one dealing from per-cut arrays (any order; each case sorted by run)."""
    lives = []
    for case in np.unique(cases):
        idx = np.flatnonzero(cases == case)
        idx = idx[np.argsort(runs[idx], kind="stable")]
        lives.append(HeldOutLife(
            dealing, int(case), runs[idx].astype(int).tolist(), classes[idx].astype(int).tolist(),
            {name: np.asarray(v, dtype=float)[idx].tolist() for name, v in medians.items()},
            windows[idx].astype(int).tolist(), [str(r) for r in regimes[idx]],
        ))
    return lives


@dataclass
class TradeOff:
    """Per threshold (ascending) and dealing, the counts of :data:`COUNTS`."""

    score: str
    thresholds: np.ndarray  # (m,)
    counts: dict[str, np.ndarray]  # name -> (m, dealings)
    leads: list[list[list[int]]]  # [threshold][dealing] -> the alarm leads (cuts) of the failing tools alarmed
    dealings: int
    lives: Sequence[HeldOutLife] = field(repr=False, default=())
    policy: AlarmPolicy = field(repr=False, default_factory=AlarmPolicy)

    def at(self, threshold: float) -> dict:
        """The row of any threshold, counted exactly."""
        return trade_off(self.lives, self.score, self.policy, [threshold]).row(0)

    def share(self) -> np.ndarray:
        """Share of healthy tool lives alarmed, per threshold and dealing (nan without any)."""
        lives = self.counts["healthy_lives"].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(lives > 0, self.counts["healthy_lives_alarmed"] / lives, np.nan)

    def row(self, i: int) -> dict:
        """Mean and sd over dealings of every count of threshold ``i``, the share and its bound."""
        out: dict = {"threshold": float(self.thresholds[i])}
        for name in COUNTS:
            out[name] = _mean_sd(self.counts[name][i])
        share = self.share()[i]
        out["healthy_share_alarmed"] = _mean_sd(share)
        leads = [lead for per in self.leads[i] for lead in per]
        out["alarm_lead_cuts_median"] = float(np.median(leads)) if leads else None
        n = float(np.mean(self.counts["healthy_lives"][i]))
        k = float(np.mean(self.counts["healthy_lives_alarmed"][i]))
        out["healthy_share_alarmed_upper95"] = jeffreys_upper(k, n)
        return out


def _mean_sd(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": None, "sd": None}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else None}


def jeffreys_upper(k: float, n: float, level: float = 0.95) -> float | None:
    """Upper ``level`` bound of a share seen as ``k`` of ``n`` (Jeffreys' interval; 1 at k = n)."""
    if n <= 0:
        return None
    if k >= n:
        return 1.0
    from scipy.stats import beta  # training only

    return float(beta.ppf(level, k + 0.5, n - k + 0.5))


def judged_points(life: HeldOutLife, score: str, policy: AlarmPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Per cut of the life: the highest threshold its state is raised above by the cut's end
    (``raise_points``), and whether the cut was judged (not a reference, with evidence)."""
    evidence = CutEvidence(policy)
    figures = [evidence.judge(m, n, r) for m, n, r in zip(life.medians[score], life.windows, life.regimes)]
    return (np.asarray(raise_points(figures, policy.persist_cuts), dtype=float),
            np.array([f is not None for f in figures], dtype=bool))


def trade_off(lives: Sequence[HeldOutLife], score: str, policy: AlarmPolicy,
              thresholds: Sequence[float] | None = None) -> TradeOff:
    """The counts at every threshold where an outcome changes (midpoints between the lives' raise
    points, one below them all and one above), or at the given ``thresholds``. ``policy`` must not
    auto-clear (its default): the counts assume a raised state stays until the tool is changed."""
    if not lives:
        raise ValueError("the trade-off needs held-out tool lives, and there are none")
    if policy.auto_clear:
        raise ValueError("the trade-off assumes a raised state stays until a reset: alarm.auto_clear must be off")
    dealing_ids = sorted({life.dealing for life in lives})
    prepared = [(life, *judged_points(life, score, policy)) for life in lives]
    if thresholds is None:
        points = np.unique(np.concatenate([p[np.isfinite(p)] for _, p, _ in prepared] + [np.empty(0)]))
        if points.size == 0:
            grid = np.array([DEFAULT_GROWTH])
        else:
            # one below them all, the midpoints (halves first: no overflow near the largest float,
            # an overflowing KL), one above them all, and the least threshold a rule may take
            below = points[0] - 0.1 * abs(points[0])
            above = points[-1] * 1.1 if points[-1] < np.finfo(float).max / 1.1 else np.finfo(float).max
            grid = np.concatenate([[below], points[:-1] / 2 + points[1:] / 2, [above]])
            if grid[0] < MIN_THRESHOLD < grid[-1]:
                grid = np.unique(np.append(grid, MIN_THRESHOLD))
    else:
        grid = np.sort(np.asarray(thresholds, dtype=float))
    m, d = grid.size, len(dealing_ids)
    counts = {name: np.zeros((m, d), dtype=int) for name in COUNTS}
    leads: list[list[list[int]]] = [[[] for _ in range(d)] for _ in range(m)]
    for life, points, judged in prepared:
        j = dealing_ids.index(life.dealing)
        classes = np.asarray(life.classes)
        flagged = points[None, :] > grid[:, None]  # (m, cuts): the state is raised at the cut's end
        any_flag = flagged.any(axis=1)
        first = np.where(any_flag, flagged.argmax(axis=1), -1)
        healthy = classes == HEALTHY
        on_healthy = (flagged & healthy[None, :]).any(axis=1)
        counts["tools_alarmed_on_a_healthy_cut"][:, j] += on_healthy
        if (healthy & judged).any():  # a healthy tool life: the share's denominator, and its numerator
            counts["healthy_lives"][:, j] += 1
            counts["healthy_lives_alarmed"][:, j] += on_healthy
        failed = np.flatnonzero(classes >= FAILED)
        if failed.size == 0:
            counts["never_failed_tools_alarmed"][:, j] += any_flag
            continue
        first_failed = int(failed[0])
        counts["failing_tools"][:, j] += 1
        in_time = any_flag & (first <= first_failed + IN_TIME_CUTS)
        counts["failing_caught_in_time"][:, j] += in_time
        counts["failing_alarmed_late"][:, j] += any_flag & ~in_time
        counts["failing_missed"][:, j] += ~any_flag
        counts["failing_warned_early"][:, j] += any_flag & (first < first_failed)
        for i in np.flatnonzero(any_flag):
            leads[i][j].append(first_failed - int(first[i]))
    return TradeOff(score, grid, counts, leads, d, list(lives), policy)


@dataclass(frozen=True)
class OperatingRule:
    """How the operating point is chosen from the trade-off (``fit``, ``crossval``, ``search`` and
    ``thresholds`` take it as ``--max-false-alarms`` and ``--max-false-warnings``)."""

    max_false_alarms: float = 0.10  # share of healthy tool lives the alarm may flag
    # ... the warning may flag, for earlier notice; default twice the alarm's: early notice may cost
    # at most as many false warnings again as there are false alarms
    max_false_warnings: float | None = None

    def __post_init__(self) -> None:
        if self.max_false_warnings is None:
            alarms = self.max_false_alarms
            default = min(2 * alarms, max(alarms, 0.5)) if isinstance(alarms, (int, float)) else alarms
            object.__setattr__(self, "max_false_warnings", default)
        for name in ("max_false_alarms", "max_false_warnings"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ValueError(f"--{name.replace('_', '-')} must be a share from 0 to below 1, got {value!r}")
        if self.max_false_warnings < self.max_false_alarms:
            raise ValueError(f"--max-false-warnings ({self.max_false_warnings}) must not be below "
                             f"--max-false-alarms ({self.max_false_alarms}): the warning comes first")

    def to_dict(self) -> dict:
        return {"max_false_alarms": self.max_false_alarms, "max_false_warnings": self.max_false_warnings}


@dataclass
class OperatingPoint:
    thresholds: Thresholds
    alarm: dict  # the trade-off row of the alarm threshold
    warning: dict | None  # ... of the warning threshold; None: one level
    rule: OperatingRule
    table: TradeOff = field(repr=False)

    def summary(self) -> dict:
        """What the bundle and the monitor's status show: the stated rule and what it achieved."""
        def brief(row: dict | None) -> dict | None:
            if row is None:
                return None
            return {"threshold": row["threshold"],
                    "healthy_share": row["healthy_share_alarmed"]["mean"],
                    "healthy_share_upper95": row["healthy_share_alarmed_upper95"],
                    "failing_caught_in_time": row["failing_caught_in_time"]["mean"],
                    "failing_warned_early": row["failing_warned_early"]["mean"],
                    "failing_tools": row["failing_tools"]["mean"],
                    "dealings": self.table.dealings}
        return {"rule": self.rule.to_dict(), "levels": 1 if self.warning is None else 2,
                "alarm": brief(self.alarm), "warning": brief(self.warning)}


def mean_share(table: TradeOff) -> np.ndarray:
    """Per threshold, the mean over dealings of the share of healthy tool lives alarmed (nan
    where no dealing has a judged healthy tool life)."""
    share = table.share()
    seen = ~np.isnan(share)
    total = np.where(seen, share, 0.0).sum(axis=1)
    return np.where(seen.any(axis=1), total / np.maximum(seen.sum(axis=1), 1), np.nan)


def _lowest_within(table: TradeOff, cap: float) -> int | None:
    """The index of the lowest threshold (at least :data:`MIN_THRESHOLD`) whose mean share of
    healthy tool lives alarmed is at most ``cap``; None without judged healthy lives."""
    share = mean_share(table)
    ok = np.flatnonzero((share <= cap + 1e-12) & (table.thresholds >= MIN_THRESHOLD))
    if np.isnan(share).all():
        return None
    return int(ok[0]) if ok.size else None


def choose_operating_point(table: TradeOff, rule: OperatingRule, policy: AlarmPolicy,
                           why_score: str = "") -> OperatingPoint:
    """The thresholds :class:`OperatingRule` picks on ``table``, with the rule in words."""
    figure = ("the median score of a cut's windows" if policy.reference_cuts == 0 else
              f"the median score of a cut's windows over that of the tool's first {policy.reference_cuts} "
              f"cut(s) in the same regime")
    tail = f"Both on {figure}, raised after {policy.persist_cuts} judged cuts in a row, as the monitor decides."
    a = _lowest_within(table, rule.max_false_alarms)
    if a is None:
        if not np.isnan(mean_share(table)).all():
            a = table.thresholds.size - 1  # no threshold within the cap but the highest: flags nothing seen
        elif policy.reference_cuts == 0:  # judged by the median itself: a healthy cut is judged when it has evidence
            raise ValueError(
                f"thresholds need held-out healthy cuts that the alarm rule judges, and there are none: a cut "
                f"needs {policy.min_windows} stable windows (alarm.min_windows); check the stable-region settings")
        else:
            th = Thresholds(score=table.score, warning=DEFAULT_GROWTH, alarm=DEFAULT_GROWTH, rule=" ".join(filter(None, (
                why_score, f"One level, at growth by {DEFAULT_GROWTH:g} over the tool's start: no held-out healthy "
                           f"cut is judged (each tool's healthy cuts are its reference), so no share of false "
                           f"alarms can be estimated.", tail))))
            return _stated(OperatingPoint(th, table.at(DEFAULT_GROWTH), None, rule, table))
    alarm = float(max(table.thresholds[a], MIN_THRESHOLD))
    alarm_row = table.row(a) if table.thresholds[a] == alarm else table.at(alarm)
    n_dealings = f"mean over {table.dealings} dealing(s) of the tools" if table.dealings > 1 else "one dealing"
    why_alarm = (f"Alarm above {alarm:.4g}: the most sensitive threshold whose held-out share of healthy tool "
                 f"lives alarmed is at most {rule.max_false_alarms:.0%} ({_pct(alarm_row)}; {n_dealings}); "
                 f"it caught {_n(alarm_row, 'failing_caught_in_time')} of {_n(alarm_row, 'failing_tools')} failing "
                 f"tools in time.")
    w = _lowest_within(table, rule.max_false_warnings)
    warning_row = table.row(w) if w is not None and w < a else None
    earlier = warning_row is not None and (
        (warning_row["failing_warned_early"]["mean"] or 0) > (alarm_row["failing_warned_early"]["mean"] or 0)
        or (warning_row["failing_caught_in_time"]["mean"] or 0) > (alarm_row["failing_caught_in_time"]["mean"] or 0))
    if earlier:
        warning = float(table.thresholds[w])  # at least MIN_THRESHOLD: found by _lowest_within
        why_warning = (f"Warning above {warning:.4g}, for earlier notice at up to {rule.max_false_warnings:.0%} "
                       f"of healthy tool lives ({_pct(warning_row)}): it flagged "
                       f"{_n(warning_row, 'failing_warned_early')} failing tools before their first failed cut, "
                       f"against {_n(alarm_row, 'failing_warned_early')} by the alarm.")
    else:
        warning, warning_row = alarm, None
        why_warning = (f"One level: a warning allowed up to {rule.max_false_warnings:.0%} of healthy tool lives "
                       f"gave no failing tool earlier notice than the alarm on these tools, so warning = alarm.")
    th = Thresholds(score=table.score, warning=warning, alarm=alarm,
                    rule=" ".join(filter(None, (why_score, why_alarm, why_warning, tail))))
    return _stated(OperatingPoint(th, alarm_row, warning_row, rule, table))


def _stated(point: OperatingPoint) -> OperatingPoint:
    """The point with its summary in the thresholds (what the bundle carries to the monitor)."""
    point.thresholds = dataclasses.replace(point.thresholds, operating=point.summary())
    return point


def _n(row: dict, key: str) -> str:
    m = row[key]
    if m["mean"] is None:
        return "-"
    return f"{m['mean']:.1f}" + ("" if m["sd"] is None else f" ± {m['sd']:.1f}")


def _pct(row: dict) -> str:
    s = row["healthy_share_alarmed"]
    if s["mean"] is None:
        return "no judged healthy tool life"
    sd = "" if s["sd"] is None else f" ± {s['sd']:.0%}"
    return f"{s['mean']:.0%}{sd}, upper 95 % bound {row['healthy_share_alarmed_upper95']:.0%}"


def format_trade_off(point: OperatingPoint, *, others: dict[str, float] | None = None, rows: int = 14) -> str:
    """The trade-off table: a selection of thresholds (where the failing tools caught or the
    healthy lives alarmed change), the chosen ones marked, mean ± sd over dealings."""
    table = point.table
    marks = {point.thresholds.alarm: "alarm"}
    if point.warning is not None:
        marks[point.thresholds.warning] = "warning"
    keep = _interesting_rows(table, rows)
    chosen = {int(np.argmin(np.abs(table.thresholds - t))): name for t, name in marks.items()}
    keep = sorted(set(keep) | set(chosen))
    header = (f"{'threshold':>9}  {'caught in time':>14}  {'late':>9}  {'missed':>9}  {'early':>9}  "
              f"{'healthy tools alarmed':>21}  {'share (upper 95%)':>17}  {'never-failed':>12}")
    lines = [f"trade-off on held-out tool lives ({table.score}; mean ± sd over {table.dealings} dealing(s); "
             f"'early': flagged before the first failed cut):", header]
    for i in keep:
        r = table.row(i)
        share = r["healthy_share_alarmed"]["mean"]
        upper = r["healthy_share_alarmed_upper95"]
        text = "-" if share is None else f"{share:.0%} ({upper:.0%})"
        mark = f"  <- {chosen[i]}" if i in chosen else ""
        lines.append(f"{r['threshold']:>9.3f}  {_n(r, 'failing_caught_in_time'):>14}  {_n(r, 'failing_alarmed_late'):>9}  "
                     f"{_n(r, 'failing_missed'):>9}  {_n(r, 'failing_warned_early'):>9}  "
                     f"{_n(r, 'tools_alarmed_on_a_healthy_cut'):>21}  {text:>17}  "
                     f"{_n(r, 'never_failed_tools_alarmed'):>12}{mark}")
    for name, t in (others or {}).items():
        r = table.at(t)
        lines.append(f"{t:>9.3f}  {_n(r, 'failing_caught_in_time'):>14}  {_n(r, 'failing_alarmed_late'):>9}  "
                     f"{_n(r, 'failing_missed'):>9}  {_n(r, 'failing_warned_early'):>9}  "
                     f"{_n(r, 'tools_alarmed_on_a_healthy_cut'):>21}  "
                     f"{'' if r['healthy_share_alarmed']['mean'] is None else format(r['healthy_share_alarmed']['mean'], '.0%'):>17}  "
                     f"{_n(r, 'never_failed_tools_alarmed'):>12}  <- {name}")
    return "\n".join(lines)


def _interesting_rows(table: TradeOff, rows: int) -> list[int]:
    """Rows where the mean caught-in-time or the mean healthy tools alarmed changes, thinned to
    about ``rows`` spread over the range, from the first threshold at least 1."""
    caught = table.counts["failing_caught_in_time"].mean(axis=1)
    false = table.counts["tools_alarmed_on_a_healthy_cut"].mean(axis=1)
    start = int(np.searchsorted(table.thresholds, MIN_THRESHOLD))
    changes = [i for i in range(max(start, 0), table.thresholds.size)
               if i == start or caught[i] != caught[i - 1] or false[i] != false[i - 1]]
    if len(changes) <= rows:
        return changes
    pick = np.unique(np.linspace(0, len(changes) - 1, rows).round().astype(int))
    return [changes[i] for i in pick]


def stored_trade_off(point: OperatingPoint, why_score: str = "") -> dict:
    """What the bundle keeps (``metrics.out_of_fold``): the held-out tool lives, so that the
    operating point can be moved without training, and the trade-off's rows where outcomes change."""
    table = point.table
    rows = sorted(set(_interesting_rows(table, 40)) | {int(np.argmin(np.abs(table.thresholds - t)))
                                                        for t in (point.thresholds.alarm, point.thresholds.warning)})
    return {"lives": [life.to_dict() for life in table.lives],
            "trade_off": {"score": table.score, "why_score": why_score or _score_sentence(point.thresholds.rule),
                          "rule": point.rule.to_dict(), "rows": [table.row(i) for i in rows]}}


def _score_sentence(rule: str) -> str:
    """The first sentence of a rule text: why this score (``thresholds.choose_score``)."""
    return rule.split(". ")[0] + "." if rule.startswith("Alarms on") else ""


def rechoose(out_of_fold: dict, thresholds: Thresholds, rule: OperatingRule, policy: AlarmPolicy) -> OperatingPoint:
    """The operating point ``rule`` picks on a bundle's stored held-out tool lives (the score stays
    the bundle's). Raises ValueError naming what is missing."""
    lives = out_of_fold.get("lives") if isinstance(out_of_fold, dict) else None
    if not lives:
        raise ValueError("the bundle stores no held-out tool lives (metrics.out_of_fold.lives): it was trained "
                         "before operating points could be moved; train it again with `python -m training fit`")
    lives = [HeldOutLife.from_dict(life) for life in lives]
    if any(thresholds.score not in life.medians for life in lives):
        raise ValueError(f"the stored held-out tool lives have no {thresholds.score!r} medians")
    why = (out_of_fold.get("trade_off") or {}).get("why_score") or _score_sentence(thresholds.rule)
    return choose_operating_point(trade_off(lives, thresholds.score, policy), rule, policy, why)
