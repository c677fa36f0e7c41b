"""PostgreSQL: the one query a poll runs, and how its rows become a :class:`Snapshot`.

The query reads ``pg_locks`` (waiting locks and, for the sessions involved, granted ones),
``pg_blocking_pids()`` (hard blockers, which hold a conflicting lock, and soft ones, queued
ahead with a conflicting request) and ``pg_stat_activity`` (application_name, client
address, state).  When no backend waits for a heavyweight lock the ``pg_locks`` scan is
skipped (a one-time filter on ``pg_stat_activity``), so an idle poll costs the server one
small function scan.  The privileges it needs are those of the ``pg_monitor`` role.

Naming (lock names of the graph):

* advisory locks: ``advisory:<bigint key>`` or ``advisory:<int4>,<int4>``;
* a row: ``row:<schema>.<table>@(<page>,<tuple>)`` (a waiter for a row waits for the
  holder's transaction id while holding the row's tuple lock; both name the row);
* a table: ``table:<schema>.<table>``; only the transaction known:
  ``transaction:<xid>``.

A blocker that waits for the same named lock is queued ahead (a soft edge: the lock is
FIFO); any other blocker holds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from lockscope.agent.db_snapshot import DbLock, SinceMemo, Snapshot

__all__ = ["POLL_QUERY", "SETUP_STATEMENTS", "build_snapshot", "lock_name", "pg_mode"]

SETUP_STATEMENTS: Final = (
    # Never hold up the monitored database: give up rather than wait for its locks.
    "SET lock_timeout = '500ms'",
)

_LOCK_COLUMNS: Final = """
    'pid', l.pid, 'locktype', l.locktype, 'mode', l.mode, 'page', l.page, 'tuple', l.tuple,
    'xid', l.transactionid::text, 'vxid', l.virtualxid, 'classid', l.classid::int8,
    'objid', l.objid::int8, 'objsubid', l.objsubid, 'relation', l.relation::int8,
    'relname', (SELECT n.nspname || '.' || c.relname FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = l.relation)
"""

POLL_QUERY: Final = f"""
WITH waiting AS MATERIALIZED (
    SELECT l.*, pg_blocking_pids(l.pid) AS blockers,
           (extract(epoch FROM l.waitstart) * 1e6)::int8 AS waitstart_us
    FROM pg_locks l
    WHERE NOT l.granted
      AND (l.database IS NULL OR l.database = (SELECT oid FROM pg_database
                                               WHERE datname = current_database()))
      AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock')
),
involved AS MATERIALIZED (
    SELECT pid FROM waiting UNION SELECT unnest(blockers) FROM waiting
)
SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::int8,
  (SELECT json_agg(json_build_object({_LOCK_COLUMNS},
                   'blockers', l.blockers, 'waitstart_us', l.waitstart_us))
   FROM waiting l),
  (SELECT json_agg(json_build_object({_LOCK_COLUMNS}))
   FROM pg_locks l
   WHERE l.granted AND l.pid IN (SELECT pid FROM involved)
     AND l.locktype IN ('advisory', 'tuple', 'transactionid', 'relation', 'virtualxid')
     AND EXISTS (SELECT 1 FROM waiting)),
  (SELECT json_agg(json_build_object(
       'pid', a.pid, 'application_name', a.application_name,
       'client', host(a.client_addr) || ':' || a.client_port, 'user', a.usename,
       'state', a.state, 'wait_event', a.wait_event))
   FROM pg_stat_activity a WHERE a.pid IN (SELECT pid FROM involved))
"""
"""One round trip: (server time in µs, waiting locks, granted locks, sessions)."""


def _int4(v: int) -> int:
    """An oid column read back as the signed int4 the advisory-lock call was given."""
    return v - (1 << 32) if v >= 1 << 31 else v


def lock_name(row: Mapping[str, Any], tuple_of: Mapping[int, str] | None = None) -> str:
    """The graph name of a ``pg_locks`` row (``tuple_of``: pid -> the row whose tuple lock
    that pid holds, to name a transaction-id wait after the row it is for)."""
    kind = row.get("locktype")
    if kind == "advisory":
        classid, objid = int(row.get("classid") or 0), int(row.get("objid") or 0)
        if row.get("objsubid") == 2:
            return f"advisory:{_int4(classid)},{_int4(objid)}"
        key = (classid << 32) | objid
        return f"advisory:{key - (1 << 64) if key >= 1 << 63 else key}"
    relname = row.get("relname") or (f"oid{row['relation']}" if row.get("relation") else None)
    if kind == "tuple" and relname:
        return f"row:{relname}@({row.get('page')},{row.get('tuple')})"
    if kind == "transactionid":
        if tuple_of is not None and row.get("pid") in tuple_of and not row.get("granted", False):
            return tuple_of[row["pid"]]
        return f"transaction:{row.get('xid')}"
    if kind == "virtualxid":
        return f"transaction:{row.get('vxid')}"
    if relname:
        return f"table:{relname}"
    return f"transaction:{kind}"


_SHARED_MODES: Final = frozenset(
    {"AccessShareLock", "RowShareLock", "ShareLock", "ShareUpdateExclusiveLock"}
)


def pg_mode(mode: str | None) -> str:
    """The agent mode for a PostgreSQL lock mode: the share modes read, the others exclusive.

    Holders come from ``pg_blocking_pids`` (the server's own conflict table), so this only
    decides which queued waiters count as ahead of which (soft edges).
    """
    return "read" if mode in _SHARED_MODES else "exclusive"


def _rows(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        value = json.loads(value)
    return [r for r in value if isinstance(r, dict)]


def _us_to_ns(us: Any, default: int) -> int:
    return int(us) * 1000 if isinstance(us, int | float) else default


def build_snapshot(
    result: Sequence[Any], memo: SinceMemo, exclude_pid: int | None = None
) -> Snapshot:
    """A :class:`Snapshot` from the row :data:`POLL_QUERY` returned."""
    now_us, waiting_raw, granted_raw, sessions_raw = result
    now_ns = _us_to_ns(now_us, 0)
    if isinstance(now_us, datetime):  # pragma: no cover - a driver returning timestamps
        now_ns = int(now_us.timestamp() * 1e9)
    waiting = [r for r in _rows(waiting_raw) if r.get("pid") != exclude_pid]
    granted = _rows(granted_raw)
    snap = Snapshot(server_time_ns=now_ns)
    # The row each pid's granted tuple lock is for (a first waiter for a row holds it).
    tuple_of: dict[int, str] = {}
    for g in granted:
        if g.get("locktype") == "tuple" and g.get("relname"):
            tuple_of[g["pid"]] = lock_name(g)
    granted_by_pid: dict[int, list[dict[str, Any]]] = {}
    for g in granted:
        granted_by_pid.setdefault(g["pid"], []).append(g)
    wait_name: dict[int, str] = {}
    for w in waiting:
        name = lock_name(w, tuple_of)
        wait_name[w["pid"]] = name
        since = _us_to_ns(w.get("waitstart_us"), 0) or memo.since(w["pid"], name, "w", now_ns)
        snap.add_wait(w["pid"], DbLock(name, pg_mode(w.get("mode")), since, w.get("mode") or ""))
    for w in waiting:
        name = wait_name[w["pid"]]
        for blocker in w.get("blockers") or ():
            if blocker == exclude_pid:
                continue
            if wait_name.get(blocker) == name:
                continue  # queued ahead on the same lock: a soft edge (FIFO order)
            db_mode = _holder_mode(granted_by_pid.get(blocker, ()), w)
            since = memo.since(blocker, name, "h", now_ns)
            snap.add_hold(blocker, DbLock(name, pg_mode(db_mode), since, db_mode))
    for s in _rows(sessions_raw):
        pid = s.get("pid")
        if pid in snap.sessions:
            sess = snap.sessions[pid]
            sess.application = str(s.get("application_name") or "")
            sess.client = str(s.get("client") or "")
            sess.user = str(s.get("user") or "")
            sess.state = str(s.get("state") or "")
    memo.end_poll()
    return snap


_SAME_OBJECT: Final = ("locktype", "relation", "page", "tuple", "xid", "vxid", "classid",
                       "objid", "objsubid")  # fmt: skip


def _holder_mode(granted: Sequence[Mapping[str, Any]], wait: Mapping[str, Any]) -> str:
    """The mode in which a blocker holds the object ``wait`` is for ("ExclusiveLock" when
    the object is not among its granted locks, as for a lock on another object)."""
    for g in granted:
        if all(g.get(k) == wait.get(k) for k in _SAME_OBJECT):
            return str(g.get("mode") or "ExclusiveLock")
    return "ExclusiveLock"
