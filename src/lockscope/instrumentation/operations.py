"""The generic lock-call wrappers every target shares: acquire, release, extend.

The API targets use (stable; new targets build on it)
------------------------------------------------------
Describe the library with an :class:`Adapter` (see :mod:`.adapters`), then wrap its
methods (``patcher.wrap(cls, "acquire", acquire_wrapper(adapter))``):

- :func:`acquire_wrapper` / :func:`async_acquire_wrapper`: an acquire-like call;
- :func:`release_wrapper` / :func:`async_release_wrapper`: a release (ends the hold;
  ``lost`` when :meth:`Adapter.is_lost` says so);
- :func:`extend_wrapper` / :func:`async_extend_wrapper`: a lease extension;
- :func:`guarded` / :func:`async_guarded` around any of them: a lock built on another
  lock is recorded once, as the outer one (:func:`unguarded`/:func:`reguard` to leave the
  guard while user code runs inside).

For a call shape the wrappers do not fit (an election's ``run``, a pool's checkout),
drive the same algorithm by hand: ``op = begin(adapter, instance, args, kwargs, task)``
(or ``start(adapter, instance, info, task)`` with a LockInfo of your own); then
``hold = op.done(outcome, exc)`` when the call ends; later ``released(adapter, instance,
hold, exc)``.  :func:`find_hold` finds the hold a release ends.  Every function here
checks nothing about suppression itself: test :data:`fast_enabled` first, as the
wrappers do, and call :func:`failed` for an error of your own (never let it reach the app).

Where the parts live
--------------------
One algorithm: :mod:`.acquire` (the operation in flight, :class:`~.acquire.Acquire`, which
is also the registry's wait), :mod:`.held` (release and extend), :mod:`.guards` (the
nested-lock guard); :mod:`.drivers` writes the wrappers around them (sync and asyncio, wrapt
and plain functions, from one body).  This module is the API targets import.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import runtime
from lockscope.instrumentation.acquire import Acquire, enter
from lockscope.instrumentation.adapters import (
    Adapter,
    exc_outcome,
    failed,
    fast_enabled,
    forget,
    is_instrumentation_enabled,
    lock_info,
    on_behalf,
    skip,
    suppression_keys,
    sync_task,
)
from lockscope.instrumentation.drivers import acquire_driver, held_driver
from lockscope.instrumentation.guards import Wrapper, async_guarded, guarded, reguard, unguarded
from lockscope.instrumentation.held import Extension, after_extend, find_hold, released
from lockscope.instrumentation.recorder import LockInfo

__all__ = [
    "Adapter",
    "Wrapper",
    "acquire_wrapper",
    "async_acquire_wrapper",
    "async_extend_wrapper",
    "async_guarded",
    "async_release_wrapper",
    "begin",
    "call_waiting",
    "exc_outcome",
    "extend_wrapper",
    "failed",
    "fast_enabled",
    "find_hold",
    "forget",
    "guarded",
    "is_instrumentation_enabled",
    "lock_info",
    "on_behalf",
    "reguard",
    "release_wrapper",
    "released",
    "skip",
    "start",
    "suppression_keys",
    "sync_task",
    "unguarded",
]

_get_ident = threading.get_ident


def begin(adapter: Adapter, instance: Any, args: Any, kwargs: Any, task: Any) -> Acquire | None:
    """Begin recording an acquire on ``instance`` by ``task`` (``None``: the current
    thread, or the task it runs a blocking call for); ``None`` when not recorded."""
    shim = runtime.current
    if shim is None:
        return None
    info = lock_info(adapter, instance)
    if info is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    return Acquire(shim, adapter, instance, info, task, args, kwargs)


def start(adapter: Adapter, instance: Any, info: LockInfo, task: Any) -> Acquire | None:
    """Begin recording an acquire of ``info`` by ``instance`` (a target that keeps its own
    LockInfo, e.g. one per mode); ``None`` when the shim is off."""
    shim = runtime.current
    if shim is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    return Acquire(shim, adapter, instance, info, task)


def call_waiting(op: Acquire, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run the acquire-like call that ``op`` (from :func:`start`) records; if it raises,
    ``op`` ends with that exception's outcome.  For targets that read the result
    themselves (a pool's checkout, a mode of a reader-writer lock)."""
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        op.raised(exc)
        raise


def acquire_wrapper(adapter: Adapter) -> Wrapper:
    """A wrapt wrapper for a blocking ``acquire``-like method."""
    return acquire_driver(adapter, None, plain=False, asyncio_=False)


def async_acquire_wrapper(adapter: Adapter) -> Wrapper:
    """The asyncio flavour of :func:`acquire_wrapper` (the actor is the current task)."""
    return acquire_driver(adapter, None, plain=False, asyncio_=True)


def release_wrapper(adapter: Adapter) -> Wrapper:
    """A wrapt wrapper for ``release``: ends the hold (``lost`` on a lost-lock error); the
    hold's span is current around the call."""
    return held_driver(adapter, None, None, plain=False, asyncio_=False)


def async_release_wrapper(adapter: Adapter) -> Wrapper:
    """The asyncio flavour of :func:`release_wrapper`."""
    return held_driver(adapter, None, None, plain=False, asyncio_=True)


def extend_wrapper(adapter: Adapter, extension: Extension | None = None) -> Wrapper:
    """A wrapt wrapper for ``extend``-like calls (``extension`` reads the new lease)."""
    return held_driver(adapter, None, after_extend(adapter, extension), plain=False, asyncio_=False)


def async_extend_wrapper(adapter: Adapter, extension: Extension | None = None) -> Wrapper:
    """The asyncio flavour of :func:`extend_wrapper`, for methods that are plain functions
    returning an awaitable (redis-py's): their immediate errors stay immediate."""
    after = after_extend(adapter, extension)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        shim = runtime.current
        task = asyncio.current_task()
        hold = None if shim is None else enter(shim, adapter, instance, None, None, task, True)
        if hold is None:
            return wrapped(*args, **kwargs)
        awaitable = wrapped(*args, **kwargs)

        async def finish() -> Any:
            try:
                result = await awaitable
            except BaseException as exc:
                after(instance, hold, args, kwargs, exc)
                raise
            after(instance, hold, args, kwargs, None)
            return result

        return finish()

    return wrapper
