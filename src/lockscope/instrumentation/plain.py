"""Plain-function drivers of the acquire and release algorithm, for the hottest targets.

:mod:`.operations`' wrappers are wrapt wrappers: every ``lock.acquire`` look-up binds a
``BoundFunctionWrapper`` and every call goes through wrapt's dispatch before the shim's
code runs.  For redis-py's ``Lock`` (an application's most frequent distributed lock call)
the methods are instead replaced on the class by plain functions (:meth:`Patcher.replace
<lockscope.instrumentation.patching.Patcher.replace>`) that call the original directly,
with the suppression check, the LockInfo look-up, the sampler's "surely dropped" check and
the hold look-up inlined: the same algorithm (:class:`.operations._Acquire`,
:func:`.operations.released`) in fewer Python calls.  ``functools.wraps`` keeps the
original's name, docstring, signature (through ``__wrapped__``) and, for asyncio, its
being a coroutine function.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import runtime, spans
from lockscope.instrumentation.adapters import (
    INFO_ATTR,
    SKIP,
    SUPPRESSED,
    SUPPRESSED_PLAIN,
    Adapter,
    failed,
    lock_info,
    on_behalf,
)
from lockscope.instrumentation.adapters import context_get as _context
from lockscope.instrumentation.operations import _Acquire, _attach, _held_call_done, _set_span
from lockscope.instrumentation.recorder import Hold

__all__ = [
    "plain_acquire",
    "plain_async_acquire",
    "plain_async_release",
    "plain_release",
]

_get_ident = threading.get_ident
_current_task = asyncio.current_task
_SPAN = spans._SPAN
# The span is read from the same context mapping as the suppression keys (one context
# look-up for both), when both were found in the SDK's context variable.
_SAME_CONTEXT = spans._context == _context
Maker = Callable[[Callable[..., Any]], Callable[..., Any]]


def _begin(shim: runtime.Shim, adapter: Adapter, instance: Any, args: Any, kwargs: Any,
           task: Any) -> _Acquire | None:  # fmt: skip
    """``operations._begin_safely``, with the sampler's certain drop checked here (no
    call into the span factory for an unsampled root acquire)."""
    op = None
    try:
        context = _context()
        if context.get(SUPPRESSED) or context.get(SUPPRESSED_PLAIN):
            return None
        info = instance.__dict__.get(INFO_ATTR)
        if info is None:
            info = lock_info(adapter, instance)
            if info is None:
                return None
        elif info is SKIP:
            return None
        if task is None and on_behalf:
            task = on_behalf.get(_get_ident())
        factory = shim.spans
        traced = factory is not None and not (
            factory.drops_root and _SAME_CONTEXT and context.get(_SPAN) is None
        )
        op = _Acquire(shim, adapter, instance, info, task, args, kwargs, traced)
        if op.span is not None:
            op.context = _attach(_set_span(op.span))
        return op
    except Exception:
        if op is not None:  # registered, but the call goes on unrecorded: no phantom wait
            shim.recorder.waits.discard(op)
        failed()
        return None


def _find(shim: runtime.Shim, adapter: Adapter, instance: Any, task: Any) -> Hold | None:
    """``operations._find_safely``, inlined (the hold of this object by this actor)."""
    try:
        context = _context()
        if context.get(SUPPRESSED) or context.get(SUPPRESSED_PLAIN):
            return None
        info = instance.__dict__.get(INFO_ATTR)
        if info is None:
            info = lock_info(adapter, instance)
            if info is None:
                return None
        elif info is SKIP:
            return None
        if task is None and on_behalf:
            task = on_behalf.get(_get_ident())
        actor = _get_ident() if task is None else id(task)
        same = shim.recorder._holds.get(id(instance))
        if same:
            for hold in same:
                if hold.actor == actor:
                    return hold
            return same[0] if adapter.shared(instance) else None
        return shim.recorder.holder_of(info.key) if adapter.by_key else None
    except Exception:
        failed()
        return None


def _released(shim: runtime.Shim, adapter: Adapter, instance: Any, hold: Hold,
              token: Any) -> None:  # fmt: skip
    """A release returned: the common case (no span) ends the hold in one call."""
    if token is None and hold.span is None:
        try:
            shim.recorder.end_hold(hold, "released")
        except Exception:
            failed()
        return
    _held_call_done(adapter, None, instance, hold, (), {}, None, token)


def plain_acquire(adapter: Adapter) -> Maker:
    """For :meth:`Patcher.replace`: a blocking ``acquire``-like method, recorded."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
            shim = runtime.current
            op = None if shim is None else _begin(shim, adapter, self, args, kwargs, None)
            if op is None:
                return original(self, *args, **kwargs)
            try:
                result = original(self, *args, **kwargs)
            except BaseException as exc:
                op.raised(exc)
                raise
            op.returned(result)
            return result

        return acquire

    return make


def plain_async_acquire(adapter: Adapter) -> Maker:
    """The asyncio flavour of :func:`plain_acquire` (the actor is the current task)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
            shim = runtime.current
            op = None
            if shim is not None:
                op = _begin(shim, adapter, self, args, kwargs, _current_task())
            if op is None:
                return await original(self, *args, **kwargs)
            try:
                result = await original(self, *args, **kwargs)
            except BaseException as exc:
                op.raised(exc)
                raise
            op.returned(result)
            return result

        return acquire

    return make


def plain_release(adapter: Adapter) -> Maker:
    """For :meth:`Patcher.replace`: ``release`` (ends the hold; ``lost`` on a lost-lock
    error), the hold's span current around the call as with the wrapt wrapper."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def release(self: Any, *args: Any, **kwargs: Any) -> Any:
            shim = runtime.current
            hold = None if shim is None else _find(shim, adapter, self, None)
            if hold is None or shim is None:
                return original(self, *args, **kwargs)
            token = _attach(_set_span(hold.span)) if hold.span is not None else None
            try:
                result = original(self, *args, **kwargs)
            except BaseException as exc:
                _held_call_done(adapter, None, self, hold, args, kwargs, exc, token)
                raise
            _released(shim, adapter, self, hold, token)
            return result

        return release

    return make


def plain_async_release(adapter: Adapter) -> Maker:
    """The asyncio flavour of :func:`plain_release`."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def release(self: Any, *args: Any, **kwargs: Any) -> Any:
            shim = runtime.current
            hold = None if shim is None else _find(shim, adapter, self, _current_task())
            if hold is None or shim is None:
                return await original(self, *args, **kwargs)
            token = _attach(_set_span(hold.span)) if hold.span is not None else None
            try:
                result = await original(self, *args, **kwargs)
            except BaseException as exc:
                _held_call_done(adapter, None, self, hold, args, kwargs, exc, token)
                raise
            _released(shim, adapter, self, hold, token)
            return result

        return release

    return make
