"""MariaDB and MySQL 8: the poll (one round trip of several statements) and its snapshot.

MariaDB reads ``information_schema.INNODB_LOCK_WAITS``/``INNODB_LOCKS``/``INNODB_TRX`` for
row and table locks and, where the ``metadata_lock_info`` plugin is loaded,
``METADATA_LOCK_INFO`` for the holders of ``GET_LOCK`` names (their waiters are the
sessions in state ``User lock``, whose statement names the lock).  MySQL 8 reads
``performance_schema.data_lock_waits``/``data_locks``/``metadata_locks``/``threads``.  Both
need ``PROCESS`` (and, on MySQL, ``SELECT`` on ``performance_schema``).

Lock names: ``row:<schema>.<table>@<index>(<lock data>)``, ``table:<schema>.<table>``,
``user_lock:<name>``.  The statements go in one ``COM_QUERY`` (multi-statements), so a
poll is one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from lockscope.agent.db_dsn import DatabaseTarget
from lockscope.agent.db_snapshot import DbLock, SinceMemo, Snapshot

__all__ = [
    "MARIADB_QUERIES",
    "MYSQL8_QUERIES",
    "MysqlDialect",
    "build_snapshot",
    "user_lock_from_statement",
]

_NOW: Final = "SELECT UNIX_TIMESTAMP(NOW(6))"

MARIADB_RECORD_WAITS: Final = """
SELECT r.trx_mysql_thread_id,
       COALESCE(UNIX_TIMESTAMP(NOW(6)) - p.TIME_MS / 1000, UNIX_TIMESTAMP(r.trx_wait_started)),
       w.requested_lock_id, b.trx_mysql_thread_id, w.blocking_lock_id
FROM information_schema.INNODB_LOCK_WAITS w
JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id
JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id
LEFT JOIN information_schema.PROCESSLIST p ON p.ID = r.trx_mysql_thread_id
WHERE b.trx_requested_lock_id IS NULL OR b.trx_requested_lock_id <> w.blocking_lock_id
"""
"""Hard edges only: InnoDB lists every waiter queued ahead as a blocker too (n waiters for
one row: n(n+1)/2 rows), and joining those with INNODB_LOCKS costs MariaDB ~0.2 s at 50
waiters.  Queued-ahead waiters wait for the same row: the agent's FIFO rule adds them."""
MARIADB_LOCKS: Final = """
SELECT lock_id, lock_mode, lock_type, lock_table, lock_index, lock_data
FROM information_schema.INNODB_LOCKS
"""
MARIADB_USER_WAITS: Final = """
SELECT ID, TIME_MS, INFO FROM information_schema.PROCESSLIST WHERE STATE = 'User lock'
"""
MARIADB_USER_HOLDERS: Final = """
SELECT THREAD_ID, TABLE_SCHEMA FROM information_schema.METADATA_LOCK_INFO
WHERE LOCK_TYPE = 'User lock'
"""
MARIADB_SESSIONS: Final = """
SELECT ID, USER, HOST, '' FROM information_schema.PROCESSLIST
WHERE STATE = 'User lock'
   OR EXISTS (SELECT 1 FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT')
"""
"""Every session while any waits (the builder keeps those involved): a filter by the lock
tables would make MariaDB materialise them once per row."""
MARIADB_QUERIES: Final = (
    _NOW,
    MARIADB_RECORD_WAITS,
    MARIADB_LOCKS,
    MARIADB_USER_WAITS,
    MARIADB_SESSIONS,
)
"""Without the metadata_lock_info plugin (GET_LOCK waiters are then seen, holders not)."""

MYSQL8_RECORD_WAITS: Final = """
SELECT rt.PROCESSLIST_ID, UNIX_TIMESTAMP(trx.trx_wait_started), rl.LOCK_MODE,
       rl.LOCK_TYPE, CONCAT('`', rl.OBJECT_SCHEMA, '`.`', rl.OBJECT_NAME, '`'),
       rl.INDEX_NAME, rl.LOCK_DATA, bt.PROCESSLIST_ID, bl.LOCK_MODE
FROM performance_schema.data_lock_waits w
JOIN performance_schema.data_locks rl
  ON rl.ENGINE = w.ENGINE AND rl.ENGINE_LOCK_ID = w.REQUESTING_ENGINE_LOCK_ID
JOIN performance_schema.data_locks bl
  ON bl.ENGINE = w.ENGINE AND bl.ENGINE_LOCK_ID = w.BLOCKING_ENGINE_LOCK_ID
JOIN performance_schema.threads rt ON rt.THREAD_ID = w.REQUESTING_THREAD_ID
JOIN performance_schema.threads bt ON bt.THREAD_ID = w.BLOCKING_THREAD_ID
LEFT JOIN information_schema.INNODB_TRX trx
  ON trx.trx_id = w.REQUESTING_ENGINE_TRANSACTION_ID
"""
MYSQL8_USER_LOCKS: Final = """
SELECT t.PROCESSLIST_ID, m.LOCK_STATUS, m.OBJECT_NAME,
       (SELECT TIMER_WAIT FROM performance_schema.events_waits_current e
        WHERE e.THREAD_ID = m.OWNER_THREAD_ID LIMIT 1)
FROM performance_schema.metadata_locks m
JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID
WHERE m.OBJECT_TYPE = 'USER LEVEL LOCK'
  AND m.OBJECT_NAME IN (SELECT OBJECT_NAME FROM performance_schema.metadata_locks
                        WHERE OBJECT_TYPE = 'USER LEVEL LOCK' AND LOCK_STATUS = 'PENDING')
"""
MYSQL8_SESSIONS: Final = """
SELECT t.PROCESSLIST_ID, t.PROCESSLIST_USER, t.PROCESSLIST_HOST,
       (SELECT a.ATTR_VALUE FROM performance_schema.session_connect_attrs a
        WHERE a.PROCESSLIST_ID = t.PROCESSLIST_ID AND a.ATTR_NAME = 'program_name' LIMIT 1)
FROM performance_schema.threads t
WHERE t.THREAD_ID IN (SELECT REQUESTING_THREAD_ID FROM performance_schema.data_lock_waits
                      UNION SELECT BLOCKING_THREAD_ID FROM performance_schema.data_lock_waits)
   OR t.THREAD_ID IN (SELECT OWNER_THREAD_ID FROM performance_schema.metadata_locks
                      WHERE OBJECT_TYPE = 'USER LEVEL LOCK')
"""
MYSQL8_QUERIES: Final = (_NOW, MYSQL8_RECORD_WAITS, MYSQL8_USER_LOCKS, MYSQL8_SESSIONS)

_GET_LOCK: Final = re.compile(r"GET_LOCK\s*\(\s*(['\"])((?:\\.|(?!\1).|\1\1)*)\1", re.I | re.S)


def user_lock_from_statement(statement: str | None) -> str | None:
    """The lock name a ``GET_LOCK('name', ...)`` statement asks for (string literals only)."""
    if not statement:
        return None
    m = _GET_LOCK.search(statement)
    if m is None:
        return None
    quote, body = m.group(1), m.group(2)
    return re.sub(r"\\(.)", r"\1", body).replace(quote * 2, quote)


def _table(quoted: str | None) -> str:
    return (quoted or "?").replace("`", "")


def _record_name(lock_type: str | None, table: str | None, index: str | None, data: Any) -> str:
    if (lock_type or "").upper() == "TABLE":
        return f"table:{_table(table)}"
    return f"row:{_table(table)}@{index or '?'}({data if data is not None else '?'})"


def _mode(db_mode: str | None) -> str:
    return "read" if (db_mode or "").upper().startswith(("S", "IS")) else "exclusive"


def _s_to_ns(value: Any, default: int) -> int:
    try:
        return int(float(value) * 1e9) if value is not None else default
    except (TypeError, ValueError):
        return default


def build_snapshot(
    results: Sequence[Sequence[Sequence[Any]]],
    memo: SinceMemo,
    *,
    mysql8: bool,
    holders_known: bool = True,
    exclude_id: int | None = None,
) -> Snapshot:
    """A :class:`Snapshot` from the result sets of :data:`MARIADB_QUERIES` (+ the
    ``METADATA_LOCK_INFO`` one when ``holders_known``) or :data:`MYSQL8_QUERIES`."""
    now_rows, record_rows = results[0], results[1]
    if not mysql8:
        # MariaDB: (waiter, since, requested lock id, blocker, blocking lock id) + the locks.
        locks = {row[0]: row[1:] for row in results[2]}
        record_rows = [
            (waiter, since, *locks.get(req, ("", "RECORD", None, None, None)), blocker,
             (locks.get(blk) or ("X",))[0])
            for waiter, since, req, blocker, blk in record_rows
        ]  # fmt: skip
        results = [results[0], record_rows, *results[3:]]
    now_ns = _s_to_ns(now_rows[0][0] if now_rows else None, 0)
    snap = Snapshot(server_time_ns=now_ns)
    waits: dict[int, str] = {}
    blockers: list[tuple[int, str, str]] = []
    for row in record_rows:
        waiter, started, mode, ltype, table, index, data, blocker, bmode = row
        if waiter is None or blocker is None:
            continue
        name = _record_name(ltype, table, index, data)
        since = _s_to_ns(started, 0) or memo.since(int(waiter), name, "w", now_ns)
        waits[int(waiter)] = name
        snap.add_wait(int(waiter), DbLock(name, _mode(mode), since, str(mode or "")))
        blockers.append((int(blocker), name, str(bmode or "")))
    user_waiters: dict[str, list[int]] = {}
    holders: list[tuple[int, str]] = []
    if mysql8:
        for sid, status, lname, _timer in results[2]:
            name = f"user_lock:{lname}"
            if status == "PENDING":
                since = memo.since(int(sid), name, "w", now_ns)
                waits[int(sid)] = name
                snap.add_wait(int(sid), DbLock(name, "exclusive", since, "USER LEVEL LOCK"))
            elif status == "GRANTED":
                holders.append((int(sid), name))
        sessions = results[3]
    else:
        for sid, time_ms, info in results[2]:
            lname = user_lock_from_statement(info)
            if lname is None:
                continue
            name = f"user_lock:{lname}"
            since = now_ns - int(float(time_ms or 0) * 1e6)
            since = memo.since(int(sid), name, "w", since)
            waits[int(sid)] = name
            user_waiters.setdefault(name, []).append(int(sid))
            snap.add_wait(int(sid), DbLock(name, "exclusive", since, "User lock"))
        if holders_known:
            for sid, lname in results[3]:
                name = f"user_lock:{lname}"
                if name in user_waiters:
                    holders.append((int(sid), name))
        sessions = results[-1]
    for sid, name in holders:
        blockers.append((sid, name, "X"))
    for sid, name, bmode in blockers:
        if sid == exclude_id or waits.get(sid) == name:
            continue  # queued ahead for the same lock: a soft edge, not a holder
        since = memo.since(sid, name, "h", now_ns)
        snap.add_hold(sid, DbLock(name, _mode(bmode), since, bmode))
    for sid, user, host, program in sessions:
        s = snap.sessions.get(int(sid))
        if s is not None:
            s.user = str(user or "")
            s.client = str(host or "")
            s.application = str(program or "")
    memo.end_poll()
    return snap


_TIMEOUT_ERRORS: Final = (1969, 3024)


class MysqlDialect:
    """PyMySQL, autocommit, a per-session statement time limit, one round trip per poll."""

    def __init__(self) -> None:
        self._memo = SinceMemo()
        self._mysql8 = False
        self._holders_known = False
        self._queries: tuple[str, ...] = MARIADB_QUERIES
        self._own_id: int | None = None

    def connect(self, target: DatabaseTarget) -> Any:
        import pymysql
        from pymysql.constants import CLIENT

        conn = pymysql.connect(
            host=target.host,
            port=target.port,
            user=target.user or "",
            password=target.password or "",
            # No default database: PROCESS is all a poll needs, and choosing a database
            # would need a grant on it (the namespace still names target.dbname).
            connect_timeout=max(1, int(target.statement_timeout + 0.999)),
            read_timeout=max(1, int(target.statement_timeout * 2 + 0.999)),
            write_timeout=max(1, int(target.statement_timeout * 2 + 0.999)),
            autocommit=True,
            client_flag=CLIENT.MULTI_STATEMENTS,
            program_name="lockscope-agent",
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
                version = str(row[0]) if row else ""
                self._mysql8 = "mariadb" not in version.lower()
                if self._mysql8:
                    # max_execution_time applies to SELECTs, which is all a poll runs.
                    cur.execute(
                        f"SET SESSION max_execution_time = {int(target.statement_timeout * 1000)}"
                    )
                    self._queries = MYSQL8_QUERIES
                else:
                    cur.execute(f"SET SESSION max_statement_time = {target.statement_timeout:.3f}")
                    cur.execute(
                        "SELECT COUNT(*) FROM information_schema.PLUGINS "
                        "WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE'"
                    )
                    found = cur.fetchone()
                    self._holders_known = bool(found and found[0])
                    self._queries = MARIADB_QUERIES
                    if self._holders_known:
                        self._queries = (
                            *MARIADB_QUERIES[:4],
                            MARIADB_USER_HOLDERS,
                            MARIADB_QUERIES[4],
                        )
                # Without PROCESS the tables answer with this session's rows only: say so.
                cur.execute("SHOW GRANTS")
                grants = " ".join(str(r[0]) for r in cur.fetchall()).upper()
                if "PROCESS" not in grants and "ALL PRIVILEGES ON *.*" not in grants:
                    raise PermissionError(
                        f"user {target.user or '(default)'} lacks the PROCESS privilege "
                        f"(GRANT PROCESS ON *.* TO ...)"
                    )
        except BaseException:
            conn.close()
            raise
        self._own_id = conn.thread_id()
        return conn

    def poll(self, conn: Any) -> Snapshot:
        results: list[Sequence[Sequence[Any]]] = []
        with conn.cursor() as cur:
            cur.execute(";".join(self._queries))
            while True:
                results.append(cur.fetchall() or ())
                if not cur.nextset():
                    break
        return build_snapshot(
            results,
            self._memo,
            mysql8=self._mysql8,
            holders_known=self._holders_known,
            exclude_id=self._own_id,
        )

    def cut_by_timeout(self, conn: Any, exc: BaseException) -> bool:
        """MariaDB error 1969 (max_statement_time exceeded) or MySQL 3024
        (max_execution_time exceeded), on a connection that is still open."""
        args: tuple[Any, ...] = getattr(exc, "args", ())
        return bool(args) and args[0] in _TIMEOUT_ERRORS and bool(conn.open)

    def close(self, conn: Any) -> None:
        conn.close()
