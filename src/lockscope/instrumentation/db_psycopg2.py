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
from lockscope.instrumentation.db_psycopg import identify
from lockscope.instrumentation.db_wrappers import statement_method
from lockscope.instrumentation.patching import Patcher

__all__ = ["identify", "instrument"]

_IN_TRANSACTION = (2, 3)  # TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR
_STATEMENT_METHODS = ("execute", "executemany", "callproc")


def _in_transaction(conn: Any) -> bool:
    try:
        return conn.info.transaction_status in _IN_TRANSACTION
    except Exception:
        return False


def _classes(extensions: Any) -> tuple[type, Any]:
    cursors: dict[type, type] = {}

    def cursor_class(base: type) -> type:
        klass = cursors.get(base)
        if klass is None:
            methods = {
                name: statement_method(getattr(base, name), identify, _in_transaction)
                for name in _STATEMENT_METHODS
            }
            klass = cursors[base] = type(base.__name__, (base,), methods)
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
