"""Tool-level outcomes as an operator counts them: first warning and alarm against the tool's
wear, alarms on healthy cuts, missed and late failures, leads in cuts; the table and the plot."""

from __future__ import annotations

import numpy as np

from edge_monitor.core.alarm import Thresholds
from training.plots import plot_tool_life
from training.toollife import ToolLife, format_tool_table, tool_totals


def tool(case, classes, levels, first_warning=None, first_alarm=None):
    n = len(classes)
    return ToolLife(case, [f"c{case:02d}-r{r:02d}" for r in range(1, n + 1)], list(range(1, n + 1)),
                    list(np.linspace(0.05, 0.8, n)), classes, levels, [1.0 + i for i in range(n)], [50] * n,
                    first_warning, first_alarm, [None] + [1.0 + 0.5 * i for i in range(1, n)])


def test_outcomes_of_one_tool():
    t = tool(1, [0, 0, 1, 1, 2, 2], ["normal", "normal", "warning", "warning", "warning", "alarm"], 2, 5)
    assert (t.first_degraded, t.first_failed) == (2, 4)
    assert (t.warning_lead, t.alarm_lead) == (0, -1)  # warned on time, alarmed one cut late
    assert t.caught  # within one cut of the first failed cut
    assert t.shown_on_healthy("warning") == 0 and t.shown_on_healthy("alarm") == 0
    d = t.to_dict()
    assert d["first_alarm"] == {"cut": "c01-r06", "run": 6, "vb": 0.8, "class": "failed"}
    assert d["missed_failure"] is False and d["caught_in_time"] is True
    late = tool(2, [0, 1, 2, 2, 2], ["normal", "normal", "normal", "normal", "alarm"], 4, 4)
    assert late.alarm_lead == -2 and not late.caught


def test_totals_count_what_an_operator_sees():
    tools = [
        tool(1, [0, 1, 2], ["normal", "warning", "alarm"], 1, 2),  # caught on its first failed cut
        tool(2, [0, 0, 1], ["alarm", "alarm", "alarm"], 0, 0),  # alarmed a fresh tool, never failed
        tool(3, [0, 1, 2, 2], ["normal"] * 4),  # a missed failure
        tool(4, [0, 2, 2, 2], ["normal", "normal", "normal", "alarm"], 3, 3),  # two cuts late
    ]
    n = tool_totals(tools)
    assert (n["tools"], n["failing_tools"]) == (4, 3)
    assert (n["failing_caught_in_time"], n["failing_alarmed_late"], n["failing_missed"]) == (1, 1, 1)
    assert n["tools_alarmed_on_a_healthy_cut"] == 1 and n["tools_warned_on_a_healthy_cut"] == 1
    assert n["never_failed_tools_alarmed"] == 1
    assert n["alarm_lead_cuts_median"] == -1.0  # leads 0 and -2
    table = format_tool_table(tools, n)
    assert "failing tools 3 of 4: caught in time (by 1 cut after the first failed cut) 1, late 1, missed 1" in table
    assert table.splitlines()[2].split()[-3:] == ["2/2", "of", "2"]  # case 2: both healthy cuts alarmed


def test_tool_life_plot(tmp_path):
    tools = [tool(c, [0, 1, 2], ["normal", "warning", "alarm"], 1, 2) for c in (1, 2, 3)]
    path = plot_tool_life(tools, tmp_path / "tool_life.png", score_name="recon",
                          thresholds=Thresholds(2.0, 3.0, score="recon"))
    assert path.stat().st_size > 10_000
