"""The queue order of a FIFO lock's waiters (PostgreSQL's soft edges follow it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lockscope.agent.graph import Wait

__all__ = ["queue_order", "queued_ahead", "queued_behind"]


def _by_start(w: Wait) -> tuple[int, str]:
    return (w.since_ns, w.actor.key)


def _by_ticket(w: Wait) -> tuple[int, int, str]:
    assert w.ticket is not None
    return (w.ticket, w.since_ns, w.actor.key)


def queue_order(waits: list[Wait]) -> list[Wait]:
    """The waiters of a FIFO lock in queue order, front first: a total order.

    Tickets (the lock server's own queue order, as kazoo reports it) order the waiters that
    have one, wait starts the others.  Comparing "by ticket when both have one, else by
    start" pairwise is not transitive (A ticket 1, B none, C ticket 2 can give A > B > C >
    A: a false cycle), so the two chains are merged instead, like the merge step of a merge
    sort: each keeps its own order and they interleave by wait start.  A queue is never a
    cycle.
    """
    ticketed = sorted((w for w in waits if w.ticket is not None), key=_by_ticket)
    if len(ticketed) == len(waits):
        return ticketed
    plain = sorted((w for w in waits if w.ticket is None), key=_by_start)
    if not ticketed:
        return plain
    out: list[Wait] = []
    i = j = 0
    while i < len(ticketed) and j < len(plain):
        if _by_start(plain[j]) < _by_start(ticketed[i]):
            out.append(plain[j])
            j += 1
        else:
            out.append(ticketed[i])
            i += 1
    out.extend(ticketed[i:])
    out.extend(plain[j:])
    return out


def queued_ahead(w: Wait) -> list[Wait]:
    """The waiters queued ahead of ``w`` on its (FIFO) lock."""
    order = queue_order(w.lock.waits)
    return order[: order.index(w)]


def queued_behind(w: Wait) -> list[Wait]:
    """The waiters queued behind ``w`` on its (FIFO) lock."""
    order = queue_order(w.lock.waits)
    return order[order.index(w) + 1 :]
