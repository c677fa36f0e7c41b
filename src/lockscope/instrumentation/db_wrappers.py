"""The wrappers the database driver targets install, built from the two things a driver
target knows: how to identify a connection's session (``identify``) and whether its
transaction is open (``in_transaction``); see :mod:`.db_sessions` for what they bind.

Statement methods are replaced by plain functions, not wrapt proxies: they run on every
statement (see :meth:`.patching.Patcher.replace`), and an uncontended statement should
pay no more than an uncontended lock.  So the function is generated from one source text
(:data:`_TEMPLATE`, compiled once per wrapped method, like :mod:`dataclasses` does): the
synchronous and the asyncio flavour differ only in ``async``/``await`` and the actor, the
connection is read as a plain attribute (``self.connection``, ``self._conn``, ...), and
the binding's update is inlined, leaving two calls per statement besides the statement
itself: the suppression check's context read and the driver's ``in_transaction``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import adapters, db_sessions, operations, runtime
from lockscope.instrumentation.db_sessions import Identify, connection_done

__all__ = ["async_done_wrapper", "done_wrapper", "statement_method"]

InTransaction = Callable[[Any], bool]

_TEMPLATE = """
{async_}def run(self, *args, **kwargs):
    conn = {conn}
    b = None
    if runtime.current is not None and conn is not None:
        try:
            c = context_get()
            if not (c.get(SUPPRESSED) or c.get(SUPPRESSED_PLAIN)):
                b = getattr(conn, ATTR, None) or binding(conn, identify)
                if b is not None:
                    {task}
                    if b.actor != actor or b not in active:
                        b.gen += 1
                        if b.hold is not None:
                            drop_hold(b)
                        b.actor = actor
                        b.task = task
                        b.start = perf_counter_ns()
                        active.add(b)
        except Exception:
            b = None
            failed()
    try:
        if kwargs:
            result = {await_}original(self, *args, **kwargs)
        else:
            result = {await_}original(self, *args)
    except BaseException as exc:
        if b is not None:
            statement_raised(b, exc, in_transaction, conn)
        raise
    if b is not None:
        try:
            if not in_transaction(conn):
                b.gen += 1
                active.discard(b)
                if b.hold is not None:
                    drop_hold(b)
        except Exception:
            failed()
    return result
"""
"""A statement method: the connection's session is bound to the actor (thread or task)
while the statement runs and while its transaction stays open; the shim's own failures
are counted (:func:`.operations.failed`), never raised into the app."""

_SYNC_ACTOR = "task = None; actor = get_ident()"
_ASYNC_ACTOR = "task = current_task(); actor = get_ident() if task is None else id(task)"

_NAMES: dict[str, Any] = {
    "runtime": runtime,
    "context_get": adapters.context_get,
    "SUPPRESSED": adapters.SUPPRESSED,
    "SUPPRESSED_PLAIN": adapters.SUPPRESSED_PLAIN,
    "ATTR": db_sessions.ATTR,
    "binding": db_sessions.binding,
    "active": db_sessions.active,
    "drop_hold": db_sessions.drop_hold,
    "statement_raised": db_sessions.statement_raised,
    "current_task": db_sessions.current_task,
    "failed": operations.failed,
    "get_ident": threading.get_ident,
    "perf_counter_ns": time.perf_counter_ns,
}


def statement_method(
    original: Callable[..., Any],
    identify: Identify,
    in_transaction: InTransaction,
    *,
    connection: str | None = "connection",
    asynchronous: bool = False,
) -> Callable[..., Any]:
    """``original``, a method that runs a statement, with the connection's session bound
    to the calling actor while the statement runs and while its transaction stays open.

    ``connection`` names the attribute of ``self`` that is the connection
    (``"connection"`` for DB-API cursors, ``"_conn"`` where that is a property,
    ``"_connection"`` for asyncpg's statements), or ``None`` when ``self`` is the
    connection.  ``asynchronous``: ``original`` is a coroutine function, and the actor
    is the current task (the thread where none runs)."""
    if connection is not None and not connection.isidentifier():
        raise ValueError(f"not an attribute name: {connection!r}")
    source = _TEMPLATE.format(
        async_="async " if asynchronous else "",
        await_="await " if asynchronous else "",
        conn="self" if connection is None else f"self.{connection}",
        task=_ASYNC_ACTOR if asynchronous else _SYNC_ACTOR,
    )
    scope = dict(_NAMES, original=original, identify=identify, in_transaction=in_transaction)
    exec(compile(source, f"<lockscope statement wrapper of {original!r}>", "exec"), scope)
    run: Callable[..., Any] = scope["run"]
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        with contextlib.suppress(AttributeError, TypeError):
            setattr(run, attr, getattr(original, attr))
    run.__wrapped__ = original  # type: ignore[attr-defined]
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
