"""Which actor a database session is: the binding an instrumented connection reports.

The shim reports, for a statement or an open transaction that has lasted ``report_after``,
a hold of the *binding lock* ``session:<backend id>`` (system ``postgresql``/``mysql``,
namespace ``host:port/db``) by the actor running the statement or holding the
transaction.  The database watcher reports each session's waits and holds with the
session's id (``lockscope.db.session``); the state looks the binding lock up and, when an
actor holds it, applies the session's entries to that actor.  So a thread that holds a
Redis lock and blocks in an ``UPDATE`` is one node, and the cycle through both is visible.

The binding's lifetime is that of the hold (its process's heartbeats keep it), so a
connection handed to another thread rebinds as soon as that thread's statement is
reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from lockscope import events as ev
from lockscope.agent.db_snapshot import ATTR_DB_SESSION, SESSION_PREFIX
from lockscope.agent.graph import Actor, Lock

__all__ = [
    "DEADLOCK_VICTIM",
    "binding_key",
    "bound_actor",
    "bound_since",
    "bound_wait_since",
    "is_binding",
]

DEADLOCK_VICTIM: Final = "deadlock_victim"
"""Outcome of a binding's ``hold.end`` when the database aborted the actor's statement to
break a deadlock; the deadlock's finding resolves with it."""
_DB_SYSTEMS: Final = frozenset({"postgresql", "mysql"})


def is_binding(lock: Lock) -> bool:
    """Whether ``lock`` is a session binding lock (``session:<id>`` of a database)."""
    return lock.system in _DB_SYSTEMS and lock.name.startswith(SESSION_PREFIX)


def binding_key(system: str, namespace: str, session_id: object) -> str:
    """The lock key of a session's binding lock."""
    return ev.lock_key(system, namespace, f"{SESSION_PREFIX}{session_id}")


def _binding(locks: Mapping[str, Lock], attrs: Mapping[str, Any]) -> Lock | None:
    sid = attrs.get(ATTR_DB_SESSION)
    if sid is None or isinstance(sid, bool) or not isinstance(sid, int | str):
        return None
    system = attrs.get(ev.ATTR_LOCK_SYSTEM)
    namespace = attrs.get(ev.ATTR_LOCK_NAMESPACE)
    if not isinstance(system, str) or not isinstance(namespace, str):
        return None
    lock = locks.get(binding_key(system, namespace, sid))
    return lock if lock is not None and lock.holds else None


def bound_actor(locks: Mapping[str, Lock], attrs: Mapping[str, Any]) -> Actor | None:
    """The actor using the session an entry is about (the newest binding), if any."""
    lock = _binding(locks, attrs)
    if lock is None:
        return None
    return max(lock.holds, key=lambda h: h.since_ns).actor


def bound_since(
    locks: Mapping[str, Lock], attrs: Mapping[str, Any], actor: Actor, since: int
) -> int:
    """A session's hold, dated no later than the actor's binding of the session.

    The watcher only learns when it first saw a granted lock; the session took it at the
    latest then, and at the earliest when the actor began using the session.  Dating it
    at the binding keeps the hold older than the actor's later waits (an actor that holds
    a row and then waits for a Redis lock must keep both).
    """
    lock = _binding(locks, attrs)
    if lock is None:
        return since
    for h in lock.holds:
        if h.actor is actor:
            return min(since, h.since_ns)
    return since


def bound_wait_since(actor: Actor, since: int) -> int:
    """A session's wait, dated no earlier than the actor's own newest hold.

    The wait's start is the database's clock (or, on MariaDB, rounded); the actor's holds
    are its host's.  An actor blocked in a statement acquires nothing else, so its holds
    all began before the wait: dating the wait after them keeps it (the state drops a
    wait older than a hold of its actor as already over).  Stable while the actor waits.
    """
    newest = max((h.since_ns for h in actor.holds.values() if h.source is None), default=since - 1)
    return max(since, newest + 1)
