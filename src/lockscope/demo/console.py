"""What the demo prints: timestamped progress lines and the agent's findings as tables.

The tables use :func:`lockscope.client.status.table`, the same layout as
``lockscope status``, so what a user sees here is what they will see on their own fleet.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from lockscope.client.status import table

__all__ = ["Console", "age", "deadlock_table", "stale_table"]


class Console:
    """Progress output with the seconds since the demo started."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.started = time.monotonic()

    def write(self, text: str = "") -> None:
        """Print ``text`` as is (a closed pipe, as from ``| head``, silences the rest)."""
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except BrokenPipeError:
            self.out = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the console

    def step(self, text: str) -> None:
        """Print a progress line, ``[  1.23s] text``."""
        self.write(f"[{time.monotonic() - self.started:6.2f}s] {text}")

    def heading(self, text: str) -> None:
        """A section title."""
        self.write("")
        self.write(text)
        self.write("-" * len(text))

    def block(self, text: str, indent: str = "    ") -> None:
        """Indented multi-line text (a table)."""
        for line in text.splitlines():
            self.write(indent + line)


def age(rfc3339: Any, now: datetime | None = None) -> str:
    """``"1.4 s"``: how long ago an RFC 3339 timestamp of the agent was (``"-"`` if none)."""
    if not isinstance(rfc3339, str) or not rfc3339:
        return "-"
    try:
        then = datetime.fromisoformat(rfc3339)
    except ValueError:
        return "-"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    return f"{max(0.0, seconds):.1f} s"


def deadlock_table(deadlock: dict[str, Any]) -> str:
    """The participants of one deadlock: who holds what, waits for what, for how long."""
    victim = deadlock.get("victim")
    rows = []
    for p in deadlock.get("participants") or []:
        actor = str(p.get("actor"))
        rows.append(
            [
                actor + ("  <- victim" if actor == victim else ""),
                p.get("pid"),
                p.get("holds"),
                p.get("waits_for"),
                age(p.get("waiting_since")),
            ]
        )
    return table(["actor", "pid", "holds", "waits for", "waiting"], rows)


def stale_table(items: list[dict[str, Any]]) -> str:
    """Stale holders: which lock, who holds it, why it is stale, held for how long."""
    rows = [
        [
            item.get("lock"),
            item.get("actor"),
            item.get("pid"),
            item.get("reason"),
            age(item.get("since")),
        ]
        for item in items
    ]
    return table(["lock", "holder", "pid", "reason", "held for"], rows)
