"""Target: psycopg 3 (``psycopg.Cursor``/``AsyncCursor`` and their connections).

Wrapped: ``Cursor.execute``/``executemany`` (``Connection.execute`` goes through them),
their asyncio twins, and ``commit``/``rollback``/``close`` of both connection classes.
Identity: system ``postgresql``, namespace ``host:port/dbname`` from ``conn.info``, backend
id ``conn.info.backend_pid`` (known since connect: no round trip).  The open transaction is
``conn.info.transaction_status`` (a libpq call, no round trip).
"""

from __future__ import annotations

import functools
from typing import Any

from lockscope.instrumentation import db_sessions
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "in_transaction", "instrument"]

_IN_TRANSACTION = (2, 3)  # libpq PQTRANS_INTRANS, PQTRANS_INERROR


def identify(conn: Any) -> tuple[str, str, int] | None:
    """(``postgresql``, ``host:port/db``, backend pid) of a psycopg connection."""
    info = conn.info
    pid = info.backend_pid
    if not pid:
        return None
    return "postgresql", f"{info.host}:{info.port}/{info.dbname}", int(pid)


def in_transaction(conn: Any) -> bool:
    """Whether the connection's transaction is open (or failed and not yet rolled back)."""
    try:
        # pgconn directly: conn.info builds a new ConnectionInfo object on every access.
        return int(conn.pgconn.transaction_status) in _IN_TRANSACTION
    except Exception:
        return False


def _sync_execute(original: Any) -> Any:
    # A plain function, not a wrapt proxy: this runs on every statement (see Patcher.replace).
    @functools.wraps(original)
    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self.connection
        b = db_sessions.statement_begin(conn, identify)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            db_sessions.statement_failed(b, exc)
            db_sessions.statement_end(b, in_transaction, conn)
            raise
        db_sessions.statement_end(b, in_transaction, conn)
        return result

    return execute


def _async_execute(original: Any) -> Any:
    @functools.wraps(original)
    async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self.connection
        b = db_sessions.statement_begin(conn, identify, db_sessions.current_task())
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            db_sessions.statement_failed(b, exc)
            db_sessions.statement_end(b, in_transaction, conn)
            raise
        db_sessions.statement_end(b, in_transaction, conn)
        return result

    return execute


def _done(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        db_sessions.connection_done(instance)


async def _async_done(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        db_sessions.connection_done(instance)


def instrument(patcher: Patcher) -> None:
    """Wrap psycopg 3 when it is imported."""

    def apply(psycopg: Any) -> None:
        for name in ("execute", "executemany"):
            patcher.replace(psycopg.Cursor, name, _sync_execute)
            patcher.replace(psycopg.AsyncCursor, name, _async_execute)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.Connection, name, _done)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.AsyncConnection, name, _async_done)

    patcher.when_imported("psycopg", apply)
