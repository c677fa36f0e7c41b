"""``lockscope status`` fits the terminal and never cuts a value silently (the table tests
of the command itself are in test_agent_cli.py)."""

from __future__ import annotations

import io

from lockscope.client.status import render, table, terminal_width

LONG = "order:{id} -> " + " -> ".join(f"/inventory/warehouse-{i}/sku/{{id}}" for i in range(4))
FINDINGS = {
    "deadlocks": [],
    "stale_holders": [],
    "violations": [],
    "order_inversions": [
        {
            "id": "inv-1",
            "locks": ["order:{id}", "/inventory/sku/{id}"],
            "since": "2026-12-01T20:00:00Z",
            "pairs": [{"first": "order:{id}", "second": LONG, "service": "payments", "pid": 7}],
        },
    ],
}


def test_a_wide_terminal_gets_the_whole_table_on_one_line_per_row():
    text = render(FINDINGS, "http://agent", width=250)
    row = next(line for line in text.splitlines() if line.startswith("order:{id}, "))
    assert LONG in row  # the ORDERS column, whole (it used to be cut at 100 characters)
    assert len(LONG) > 100
    assert len(row) <= 250


def test_a_narrow_terminal_gets_records_not_cut_cells():
    text = render(FINDINGS, "http://agent", width=60)
    assert LONG in text  # nothing cut...
    assert "-[ 1 ]-" in text  # ...the table is printed one record per block
    assert "ORDERS  " in text


def test_no_width_when_piped_means_no_limit():
    assert terminal_width(io.StringIO(), env={}) is None
    assert terminal_width(io.StringIO(), env={"COLUMNS": "250"}) == 250
    text = table(["a"], [["x" * 500]], None)
    assert "x" * 500 in text
