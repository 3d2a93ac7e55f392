"""Moving a bundle's operating point without training (``python -m training thresholds``).

A plant that has talked to its operators may want fewer false alarms, or earlier notice. The bundle
stores the held-out tool lives its thresholds were chosen on (``metrics.out_of_fold.lives``), so
another :class:`~training.operating.OperatingRule` is applied to them in a second: the trade-off is
printed, the new thresholds written into ``bundle.json`` (a new model id; the model files are not
touched) and the plot redrawn. ``systemctl reload edge-monitor`` takes the bundle up; since it
scores as before, every machine keeps its alarm history and reference (``model/meta.scoring_id``).
No TensorFlow is needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edge_monitor.core.alarm import AlarmPolicy
from edge_monitor.model.meta import BundleError, read_bundle_meta, rewrite_meta

from .operating import OperatingRule, format_trade_off, rechoose, stored_trade_off


def rechoose_bundle(path: str | Path, rule: OperatingRule, *, dry_run: bool = False):
    """The operating point ``rule`` picks on the bundle's stored tool lives, written into it
    (unless ``dry_run``). Returns the point."""
    from .fit import TRADE_OFF_PLOT
    from .plots import plot_operating_point

    path = Path(path).resolve()  # a symlink (install.sh's bundle link) keeps pointing at it
    meta = read_bundle_meta(path)
    if path.parent.name == "bundles" and path.name == meta.model_id and not dry_run:
        raise BundleError(f"bundle {path} is installed (bundles/<model id>, the rollback of install.sh): copy it, "
                          f"move the copy's operating point and install that with `deploy/install.sh --bundle COPY`")
    chosen_for = meta.training.get("alarm_policy") if isinstance(meta.training, dict) else None
    try:
        policy = AlarmPolicy.from_dict(chosen_for or {})
    except ValueError as exc:
        raise BundleError(f"bundle {path}: bundle.json key 'training.alarm_policy' is invalid ({exc})") from None
    out_of_fold = meta.metrics.get("out_of_fold") if isinstance(meta.metrics, dict) else None
    try:
        point = rechoose(out_of_fold, meta.thresholds, rule, policy)
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {exc}") from None
    old = meta.thresholds
    print(format_trade_off(point, others={"the bundle's alarm now": old.alarm}), flush=True)
    print(f"now: {old.describe()}", flush=True)
    print(f"new: {point.thresholds.describe()}", flush=True)
    print(f"  {point.thresholds.rule}", flush=True)
    if dry_run:
        print("dry run: the bundle is unchanged", flush=True)
        return point
    stored = stored_trade_off(point)
    metrics = {**meta.metrics, "out_of_fold": {**out_of_fold, **outcomes_at(point, out_of_fold),
                                               "trade_off": stored["trade_off"],
                                               "rechosen_from": {k: v for k, v in old.to_dict().items()
                                                                 if k not in ("rule", "operating")}}}
    new = rewrite_meta(path, dataclasses.replace(meta, thresholds=point.thresholds, metrics=metrics))
    print(f"bundle {path}: now model {new.model_id} (was {meta.model_id}); a monitor serving it takes it up on "
          f"`systemctl reload edge-monitor` (or SIGHUP), keeping every machine's alarm history; on an edge box, "
          f"install it with `deploy/install.sh --bundle {path}`", flush=True)
    print(f"wrote {plot_operating_point(point, path / TRADE_OFF_PLOT)}", flush=True)
    return point


TOTALS = ("failing_tools", "failing_caught_in_time", "failing_alarmed_late", "failing_missed",
          "tools_alarmed_on_a_healthy_cut", "never_failed_tools_alarmed")


def outcomes_at(point, out_of_fold: dict) -> dict:
    """``metrics.out_of_fold``'s tool outcomes (``dealings[*].tools.totals`` and ``summary``) at
    the moved thresholds, counted on the stored lives, so that the bundle does not report what the
    old thresholds achieved. The window metrics stay: they do not depend on thresholds."""
    from .metrics import spread
    from .operating import trade_off

    th = point.thresholds
    at = trade_off(point.table.lives, th.score, point.table.policy, [th.warning, th.alarm])  # ascending rows
    warning, alarm = 0, 1
    dealings = [dict(d) for d in out_of_fold.get("dealings") or []]
    rows = []
    for j in range(at.dealings):
        totals = {k: int(at.counts[k][alarm, j]) for k in TOTALS}
        totals["tools_warned_on_a_healthy_cut"] = int(at.counts["tools_alarmed_on_a_healthy_cut"][warning, j])
        rows.append(totals)
        if j < len(dealings):  # the per-tool detail was the old thresholds': only the totals now
            dealings[j]["tools"] = {"totals": {**(dealings[j].get("tools") or {}).get("totals", {}), **totals}}
    summary = {**(out_of_fold.get("summary") or {}), **spread(rows, [*TOTALS, "tools_warned_on_a_healthy_cut"])}
    return {"dealings": dealings, "summary": summary}
