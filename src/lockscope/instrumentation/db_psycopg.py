"""Target: psycopg 3 (``psycopg.Cursor``/``AsyncCursor`` and their connections).

Wrapped: ``Cursor.execute``/``executemany`` (``Connection.execute`` goes through them),
their asyncio twins, and ``commit``/``rollback``/``close`` of both connection classes.
Identity: system ``postgresql``, namespace ``host:port/dbname`` from ``conn.info``, backend
id ``conn.info.backend_pid`` (known since connect: no round trip).  The open transaction is
``conn.info.transaction_status`` (a libpq call, no round trip).
"""

from __future__ import annotations

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
        return int(conn.info.transaction_status) in _IN_TRANSACTION
    except Exception:
        return False


def _execute(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    conn = instance.connection
    b = db_sessions.statement_begin(conn, identify)
    try:
        return wrapped(*args, **kwargs)
    finally:
        db_sessions.statement_end(b, lambda: in_transaction(conn))


async def _async_execute(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    conn = instance.connection
    b = db_sessions.statement_begin(conn, identify, db_sessions.current_task())
    try:
        return await wrapped(*args, **kwargs)
    finally:
        db_sessions.statement_end(b, lambda: in_transaction(conn))


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
            patcher.wrap(psycopg.Cursor, name, _execute)
            patcher.wrap(psycopg.AsyncCursor, name, _async_execute)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.Connection, name, _done)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.AsyncConnection, name, _async_done)

    patcher.when_imported("psycopg", apply)
