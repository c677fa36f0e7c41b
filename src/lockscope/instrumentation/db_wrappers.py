"""The wrappers the database driver targets install, built from the two things a driver
target knows: how to identify a connection's session (``identify``) and whether its
transaction is open (``in_transaction``); see :mod:`.db_sessions` for what they bind.

Statement methods are replaced by plain functions, not wrapt proxies: they run on every
statement (see :meth:`.patching.Patcher.replace`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation.db_sessions import (
    Identify,
    connection_done,
    current_task,
    statement_begin,
    statement_end,
    statement_failed,
)

__all__ = ["async_done_wrapper", "async_statement_method", "done_wrapper", "statement_method"]

InTransaction = Callable[[Any], bool]


def statement_method(
    original: Callable[..., Any],
    identify: Identify,
    in_transaction: InTransaction,
    *,
    on_cursor: bool = True,
) -> Callable[..., Any]:
    """``original``, a method that runs a statement (a cursor's ``execute``..., or the
    connection's own with ``on_cursor=False``), with the connection's session bound to
    the calling thread while the statement runs and while its transaction stays open."""

    @functools.wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self.connection if on_cursor else self
        b = statement_begin(conn, identify) if conn is not None else None
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            statement_failed(b, exc)
            statement_end(b, in_transaction, conn)
            raise
        statement_end(b, in_transaction, conn)
        return result

    return run


def async_statement_method(
    original: Callable[..., Any],
    identify: Identify,
    in_transaction: InTransaction,
    *,
    on_cursor: bool = True,
) -> Callable[..., Any]:
    """The asyncio flavour of :func:`statement_method`: the session is bound to the
    current task."""

    @functools.wraps(original)
    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self.connection if on_cursor else self
        b = statement_begin(conn, identify, current_task()) if conn is not None else None
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            statement_failed(b, exc)
            statement_end(b, in_transaction, conn)
            raise
        statement_end(b, in_transaction, conn)
        return result

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
