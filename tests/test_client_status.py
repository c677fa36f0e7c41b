"""``lockscope status``: tables of every finding kind, the command end to end, an
unreachable agent, and tables that fit the terminal and never cut a value silently."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event, ProcessInfo
from lockscope.client import status
from lockscope.client.status import render, table, terminal_width
from lockscope.testing.agent import InProcessAgent

LOCKSCOPE = [sys.executable, "-m", "lockscope"]


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


def test_a_wide_terminal_gets_the_whole_table_on_one_line_per_row() -> None:
    text = render(FINDINGS, "http://agent", width=250)
    row = next(line for line in text.splitlines() if line.startswith("order:{id}, "))
    assert LONG in row  # the ORDERS column, whole (it used to be cut at 100 characters)
    assert len(LONG) > 100
    assert len(row) <= 250


def test_a_narrow_terminal_gets_records_not_cut_cells() -> None:
    text = render(FINDINGS, "http://agent", width=60)
    assert LONG in text  # nothing cut...
    assert "-[ 1 ]-" in text  # ...the table is printed one record per block
    assert "ORDERS  " in text


def test_no_width_when_piped_means_no_limit() -> None:
    assert terminal_width(io.StringIO(), env={}) is None
    assert terminal_width(io.StringIO(), env={"COLUMNS": "250"}) == 250
    text = table(["a"], [["x" * 500]], None)
    assert "x" * 500 in text


BILLING = ProcessInfo("billing", "h1", 101, "billing-101")
SHIPPING = ProcessInfo("shipping", "h2", 202, "shipping-202")


def ring_events(now: int) -> list[Event]:
    def attrs(lock: str, actor: str, since: int) -> dict[str, Any]:
        return {
            ev.ATTR_LOCK_SYSTEM: "redis",
            ev.ATTR_LOCK_NAMESPACE: "127.0.0.1:6379/0",
            ev.ATTR_LOCK_NAME: lock,
            ev.ATTR_LOCK_MODE: "exclusive",
            ev.ATTR_ACTOR_ID: actor,
            ev.ATTR_SINCE: since,
        }

    s = 1_000_000_000
    return [
        Event(ev.EVENT_HOLD_START, now - 3 * s, BILLING, attrs("acct/1", "thread:1", now - 3 * s)),
        Event(ev.EVENT_HOLD_START, now - 3 * s, SHIPPING, attrs("acct/2", "thread:2", now - 3 * s)),
        Event(ev.EVENT_WAIT_START, now - 2 * s, BILLING, attrs("acct/2", "thread:1", now - 2 * s)),
        Event(ev.EVENT_WAIT_START, now - s, SHIPPING, attrs("acct/1", "thread:2", now - s)),
    ]


@pytest.fixture
def lockscope_agent_with_ring() -> Iterator[InProcessAgent]:
    with InProcessAgent() as agent:
        agent.post_events(ring_events(time.time_ns()))
        agent.wait_for(lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"])
        yield agent


def test_status_prints_active_findings_as_tables(lockscope_agent_with_ring: InProcessAgent) -> None:
    out = io.StringIO()
    args = argparse.Namespace(http=lockscope_agent_with_ring.http_url, timeout=5.0, json=False)
    assert status.run(args, out) == 0
    text = out.getvalue()
    assert "deadlocks: 1, stale holders: 0" in text.splitlines()[0]
    assert "Deadlocks (1 active)" in text
    header = next(line for line in text.splitlines() if line.startswith("DEADLOCK "))
    assert header.split() == ["DEADLOCK", "ACTOR", "SERVICE", "PID", "WAITS", "FOR", "HOLDS",
                              "WAITING", "SINCE"]  # fmt: skip
    section = text.split("Deadlocks (1 active)")[1].split("\n\n")[0]
    rows = [line for line in section.splitlines() if "thread:" in line]
    assert len(rows) == 2
    assert any("billing" in row and "101" in row and "acct/2" in row for row in rows)
    assert sum("(victim)" in row for row in rows) == 1
    assert "(victim)" in next(row for row in rows if "shipping" in row)
    assert "Lock-order inversions: none active" in text


def test_status_tables_for_the_other_findings(capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time_ns()
    s = 1_000_000_000

    def hold(process: ProcessInfo, actor: str, since: int) -> Event:
        attrs = {
            ev.ATTR_LOCK_SYSTEM: "redis",
            ev.ATTR_LOCK_NAMESPACE: "ns",
            ev.ATTR_LOCK_NAME: "ledger",
            ev.ATTR_ACTOR_ID: actor,
            ev.ATTR_SINCE: since,
        }
        return Event(ev.EVENT_HOLD_START, now, process, attrs)

    def pair(process: ProcessInfo, first: str, second: str) -> Event:
        attrs = {ev.ATTR_ORDER_FIRST: first, ev.ATTR_ORDER_SECOND: second, ev.ATTR_ACTOR_ID: "t"}
        return Event(ev.EVENT_ORDER_PAIR, now, process, attrs)

    with InProcessAgent(AgentConfig(max_hold=1.0)) as agent:
        agent.post_events(
            [
                hold(BILLING, "thread:1", now - 5 * s),
                hold(SHIPPING, "thread:2", now - 4 * s),
                pair(BILLING, "account:{id}", "ledger"),
                pair(SHIPPING, "ledger", "account:{id}"),
            ]
        )
        agent.wait_for(lambda: agent.get("/api/v1/order-inversions")["order_inversions"])
        args = argparse.Namespace(http=agent.http_url, timeout=5.0, json=False)
        assert status.run(args) == 0
    text = capsys.readouterr().out
    assert "Stale holders (2 active)" in text
    assert "Mutual-exclusion violations (1 active)" in text
    assert "overlapping_holds" in text
    assert "Lock-order inversions (1 active)" in text
    assert "account:{id} -> ledger (billing:101)" in text
    assert "ledger -> account:{id} (shipping:202)" in text


def test_status_command_end_to_end(lockscope_agent_with_ring: InProcessAgent) -> None:
    result = subprocess.run(
        [*LOCKSCOPE, "status", "--http", lockscope_agent_with_ring.http_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Deadlocks (1 active)" in result.stdout
    result = subprocess.run(
        [*LOCKSCOPE, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "LOCKSCOPE_AGENT_HTTP": lockscope_agent_with_ring.http_url[7:]},
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["deadlocks"]) == 1


def test_status_with_no_findings(capsys: pytest.CaptureFixture[str]) -> None:
    with InProcessAgent() as agent:
        args = argparse.Namespace(http=agent.http_url, timeout=5.0, json=False)
        assert status.run(args) == 0
    text = capsys.readouterr().out
    assert "Deadlocks: none active" in text
    assert "Stale holders: none active" in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_unreachable_agent_exits_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*LOCKSCOPE, "status", "--http", url, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "cannot reach the lockscope agent" in result.stderr
    assert url in result.stderr


def test_table_alignment() -> None:
    text = status.table(["a", "long header"], [["x" * 120, None], [[1, 2], {"k": "v"}]])
    lines = text.splitlines()
    assert lines[0].startswith("A ")
    assert "LONG HEADER" in lines[0]
    assert lines[1].endswith("-")
    assert "x" * 120 in lines[1]  # never cut
    assert "1, 2" in lines[2]
    assert lines[0].index("LONG") == lines[2].index('{"k"')
