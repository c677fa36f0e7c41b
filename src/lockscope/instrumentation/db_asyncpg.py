"""Target: asyncpg (``asyncpg.connection.Connection``).

Wrapped: ``execute``, ``executemany``, ``fetch``, ``fetchrow``, ``fetchval``, ``prepare``
(a transaction's ``BEGIN``/``COMMIT`` go through ``execute``) and ``close``; and the
prepared statements' (``asyncpg.prepared_stmt.PreparedStatement``) ``fetch``,
``fetchrow``, ``fetchval``, ``fetchmany``, ``executemany`` and ``explain``, on the
statement's connection.  ``conn.cursor()`` (and a prepared statement's ``cursor()``) needs
no wrapper: asyncpg runs cursors only inside a transaction, whose ``BEGIN`` went through
``execute`` and keeps the session bound to the task until ``COMMIT``/``ROLLBACK``.  Identity: system
``postgresql``, namespace ``host:port/database`` of the connection, backend id
``get_server_pid()`` (from the start-up messages: no round trip).  The open transaction is
``is_in_transaction()`` (protocol state, no round trip).
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation.db_wrappers import async_done_wrapper, statement_method
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "instrument"]


def identify(conn: Any) -> tuple[str, str, int] | None:
    """(``postgresql``, ``host:port/db``, backend pid) of an asyncpg connection."""
    pid = conn.get_server_pid()
    if not pid:
        return None
    addr = getattr(conn, "_addr", None)
    params = getattr(conn, "_params", None)
    dbname = getattr(params, "database", "") or ""
    where = f"{addr}:5432"
    if isinstance(addr, tuple) and len(addr) >= 2:
        where = f"{addr[0]}:{addr[1]}"
    return "postgresql", f"{where}/{dbname}", int(pid)


def _in_transaction(conn: Any) -> bool:
    return bool(conn.is_in_transaction())


def _call(original: Any) -> Any:
    return statement_method(original, identify, _in_transaction, connection=None, asynchronous=True)


def _statement_call(original: Any) -> Any:
    return statement_method(
        original, identify, _in_transaction, connection="_connection", asynchronous=True
    )


_STATEMENT_METHODS = ("fetch", "fetchrow", "fetchval", "fetchmany", "executemany", "explain")


def instrument(patcher: Patcher) -> None:
    """Wrap asyncpg when it is imported."""

    def apply(connection: Any) -> None:
        for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare"):
            patcher.replace(connection.Connection, name, _call)
        patcher.wrap(connection.Connection, "close", async_done_wrapper)

    def statements(prepared_stmt: Any) -> None:
        for name in _STATEMENT_METHODS:
            if name in vars(prepared_stmt.PreparedStatement):
                patcher.replace(prepared_stmt.PreparedStatement, name, _statement_call)

    patcher.when_imported("asyncpg.connection", apply)
    patcher.when_imported("asyncpg.prepared_stmt", statements)
