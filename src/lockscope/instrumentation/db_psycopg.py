"""Target: psycopg 3 (``psycopg.Cursor``/``AsyncCursor`` and their connections).

Wrapped: ``Cursor.execute``/``executemany`` (``Connection.execute`` goes through them),
their asyncio twins, and ``commit``/``rollback``/``close`` of both connection classes.
Identity: system ``postgresql``, namespace ``host:port/dbname`` from ``conn.info``, backend
id ``conn.info.backend_pid`` (known since connect: no round trip).  The open transaction is
``conn.info.transaction_status`` (a libpq call, no round trip).
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation.db_wrappers import (
    async_done_wrapper,
    async_statement_method,
    done_wrapper,
    statement_method,
)
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "in_transaction", "instrument"]

_IN_TRANSACTION = (2, 3)  # libpq PQTRANS_INTRANS, PQTRANS_INERROR


def identify(conn: Any) -> tuple[str, str, int] | None:
    """(``postgresql``, ``host:port/db``, backend pid) of a psycopg 3 or psycopg2 connection
    (their ``conn.info`` have the same fields)."""
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
    return statement_method(original, identify, in_transaction)


def _async_execute(original: Any) -> Any:
    return async_statement_method(original, identify, in_transaction)


def instrument(patcher: Patcher) -> None:
    """Wrap psycopg 3 when it is imported."""

    def apply(psycopg: Any) -> None:
        for name in ("execute", "executemany"):
            patcher.replace(psycopg.Cursor, name, _sync_execute)
            patcher.replace(psycopg.AsyncCursor, name, _async_execute)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.Connection, name, done_wrapper)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.AsyncConnection, name, async_done_wrapper)

    patcher.when_imported("psycopg", apply)
