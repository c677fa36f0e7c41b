"""Target: psycopg 3 (``psycopg.Cursor``/``AsyncCursor`` and their connections).

Wrapped: ``Cursor.execute``/``executemany`` (``Connection.execute`` goes through them),
the server-side (named) cursors' own ``execute``/``executemany`` (``ServerCursor``, which
sends ``DECLARE``), their asyncio twins, and ``commit``/``rollback``/``close`` of both
connection classes.  A server-side cursor's later ``fetch*``/iteration needs no wrapper:
without ``WITH HOLD`` it lives in an open transaction, which keeps the session bound to the
actor; with ``WITH HOLD`` in autocommit the server runs the whole query in ``execute``.
Identity: system ``postgresql``, namespace ``host:port/dbname`` from ``conn.info``, backend
id ``conn.info.backend_pid`` (known since connect: no round trip).  The open transaction is
``conn.info.transaction_status`` (a libpq call, no round trip).
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation.db_wrappers import (
    async_done_wrapper,
    done_wrapper,
    statement_method,
)
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "in_transaction", "instrument"]


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
        status: int = conn.pgconn.transaction_status
        return 2 <= status <= 3  # libpq PQTRANS_INTRANS, PQTRANS_INERROR
    except Exception:
        return False


_CONN = "connection"
"""The cursor attribute that is its connection: ``_conn`` where ``Cursor.connection`` is
the property returning it (a Python call saved per statement), checked at import."""


def _sync_execute(original: Any) -> Any:
    return statement_method(original, identify, in_transaction, connection=_CONN)


def _async_execute(original: Any) -> Any:
    return statement_method(original, identify, in_transaction, connection=_CONN, asynchronous=True)


def _connection_attribute(cursor_class: Any) -> str:
    prop = None
    for klass in cursor_class.__mro__:
        prop = vars(klass).get("connection")
        if prop is not None:
            break
    fget = getattr(prop, "fget", None)
    names = getattr(getattr(fget, "__code__", None), "co_names", ())
    return "_conn" if names == ("_conn",) else "connection"


def instrument(patcher: Patcher) -> None:
    """Wrap psycopg 3 when it is imported."""

    def apply(psycopg: Any) -> None:
        global _CONN
        _CONN = _connection_attribute(psycopg.Cursor)
        for name in ("execute", "executemany"):
            patcher.replace(psycopg.Cursor, name, _sync_execute)
            patcher.replace(psycopg.AsyncCursor, name, _async_execute)
            # Server-side cursors override both (DECLARE ... CURSOR FOR ...).
            for klass, make in (
                (getattr(psycopg, "ServerCursor", None), _sync_execute),
                (getattr(psycopg, "AsyncServerCursor", None), _async_execute),
            ):
                if klass is not None and name in vars(klass):
                    patcher.replace(klass, name, make)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.Connection, name, done_wrapper)
        for name in ("commit", "rollback", "close"):
            patcher.wrap(psycopg.AsyncConnection, name, async_done_wrapper)

    patcher.when_imported("psycopg", apply)
