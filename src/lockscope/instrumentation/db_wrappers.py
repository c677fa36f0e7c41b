"""The wrappers the database driver targets install, built from the two things a driver
target knows: how to identify a connection's session (``identify``) and whether its
transaction is open (``in_transaction``); see :mod:`.db_sessions` for what they bind.

Statement methods are replaced by plain functions, not wrapt proxies: they run on every
statement (see :meth:`.patching.Patcher.replace`).  The synchronous one is the hot path
the overhead target is about (a loopback ``SELECT 1``): it makes two calls besides the
statement, :func:`.db_sessions.statement_begin` and ``statement_end``.  The asyncio one
shares its ending with it through :class:`_Running`, one small object per statement on a
path where the event loop's own hand-offs cost far more.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from types import TracebackType
from typing import Any

from lockscope.instrumentation.db_sessions import (
    Binding,
    Identify,
    connection_done,
    current_task,
    statement_begin,
    statement_end,
    statement_raised,
)

__all__ = ["async_done_wrapper", "async_statement_method", "done_wrapper", "statement_method"]

InTransaction = Callable[[Any], bool]


def _itself(obj: Any) -> Any:
    return obj


def _connection_of(connection: str | None) -> Callable[[Any], Any]:
    """How to get the connection from the object whose method runs the statement: its
    attribute ``connection`` (``"connection"`` for DB-API cursors, ``"_conn"`` where that
    is a property, ``"_connection"`` for asyncpg's statements), or the object itself
    (``None``: a connection's own method)."""
    return operator.attrgetter(connection) if connection else _itself


class _Running:
    """One statement's end, as a context manager (see the module docstring)."""

    __slots__ = ("b", "conn", "in_transaction")

    def __init__(self, b: Binding | None, conn: Any, in_transaction: InTransaction) -> None:
        self.b, self.conn, self.in_transaction = b, conn, in_transaction

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        b = self.b
        if b is not None:
            if exc is None:
                statement_end(b, self.in_transaction, self.conn)
            else:
                statement_raised(b, exc, self.in_transaction, self.conn)


def statement_method(
    original: Callable[..., Any],
    identify: Identify,
    in_transaction: InTransaction,
    *,
    connection: str | None = "connection",
) -> Callable[..., Any]:
    """``original``, a method that runs a statement, with the connection's session bound
    to the calling thread while the statement runs and while its transaction stays open.

    ``connection`` names the attribute of ``self`` that is the connection (see
    :func:`_connection_of`; ``None`` when ``self`` is the connection)."""
    conn_of = _connection_of(connection)

    @functools.wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = conn_of(self)
        b = statement_begin(conn, identify) if conn is not None else None
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            if b is not None:
                statement_raised(b, exc, in_transaction, conn)
            raise
        if b is not None:
            statement_end(b, in_transaction, conn)
        return result

    return run


def async_statement_method(
    original: Callable[..., Any],
    identify: Identify,
    in_transaction: InTransaction,
    *,
    connection: str | None = "connection",
) -> Callable[..., Any]:
    """The asyncio flavour of :func:`statement_method`: the session is bound to the
    current task."""
    conn_of = _connection_of(connection)

    @functools.wraps(original)
    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = conn_of(self)
        b = statement_begin(conn, identify, current_task()) if conn is not None else None
        with _Running(b, conn, in_transaction):
            return await original(self, *args, **kwargs)

    return run


def done_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A wrapt wrapper for a connection's ``commit``/``rollback``/``close``: afterwards
    (failed or not) its transaction is over."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        connection_done(instance)


async def async_done_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """The asyncio flavour of :func:`done_wrapper`."""
    try:
        return await wrapped(*args, **kwargs)
    finally:
        connection_done(instance)
