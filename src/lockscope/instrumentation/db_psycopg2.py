"""Target: psycopg2.

psycopg2's connection and cursor are C types whose methods cannot be wrapped in place, so
``psycopg2.connect`` is wrapped to pass a ``connection_factory`` (a subclass of
``psycopg2.extensions.connection``, so ``isinstance`` checks hold) whose cursors subclass
the requested cursor class (``RealDictCursor`` included) with instrumented
``execute``/``executemany``/``callproc``.  A ``connect`` given its own
``connection_factory`` is left alone.  Identity: system ``postgresql``, namespace
``host:port/dbname`` and backend id from ``conn.info`` (no round trip).
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import db_sessions, operations
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "instrument"]

_IN_TRANSACTION = (2, 3)  # TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR


def identify(conn: Any) -> tuple[str, str, int] | None:
    """(``postgresql``, ``host:port/db``, backend pid) of a psycopg2 connection."""
    info = conn.info
    pid = info.backend_pid
    if not pid:
        return None
    return "postgresql", f"{info.host}:{info.port}/{info.dbname}", int(pid)


def _in_transaction(conn: Any) -> bool:
    try:
        return conn.info.transaction_status in _IN_TRANSACTION
    except Exception:
        return False


def _classes(extensions: Any) -> tuple[type, Any]:
    cursors: dict[type, type] = {}

    class _Mixin:
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            conn = self.connection  # type: ignore[attr-defined]
            b = db_sessions.statement_begin(conn, identify)
            try:
                result = super().execute(*args, **kwargs)  # type: ignore[misc]
            except BaseException as exc:
                db_sessions.statement_failed(b, exc)
                db_sessions.statement_end(b, _in_transaction, conn)
                raise
            db_sessions.statement_end(b, _in_transaction, conn)
            return result

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            conn = self.connection  # type: ignore[attr-defined]
            b = db_sessions.statement_begin(conn, identify)
            try:
                result = super().executemany(*args, **kwargs)  # type: ignore[misc]
            except BaseException as exc:
                db_sessions.statement_failed(b, exc)
                db_sessions.statement_end(b, _in_transaction, conn)
                raise
            db_sessions.statement_end(b, _in_transaction, conn)
            return result

        def callproc(self, *args: Any, **kwargs: Any) -> Any:
            conn = self.connection  # type: ignore[attr-defined]
            b = db_sessions.statement_begin(conn, identify)
            try:
                result = super().callproc(*args, **kwargs)  # type: ignore[misc]
            except BaseException as exc:
                db_sessions.statement_failed(b, exc)
                db_sessions.statement_end(b, _in_transaction, conn)
                raise
            db_sessions.statement_end(b, _in_transaction, conn)
            return result

    def cursor_class(base: type) -> type:
        klass = cursors.get(base)
        if klass is None:
            klass = cursors[base] = type(base.__name__, (_Mixin, base), {})
        return klass

    class Connection(extensions.connection):  # type: ignore[misc]
        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            try:
                factory = kwargs.get("cursor_factory") or self.cursor_factory
                kwargs["cursor_factory"] = cursor_class(factory or extensions.cursor)
            except Exception:
                operations.failed()
            return super().cursor(*args, **kwargs)

        def commit(self) -> Any:
            try:
                return super().commit()
            finally:
                db_sessions.connection_done(self)

        def rollback(self) -> Any:
            try:
                return super().rollback()
            finally:
                db_sessions.connection_done(self)

    return Connection, cursor_class


def instrument(patcher: Patcher) -> None:
    """Wrap ``psycopg2.connect`` when psycopg2 is imported."""

    def apply(psycopg2: Any) -> None:
        connection_class, _ = _classes(psycopg2.extensions)

        def connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if kwargs.get("connection_factory") is None:
                kwargs["connection_factory"] = connection_class
            return wrapped(*args, **kwargs)

        patcher.wrap(psycopg2, "connect", connect)

    patcher.when_imported("psycopg2", apply)
