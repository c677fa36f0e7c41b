"""Target: psycopg2.

psycopg2's connection and cursor are C types whose methods cannot be wrapped in place, so
``psycopg2.connect`` is wrapped to pass a ``connection_factory``: a subclass of the one
asked for (``psycopg2.extensions.connection`` by default, or the app's own: ``DictConnection``,
``LoggingConnection``, a custom subclass), so ``isinstance`` checks and the app's overrides
hold.  The instrumented layer sits *after* the app's class in the method order: the app's
``cursor()`` picks its cursor class (``DictConnection`` picks ``DictCursor``) and then ours
subclasses that class (``RealDictCursor``, named server-side cursors included) with
instrumented ``execute``/``executemany``/``callproc``.  A ``connection_factory`` that is
not a connection class (any other callable) is left alone.  Identity: system
``postgresql``, namespace ``host:port/dbname`` and backend id from ``conn.info`` (no round
trip).
"""

from __future__ import annotations

from collections.abc import Callable
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
        # A C method: conn.info would build a ConnectionInfo object per statement.
        return conn.get_transaction_status() in _IN_TRANSACTION
    except Exception:
        return False


def _classes(extensions: Any) -> tuple[Callable[[Any], Any], Any]:
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

    made: dict[type, type] = {extensions.connection: Connection}

    def connection_class(factory: Any) -> Any:
        """The instrumented class for ``factory`` (itself if it is no connection class)."""
        klass = made.get(factory)
        if klass is not None:
            return klass
        if not isinstance(factory, type) or not issubclass(factory, extensions.connection):
            return factory
        if issubclass(factory, Connection):
            return factory
        klass = type(factory.__name__, (factory, Connection), {"__module__": factory.__module__})
        made[factory] = klass
        return klass

    return connection_class, cursor_class


def instrument(patcher: Patcher) -> None:
    """Wrap ``psycopg2.connect`` when psycopg2 is imported."""

    def apply(psycopg2: Any) -> None:
        connection_class, _ = _classes(psycopg2.extensions)
        default = connection_class(psycopg2.extensions.connection)

        def connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            try:
                if len(args) >= 2:  # connect(dsn, connection_factory, ...)
                    args = (args[0], connection_class(args[1]) or default, *args[2:])
                else:
                    factory = kwargs.get("connection_factory")
                    kwargs["connection_factory"] = (
                        default if factory is None else connection_class(factory)
                    )
            except Exception:
                operations.failed()
            return wrapped(*args, **kwargs)

        patcher.wrap(psycopg2, "connect", connect)

    patcher.when_imported("psycopg2", apply)
