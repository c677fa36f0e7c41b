"""The SQL behind :class:`~lockscope.locks.database.DatabaseLock`: one small class per dialect.

Each dialect knows how to open a connection with bounded waits, how to set a session up
(autocommit, time zone, timeouts, the lease table), and its four statements. Acquire,
release and extend are each ONE statement, atomic on its own, and every one of them reads
the time from the database server (``clock_timestamp()``, ``NOW(6)``, SQLite's
``julianday('now')``); no client timestamp ever reaches the SQL, so a client whose clock is
wrong cannot shorten or lengthen anyone's lease.

The lease table (``lockscope_locks`` by default) has one row per lock name, kept forever:
``owner`` is the holder's token (NULL when free), ``fence`` the fencing counter (only ever
incremented, so it survives release), ``expires_at`` the end of the lease by the server's
clock.
"""

from __future__ import annotations

import abc
import contextlib
import math
import re
import select
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "DIALECTS",
    "Dialect",
    "HolderRow",
    "MySQLDialect",
    "PostgresDialect",
    "SQLiteDialect",
    "validate_table",
]

HolderRow = tuple[str, int, float]
"""``(owner, fence, seconds the lease has left)`` as the database sees it."""

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


def validate_table(table: object) -> str:
    """Return ``table`` if it is a plain (optionally schema-qualified) SQL identifier.

    The name is put into the SQL text (identifiers cannot be bound parameters), so only
    letters, digits and underscores are accepted.
    """
    if not isinstance(table, str):
        raise TypeError(f"table must be a str, not {type(table).__name__}")
    if not _TABLE_RE.match(table):
        raise ValueError(
            f"table must be a plain SQL identifier like 'lockscope_locks', got {table!r}"
        )
    return table


class Dialect(abc.ABC):
    """The statements of one SQL dialect over one lease table.

    ``release``, ``extend`` and ``holder`` run ``release_sql``, ``extend_sql`` and
    ``holder_sql`` with named parameters and read the affected row count; a dialect whose
    driver needs otherwise overrides them.
    """

    name: ClassVar[str]
    release_sql: str
    extend_sql: str
    holder_sql: str

    def __init__(self, table: str, statement_timeout: float) -> None:
        self.table = validate_table(table)
        self.statement_timeout = statement_timeout

    @abc.abstractmethod
    def setup(self, conn: Any) -> None:
        """Make a fresh connection autocommit with bounded waits; create the table if missing."""

    @abc.abstractmethod
    def acquire(self, cur: Any, name: str, owner: str, ttl: float) -> int | None:
        """Take ``name`` if free or expired; return the new fencing token, else ``None``."""

    def release(self, cur: Any, name: str, owner: str, fence: int) -> bool:
        """Free ``name`` if ``owner``/``fence`` still hold an unexpired lease on it."""
        cur.execute(self.release_sql, {"name": name, "owner": owner, "fence": fence})
        return bool(cur.rowcount == 1)

    def extend(self, cur: Any, name: str, owner: str, fence: int, ttl: float) -> bool:
        """Make the lease last ``ttl`` seconds from now, if ``owner``/``fence`` still hold it."""
        params = {"name": name, "owner": owner, "fence": fence, "ttl": ttl}
        cur.execute(self.extend_sql, params)
        return bool(cur.rowcount == 1)

    def holder(self, cur: Any, name: str) -> HolderRow | None:
        """Return the current, unexpired holder of ``name``, or ``None`` if it is free."""
        cur.execute(self.holder_sql, {"name": name})
        row = cur.fetchone()
        return None if row is None else (str(row[0]), int(row[1]), float(row[2]))

    def check_name(self, name: str) -> None:
        """Raise ``ValueError`` if this dialect cannot store ``name`` as a key."""
        return None

    def is_contention(self, exc: BaseException) -> bool:
        """Whether ``exc`` means "someone else got there first" rather than a failure."""
        return False

    def is_stale(self, conn: Any) -> bool:
        """Whether a pooled, idle connection is known dead (closed, or the server hung up)."""
        return False

    @staticmethod
    def driver_errors() -> tuple[type[BaseException], ...]:
        """The driver's exception classes, all of which become ``BackendUnavailable``."""
        return ()


class SQLiteDialect(Dialect):
    """SQLite >= 3.35 (UPSERT and RETURNING): the embedded default, one file per host.

    SQLite runs inside each process, so "the database's clock" is the host's clock, shared by
    every process on the file (SQLite must not be used over a network file system anyway).
    """

    name = "sqlite"
    # Unix seconds with millisecond precision. 'now' is fixed for the whole of one
    # sqlite3_step(), so every mention in a statement sees the same instant.
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, table: str, statement_timeout: float) -> None:
        super().__init__(table, statement_timeout)
        t, now = self.table, self.NOW
        self.create_sql = (
            f"CREATE TABLE IF NOT EXISTS {t} (name TEXT NOT NULL PRIMARY KEY, owner TEXT,"
            " fence INTEGER NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
        )
        self.acquire_sql = (
            f"INSERT INTO {t} AS l (name, owner, fence, expires_at)"
            f" VALUES (:name, :owner, 1, {now} + :ttl)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
            " fence = l.fence + 1, expires_at = excluded.expires_at"
            f" WHERE l.owner IS NULL OR l.expires_at <= {now}"
            " RETURNING fence"
        )
        self.release_sql = (
            f"UPDATE {t} SET owner = NULL, expires_at = {now}"
            f" WHERE name = :name AND owner = :owner AND fence = :fence AND expires_at > {now}"
        )
        self.extend_sql = (
            f"UPDATE {t} SET expires_at = {now} + :ttl"
            f" WHERE name = :name AND owner = :owner AND fence = :fence AND expires_at > {now}"
        )
        self.holder_sql = (
            f"SELECT owner, fence, expires_at - {now} FROM {t}"
            f" WHERE name = :name AND owner IS NOT NULL AND expires_at > {now}"
        )

    def setup(self, conn: Any) -> None:
        if sqlite3.sqlite_version_info < (3, 35):
            raise sqlite3.NotSupportedError(
                f"DatabaseLock needs SQLite >= 3.35 (UPSERT ... RETURNING);"
                f" this Python has {sqlite3.sqlite_version}"
            )
        conn.isolation_level = None  # autocommit: each statement is its own transaction
        cur = conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {math.ceil(self.statement_timeout * 1000)}")
            self._use_wal(cur)
            cur.execute(self.create_sql)
        finally:
            cur.close()

    def _use_wal(self, cur: Any) -> None:
        # WAL lets readers and the one writer proceed together; several processes on one
        # file then wait on each other only for the few microseconds of a write. The
        # mode is stored in the file, so only the first connection ever switches it, but
        # that switch does not wait on the busy handler: processes starting together on a
        # new file retry it here, within the statement timeout.
        deadline = time.monotonic() + self.statement_timeout
        while True:
            try:
                cur.execute("PRAGMA journal_mode = WAL")
                cur.fetchall()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def acquire(self, cur: Any, name: str, owner: str, ttl: float) -> int | None:
        cur.execute(self.acquire_sql, {"name": name, "owner": owner, "ttl": ttl})
        # Read to the end: SQLite commits an autocommit statement only when it is done.
        rows = cur.fetchall()
        return int(rows[0][0]) if rows else None

    @staticmethod
    def driver_errors() -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)


class PostgresDialect(Dialect):
    """PostgreSQL >= 9.5 (``INSERT ... ON CONFLICT``), through psycopg 3.

    ``clock_timestamp()`` is the server's clock at the moment of evaluation. ``now()`` would
    be the start of the transaction: the same in autocommit, but on a connection that sat in
    an open transaction it would hand out leases that expired before they were granted.
    """

    name = "postgresql"

    def __init__(self, table: str, statement_timeout: float) -> None:
        super().__init__(table, statement_timeout)
        t = self.table
        lease_end = "clock_timestamp() + make_interval(secs => %(ttl)s)"
        self.create_sql = (
            f"CREATE TABLE IF NOT EXISTS {t} (name TEXT NOT NULL PRIMARY KEY, owner TEXT,"
            " fence BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)"
        )
        self.acquire_sql = (
            f"INSERT INTO {t} AS l (name, owner, fence, expires_at)"
            f" VALUES (%(name)s, %(owner)s, 1, {lease_end})"
            " ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner,"
            f" fence = l.fence + 1, expires_at = {lease_end}"
            " WHERE l.owner IS NULL OR l.expires_at <= clock_timestamp()"
            " RETURNING fence"
        )
        self.release_sql = (
            f"UPDATE {t} SET owner = NULL, expires_at = clock_timestamp()"
            " WHERE name = %(name)s AND owner = %(owner)s AND fence = %(fence)s"
            " AND expires_at > clock_timestamp()"
        )
        self.extend_sql = (
            f"UPDATE {t} SET expires_at = {lease_end}"
            " WHERE name = %(name)s AND owner = %(owner)s AND fence = %(fence)s"
            " AND expires_at > clock_timestamp()"
        )
        self.holder_sql = (
            "SELECT owner, fence, EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8"
            f" FROM {t} WHERE name = %(name)s AND owner IS NOT NULL"
            " AND expires_at > clock_timestamp()"
        )

    def setup(self, conn: Any) -> None:
        import psycopg

        conn.autocommit = True
        ms = str(math.ceil(self.statement_timeout * 1000))
        # Server-side bounds: a statement stuck behind a row lock or a slow server ends
        # with an error instead of waiting forever. (A server that stops answering at
        # all is bounded client-side, see _PgConnection.)
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('lock_timeout', %s, false)",
            (ms, ms),
        )
        # Two sessions creating the table at once: CREATE TABLE IF NOT EXISTS is not atomic
        # in PostgreSQL (the pg_type race); the other session won, which is fine.
        with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            conn.execute(self.create_sql)

    def acquire(self, cur: Any, name: str, owner: str, ttl: float) -> int | None:
        cur.execute(self.acquire_sql, {"name": name, "owner": owner, "ttl": ttl})
        row = cur.fetchone()
        return None if row is None else int(row[0])

    def is_stale(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken) or _has_input(conn.pgconn.socket)

    def check_name(self, name: str) -> None:
        if "\x00" in name:
            raise ValueError("PostgreSQL text cannot contain NUL characters")

    @staticmethod
    def driver_errors() -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)


class MySQLDialect(Dialect):
    """MariaDB >= 10.3 and MySQL >= 5.7, through PyMySQL.

    MySQL has neither ``RETURNING`` nor a ``WHERE`` on ``ON DUPLICATE KEY UPDATE``, so the
    acquire is an upsert whose assignments are each conditional, and it hands the new
    fencing token back through ``LAST_INSERT_ID(expr)``: the server returns that value in
    the statement's OK packet (PyMySQL's ``cursor.lastrowid``), with no second query. The
    classic MySQL sequence idiom. ``LAST_INSERT_ID(0)`` marks "not acquired" (tokens start
    at 1). Release and extend use the same marker, so they do not depend on whether the
    connection reports matched or changed rows.

    ``NOW(6)`` is fixed for the duration of one statement (it is when the statement started,
    and is replicated as such); ``SYSDATE(6)`` is not replication-safe. The session time
    zone is pinned to UTC, so a ``DATETIME(6)`` never meets a daylight-saving shift.
    Names are stored as UTF-8 bytes (``VARBINARY``) so they compare exactly, as in the
    other dialects, not through a case- and trailing-space-insensitive collation.
    """

    name = "mysql"
    MAX_NAME_BYTES = 3072  # InnoDB's largest index key

    def __init__(self, table: str, statement_timeout: float) -> None:
        super().__init__(table, statement_timeout)
        t = self.table
        free = "(owner IS NULL OR expires_at <= NOW(6))"
        lease_end = "NOW(6) + INTERVAL %(ttl_us)s MICROSECOND"
        self.create_sql = (
            f"CREATE TABLE IF NOT EXISTS {t} (name VARBINARY(3072) NOT NULL PRIMARY KEY,"
            " owner VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,"
            " fence BIGINT NOT NULL, expires_at DATETIME(6) NOT NULL) ENGINE=InnoDB"
        )
        # MySQL evaluates these assignments left to right, each seeing the columns already
        # assigned; MariaDB's SIMULTANEOUS_ASSIGNMENT mode makes them all see the old row.
        # Every condition below is right under both: `fence` and `owner` read only columns
        # not yet assigned, and `expires_at` recognises a take-over by the new owner token
        # (fresh for every attempt, so it cannot have been there before) or by the
        # old-row test.
        self.acquire_sql = (
            f"INSERT INTO {t} (name, owner, fence, expires_at)"
            f" VALUES (%(name)s, %(owner)s, LAST_INSERT_ID(1), {lease_end})"
            " ON DUPLICATE KEY UPDATE"
            f" fence = IF({free}, LAST_INSERT_ID(fence + 1), fence + LAST_INSERT_ID(0)),"
            f" owner = IF({free}, %(owner)s, owner),"
            f" expires_at = IF(owner <=> %(owner)s OR {free}, {lease_end}, expires_at)"
        )
        self.release_sql = (
            f"UPDATE {t} SET owner = NULL, expires_at = NOW(6), fence = LAST_INSERT_ID(fence)"
            " WHERE name = %(name)s AND owner = %(owner)s AND fence = %(fence)s"
            " AND expires_at > NOW(6)"
        )
        self.extend_sql = (
            f"UPDATE {t} SET expires_at = {lease_end}, fence = LAST_INSERT_ID(fence)"
            " WHERE name = %(name)s AND owner = %(owner)s AND fence = %(fence)s"
            " AND expires_at > NOW(6)"
        )
        self.holder_sql = (
            "SELECT owner, fence, TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) / 1e6"
            f" FROM {t} WHERE name = %(name)s AND owner IS NOT NULL AND expires_at > NOW(6)"
        )

    def setup(self, conn: Any) -> None:
        conn.autocommit(True)
        cur = conn.cursor()
        try:
            # InnoDB's lock wait bound is whole seconds, at least 1.
            wait = max(1, math.ceil(self.statement_timeout))
            cur.execute(
                f"SET SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = {wait}"
            )
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute(self.create_sql)
        finally:
            cur.close()

    @staticmethod
    def _us(ttl: float) -> int:
        return max(1, round(ttl * 1_000_000))

    def acquire(self, cur: Any, name: str, owner: str, ttl: float) -> int | None:
        params = {"name": name.encode(), "owner": owner, "ttl_us": self._us(ttl)}
        cur.execute(self.acquire_sql, params)
        fence = int(cur.lastrowid or 0)
        return fence or None

    def release(self, cur: Any, name: str, owner: str, fence: int) -> bool:
        cur.execute(self.release_sql, {"name": name.encode(), "owner": owner, "fence": fence})
        return bool(int(cur.lastrowid or 0) == fence)

    def extend(self, cur: Any, name: str, owner: str, fence: int, ttl: float) -> bool:
        params = {"name": name.encode(), "owner": owner, "fence": fence, "ttl_us": self._us(ttl)}
        cur.execute(self.extend_sql, params)
        return bool(int(cur.lastrowid or 0) == fence)

    def holder(self, cur: Any, name: str) -> HolderRow | None:
        cur.execute(self.holder_sql, {"name": name.encode()})
        row = cur.fetchone()
        return None if row is None else (str(row[0]), int(row[1]), float(row[2]))

    def check_name(self, name: str) -> None:
        if len(name.encode()) > self.MAX_NAME_BYTES:
            raise ValueError(f"MySQL lock names are limited to {self.MAX_NAME_BYTES} UTF-8 bytes")

    def is_stale(self, conn: Any) -> bool:
        sock = getattr(conn, "_sock", None)  # PyMySQL has no public accessor
        return not conn.open or sock is None or _has_input(sock.fileno())

    def is_contention(self, exc: BaseException) -> bool:
        # 1213 deadlock, 1205 lock wait timeout: InnoDB rolled our one statement back
        # because another session was taking the same row. Nothing changed; try again.
        args: tuple[object, ...] = exc.args
        return bool(args) and args[0] in (1205, 1213)

    @staticmethod
    def driver_errors() -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.err.MySQLError,)


def _has_input(fd: int) -> bool:
    # An idle connection has nothing to read: readable means the server closed it or sent
    # its dying words (a restart, an idle timeout). redis-py's pool makes the same check.
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


DIALECTS: Mapping[str, type[Dialect]] = {
    "sqlite": SQLiteDialect,
    "postgresql": PostgresDialect,
    "mysql": MySQLDialect,
}
