"""The pool targets' checkout and return, as plain functions on the pool's class.

A pool checkout is the hottest lock-like call an app makes, and one of the cheapest bare
(SQLAlchemy's ``QueuePool._do_get`` from its queue is ~50 Python calls with the return):
a wrapt proxy and five helper frames around it doubled that.  As for redis-py's and
kazoo's locks (:mod:`.plain`), the methods are replaced on the class (:meth:`Patcher.replace
<lockscope.instrumentation.patching.Patcher.replace>`) by functions that call the original
directly, with :func:`.operations.start`, :meth:`.Acquire.done` and :func:`.held.released`
inlined for the common case: the same records in fewer calls.  A pool adapter has no
fencing token, owner or lease (:meth:`Adapter.hold_fields` is the base one), so none is
read.  The connection is the hold's key in :attr:`PoolAdapter.holds`, as before.
"""

from __future__ import annotations

import functools
import threading
from asyncio import _get_running_loop, current_task
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import runtime
from lockscope.instrumentation.acquire import Acquire
from lockscope.instrumentation.adapters import (
    SUPPRESSED,
    SUPPRESSED_PLAIN,
    context_get,
    exc_outcome,
    failed,
    on_behalf,
)
from lockscope.instrumentation.guards import nested
from lockscope.instrumentation.held import released

__all__ = ["plain_async_checkout", "plain_async_return", "plain_checkout", "plain_return"]

_get_ident = threading.get_ident
Maker = Callable[[Callable[..., Any]], Callable[..., Any]]


def _begin(adapter: Any, pool: Any, task: Any) -> Acquire | None:
    """The checkout's :class:`Acquire` (``task`` ``None``: this thread, or the task it
    runs a blocking call for), ``None`` when not recorded; errors swallowed."""
    shim = runtime.current
    if shim is None:
        return None
    try:
        context = context_get()
        if context.get(SUPPRESSED) or context.get(SUPPRESSED_PLAIN):
            return None
        info = adapter.info(pool)
        if info is None:
            return None
        if task is None and on_behalf:
            task = on_behalf.get(_get_ident())
        return Acquire(shim, adapter, pool, info, task)
    except Exception:
        failed()
        return None


def _checked_out(adapter: Any, op: Acquire, conn: Any) -> None:
    """:meth:`Acquire.done` ``("acquired")`` inlined, the hold filed under ``conn``."""
    try:
        hold = op.shim.recorder.end_wait(op, "acquired", token=None, owner=None, ttl=None)
        if op.span is not None:
            op.end_span(hold, "acquired", None, None)
        if hold is not None:
            adapter.holds[id(conn)] = hold
            if adapter.watches_holds:
                adapter.on_hold(op.target, hold)
    except Exception:
        failed()


def _returned(adapter: Any, pool: Any, conn: Any) -> None:
    """The hold of ``conn`` ends (:func:`.held.released` when it has a span)."""
    try:
        hold = adapter.holds.pop(id(conn), None)
        if hold is None:
            return
        shim = runtime.current
        if hold.span is not None or shim is None:
            released(adapter, pool, hold, None)
        else:
            shim.recorder.end_hold(hold, "released")
    except Exception:
        failed()


def plain_checkout(adapter: Any, *, guarded: bool = False) -> Maker:
    """For :meth:`Patcher.replace`: a blocking checkout returning the connection;
    ``guarded``: a checkout that calls itself (SQLAlchemy's ``_do_get`` after a lost race
    for an overflow slot) is one checkout, the nested-lock guard of :mod:`.guards` built in."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def checkout(self: Any, *args: Any, **kwargs: Any) -> Any:
            op = _begin(adapter, self, None if _get_running_loop() is None else current_task())
            if op is None:
                return original(self, *args, **kwargs)
            try:
                result = original(self, *args, **kwargs)
            except BaseException as exc:
                op.raised(exc)
                raise
            _checked_out(adapter, op, result)
            return result

        def guarded_checkout(self: Any, *args: Any, **kwargs: Any) -> Any:
            if nested.get():
                return original(self, *args, **kwargs)
            guard = nested.set(True)
            try:
                return checkout(self, *args, **kwargs)
            finally:
                nested.reset(guard)

        return functools.wraps(original)(guarded_checkout if guarded else checkout)

    return make


def plain_async_checkout(adapter: Any) -> Maker:
    """The asyncio flavour of :func:`plain_checkout` (the actor is the current task)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def checkout(self: Any, *args: Any, **kwargs: Any) -> Any:
            op = _begin(adapter, self, current_task())
            if op is None:
                return await original(self, *args, **kwargs)
            try:
                result = await original(self, *args, **kwargs)
            except BaseException as exc:
                op.done(exc_outcome(adapter, exc), exc)
                raise
            _checked_out(adapter, op, result)
            return result

        return functools.wraps(original)(checkout)

    return make


def plain_return(adapter: Any) -> Maker:
    """For :meth:`Patcher.replace`: a return of the connection passed first."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def putback(self: Any, *args: Any, **kwargs: Any) -> Any:
            if adapter.holds and args:
                _returned(adapter, self, args[0])
            return original(self, *args, **kwargs)

        return functools.wraps(original)(putback)

    return make


def plain_async_return(adapter: Any) -> Maker:
    """The asyncio flavour of :func:`plain_return`."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def putback(self: Any, *args: Any, **kwargs: Any) -> Any:
            if adapter.holds and args:
                _returned(adapter, self, args[0])
            return await original(self, *args, **kwargs)

        return functools.wraps(original)(putback)

    return make
