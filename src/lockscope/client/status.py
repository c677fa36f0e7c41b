"""Print the agent's active findings: deadlocks, stale holders, mutual-exclusion violations
and lock-order inversions, as plain-text tables.

Example:

    lockscope status                                # the agent at http://127.0.0.1:9477
    lockscope status --http http://agent.internal:9477
    lockscope status --json                         # the raw API answers, for scripts

The agent's HTTP address comes from ``--http``, else ``LOCKSCOPE_AGENT_HTTP`` (a URL or
HOST:PORT), else ``http://127.0.0.1:9477``.

Tables fit the terminal (``COLUMNS``, else the terminal's width; no limit when the output
is not a terminal).  Nothing is ever cut: a table too wide for the terminal is printed one
record per block instead ("expanded", like psql's ``\\x``).  "since" columns are when the
hold or wait began, as the holder reported it.

Exit status: 0 when the agent answered (findings or not), 2 when it is unreachable or
answers with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO

from lockscope.client import (
    DEFAULT_HTTP_URL,
    AgentClient,
    AgentError,
    add_agent_arguments,
    address_origin,
    agent_token,
    base_url,
)

__all__ = [
    "AgentUnreachable",
    "add_arguments",
    "fetch_findings",
    "render",
    "run",
    "table",
    "terminal_width",
]

DEFAULT_URL: Final = DEFAULT_HTTP_URL
EXIT_UNREACHABLE: Final = 2

# (API path, key in the answer, title, preferred columns in order)
SECTIONS: Final = (
    ("/api/v1/deadlocks", "deadlocks", "Deadlocks", ()),
    (
        "/api/v1/stale-holders",
        "stale_holders",
        "Stale holders",
        ("lock", "actor", "service", "pid", "reason", "since"),
    ),
    (
        "/api/v1/violations",
        "violations",
        "Mutual-exclusion violations",
        ("lock", "actor", "service", "pid", "reason", "other", "since"),
    ),
    (
        "/api/v1/order-inversions",
        "order_inversions",
        "Lock-order inversions",
        ("locks", "orders", "since"),
    ),
)
_SKIP: Final = frozenset({"status", "resolved_at"})

AgentUnreachable = AgentError
"""The old name of :class:`lockscope.client.AgentError` (kept working)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope status`` flags."""
    add_agent_arguments(parser, token_help="bearer token of an agent started with one")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (5)"
    )
    parser.add_argument("--json", action="store_true", help="print the API answers as JSON")


def fetch_findings(
    url: str, timeout: float = 5.0, token: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The active findings of the agent at ``url``, by section key (``token``: the agent's
    bearer token, when it has one).  Raises :class:`~lockscope.client.AgentError`."""
    client = AgentClient(url, token=token, timeout=timeout)
    return {key: client.findings(path, key, "active") for path, key, _t, _c in SECTIONS}


def terminal_width(out: TextIO | None = None, env: Mapping[str, str] | None = None) -> int | None:
    """Columns to fit: ``COLUMNS``, else the terminal's width, else None (no limit)."""
    env = os.environ if env is None else env
    columns = env.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = out if out is not None else sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        text = ", ".join(_cell(v) for v in value) or "-"
    elif isinstance(value, dict):
        # A nested party (a violation's "other" holder) reads best as its actor.
        text = str(value["actor"]) if "actor" in value else json.dumps(value, default=str)
    else:
        text = str(value)
    return " ".join(text.split())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = None) -> str:
    """A left-aligned plain-text table with a header row.

    When it would be wider than ``width`` columns it is printed expanded instead (one
    ``header: value`` line per cell, a rule between records), so no value is ever cut.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    total = sum(widths) + 2 * (len(widths) - 1)
    if width is not None and total > width:
        return _expanded(headers, cells)
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.extend("  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)


def _expanded(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    label = max((len(h) for h in headers), default=0)
    blocks = []
    for n, row in enumerate(cells, 1):
        lines = [f"-[ {n} ]-"]
        lines.extend(f"{h.upper().ljust(label)}  {t}" for h, t in zip(headers, row, strict=True))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _deadlock_rows(deadlocks: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["deadlock", "actor", "service", "pid", "waits for", "holds", "waiting since"]
    rows: list[list[Any]] = []
    for deadlock in deadlocks:
        victim = deadlock.get("victim")
        victim_actor = victim.get("actor") if isinstance(victim, dict) else victim
        for participant in deadlock.get("participants") or [{}]:
            actor = _cell(participant.get("actor"))
            if victim_actor is not None and participant.get("actor") == victim_actor:
                actor += " (victim)"
            rows.append(
                [
                    deadlock.get("id"),
                    actor,
                    participant.get("service"),
                    participant.get("pid"),
                    participant.get("waits_for"),
                    participant.get("holds"),
                    participant.get("waiting_since"),
                ]
            )
    return headers, rows


def _orders(inversion: dict[str, Any]) -> list[str]:
    out = []
    for pair in inversion.get("pairs") or []:
        if isinstance(pair, dict):
            who = f"{pair.get('service', '?')}:{pair.get('pid', '?')}"
            out.append(f"{pair.get('first')} -> {pair.get('second')} ({who})")
    return out


def _generic_rows(
    items: list[dict[str, Any]], preferred: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    if "orders" in preferred:
        items = [{**item, "orders": _orders(item)} for item in items]
    present = {key for item in items for key in item} - _SKIP
    headers = [key for key in preferred if key in present]
    if not headers:
        headers = sorted(present)
    return headers, [[item.get(h) for h in headers] for item in items]


def render(findings: Mapping[str, list[dict[str, Any]]], url: str, width: int | None = None) -> str:
    """The report ``lockscope status`` prints, its tables fitted to ``width`` columns."""
    counts = ", ".join(
        f"{title.lower()}: {len(findings.get(key, []))}" for _p, key, title, _c in SECTIONS
    )
    parts = [f"lockscope agent at {url}: {counts}"]
    for _path, key, title, preferred in SECTIONS:
        items = findings.get(key, [])
        if not items:
            parts.append(f"{title}: none active")
            continue
        if key == "deadlocks":
            headers, rows = _deadlock_rows(items)
        else:
            headers, rows = _generic_rows(items, preferred)
        parts.append(f"{title} ({len(items)} active)\n{table(headers, rows, width)}")
    return "\n\n".join(parts) + "\n"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Fetch and print; see the module docstring for the exit status."""
    out = out if out is not None else sys.stdout
    try:
        url = base_url(args.http)
        findings = fetch_findings(url, args.timeout, agent_token(getattr(args, "token", None)))
    except ValueError as exc:
        print(f"lockscope status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AgentError as exc:
        print(f"lockscope status: {exc}{address_origin(args.http)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        out.write(json.dumps(findings, indent=2, default=str) + "\n")
    else:
        out.write(render(findings, url, terminal_width(out)))
    return 0
