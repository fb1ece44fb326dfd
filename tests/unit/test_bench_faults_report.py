"""bench.faults' side-by-side table: both kubelets' figures for the scenarios run under both, ratios of times only."""

from __future__ import annotations

from bench.faults import Result, side_by_side


def test_the_side_by_side_table_puts_each_figure_of_both_kubelets_in_a_row_with_ratios_of_seconds():
    ours = [Result("kubelet-kill", checks={"ok": True},
                   figures={"pid": "1 → 2", "restart → healthz ok (s)": "0.60", "container restarts": 0}),
            Result("proxy-kill", checks={"ok": True}, figures={"failed": 0})]
    theirs = [Result("kubelet-kill", checks={"ok": False},
                     figures={"pid": "3 → 4", "restart → healthz ok (s)": "0.50", "container restarts": 0,
                              "only upstream's": 1})]
    rows = side_by_side(ours, theirs).splitlines()
    assert "| kubelet-kill | verdict | PASS | FAIL | |" in rows
    assert "| kubelet-kill | restart → healthz ok (s) | 0.60 | 0.50 | 1.20× |" in rows
    assert "| kubelet-kill | pid | 1 → 2 | 3 → 4 |  |" in rows  # not a time: no ratio
    assert "| kubelet-kill | container restarts | 0 | 0 |  |" in rows
    assert not [row for row in rows if "proxy-kill" in row or "only upstream's" in row]
    assert side_by_side(ours, []) == ""
