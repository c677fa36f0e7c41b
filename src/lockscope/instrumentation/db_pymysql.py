"""Target: PyMySQL (``pymysql.cursors.Cursor`` and ``pymysql.connections.Connection``).

Wrapped: ``Cursor.execute`` (``executemany`` and the dict/SS cursors go through it) and
``Connection.commit``/``rollback``/``close``.  Identity: system ``mysql``, namespace
``host:port/db`` of the connection, backend id ``thread_id()`` (the server's connection id
from the handshake: no round trip).  The open transaction is the server status flag the
last reply carried.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation.db_wrappers import done_wrapper, statement_method
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "in_transaction", "instrument"]

_SERVER_STATUS_IN_TRANS = 1


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def identify(conn: Any) -> tuple[str, str, int] | None:
    """(``mysql``, ``host:port/db``, connection id) of a PyMySQL connection."""
    thread_id = conn.thread_id()
    if not thread_id:
        return None
    return "mysql", f"{conn.host}:{conn.port}/{_text(conn.db)}", int(thread_id)


def in_transaction(conn: Any) -> bool:
    """Whether the server said, in its last reply, that a transaction is open."""
    return bool((getattr(conn, "server_status", 0) or 0) & _SERVER_STATUS_IN_TRANS)


def _execute(original: Any) -> Any:
    return statement_method(original, identify, in_transaction)


def instrument(patcher: Patcher) -> None:
    """Wrap PyMySQL when it is imported (each module when it is: they import each other)."""

    def cursors(module: Any) -> None:
        patcher.replace(module.Cursor, "execute", _execute)

    def connections(module: Any) -> None:
        for name in ("commit", "rollback", "close"):
            patcher.wrap(module.Connection, name, done_wrapper)

    patcher.when_imported("pymysql.cursors", cursors)
    patcher.when_imported("pymysql.connections", connections)
