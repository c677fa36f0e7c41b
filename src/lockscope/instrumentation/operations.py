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

How it stays cheap
------------------
One algorithm, two thin drivers: :class:`_Acquire` is at once the operation in flight
and the registry's :class:`~lockscope.instrumentation.recorder.Wait` (one object per
acquire, one more for the hold); the sync and asyncio wrappers differ only in ``await``.
The wrapped call's result or exception is passed through unchanged (principle 4).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from lockscope import events
from lockscope.instrumentation import runtime
from lockscope.instrumentation.adapters import (
    INFO_ATTR,
    SKIP,
    SUPPRESSED,
    SUPPRESSED_PLAIN,
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
from lockscope.instrumentation.adapters import context_get as _context
from lockscope.instrumentation.recorder import Hold, LockInfo, Wait

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

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
_get_ident = threading.get_ident
_perf = time.perf_counter_ns
_attach = otel_context.attach
_detach = otel_context.detach
_set_span = trace.set_span_in_context
_Extension = Callable[[Any, Any, Any], tuple[float | None, bool]]


class _Acquire(Wait):
    """One instrumented acquire in flight: the registry's wait and the operation."""

    __slots__ = ("adapter", "args", "context", "kwargs", "shim", "span")

    def __init__(
        self,
        shim: runtime.Shim,
        adapter: Adapter,
        instance: Any,
        info: LockInfo,
        task: Any,
        args: Any = (),
        kwargs: Any = None,
        traced: bool = True,
    ) -> None:
        recorder = shim.recorder
        start = _perf()
        # Wait's fields, set here rather than through Wait.__init__ (a call less).
        self.info = info
        self.actor = _get_ident() if task is None else id(task)
        self.task = task
        self.actor_name = None
        self.target = instance
        self.start = start
        self.since_ns = start + recorder.offset
        self.reported = False
        self.holder_token = None
        self.holder_owner = None
        self.ticket = None
        self.code = None
        self.shim = shim
        self.adapter = adapter
        self.args = args
        self.kwargs = kwargs
        self.span: Any = None
        self.context: Any = None
        recorder.waits.add(self)  # registered: one GIL-atomic set add
        spans = shim.spans
        if spans is not None and traced:
            try:  # the wait is registered: a tracing failure must not orphan it
                certainty = spans.certainty()
                if certainty >= 0:
                    span = spans.start_acquire(info, recorder, certainty > 0)
                    if span.is_recording():
                        self.span = span
            except Exception:
                failed()

    def returned(self, result: Any) -> None:
        """The wrapped acquire returned ``result`` (the span context is left first)."""
        if self.context is not None:
            _detach(self.context)
            self.context = None
        if result is not True:
            self.done(self._outcome(result))
            return
        # done("acquired"), inlined: the common case.
        try:
            adapter = self.adapter
            token, owner, ttl = adapter.hold_fields(self.target)
            hold = self.shim.recorder.end_wait(self, "acquired", token=token, owner=owner, ttl=ttl)
            if self.span is not None:
                self._end_span(hold, "acquired", token, None)
            if hold is not None and adapter.watches_holds:
                adapter.on_hold(self.target, hold)
        except Exception:
            failed()

    def raised(self, exc: BaseException) -> None:
        """The wrapped acquire raised ``exc``."""
        if self.context is not None:
            _detach(self.context)
            self.context = None
        self.done(exc_outcome(self.adapter, exc), exc)

    def _outcome(self, result: Any) -> str:
        adapter = self.adapter
        try:
            kwargs = self.kwargs if self.kwargs is not None else {}
            return adapter.outcome(result, adapter.blocking(self.target, self.args, kwargs))
        except Exception:
            return "error"

    def done(self, outcome: str, exc: BaseException | None = None) -> Hold | None:
        """Record the acquire's outcome; the new hold on ``acquired``."""
        hold = None
        try:
            adapter = self.adapter
            token = owner = ttl = None
            if outcome == "acquired":
                token, owner, ttl = adapter.hold_fields(self.target)
            hold = self.shim.recorder.end_wait(self, outcome, token=token, owner=owner, ttl=ttl)
            if self.span is not None:
                self._end_span(hold, outcome, token, exc)
            if hold is not None and adapter.watches_holds:
                adapter.on_hold(self.target, hold)
        except Exception:
            failed()
        return hold

    def _end_span(
        self, hold: Hold | None, outcome: str, token: int | None, exc: BaseException | None
    ) -> None:
        span = self.span
        end = hold.start if hold is not None else _perf()
        # One set_attribute per key: cheaper in the SDK than set_attributes of a small
        # dict (which it type-checks as a mapping first).
        span.set_attribute(events.ATTR_OUTCOME, outcome)
        span.set_attribute(events.ATTR_WAIT_DURATION, (end - self.start) / 1e9)
        if token is not None:
            span.set_attribute(events.ATTR_LOCK_TOKEN, token)
        if exc is not None and outcome == "error":
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        spans = self.shim.spans
        if hold is not None and spans is not None:
            hold.span = spans.start_hold(self.info, token)


def _info_of(adapter: Adapter, instance: Any) -> LockInfo | None:
    try:
        info = instance.__dict__.get(INFO_ATTR)
    except AttributeError:
        info = None
    if info is None:
        return lock_info(adapter, instance)
    return None if info is SKIP else info


def begin(adapter: Adapter, instance: Any, args: Any, kwargs: Any, task: Any) -> _Acquire | None:
    """Begin recording an acquire on ``instance`` by ``task`` (``None``: the current
    thread, or the task it runs a blocking call for); ``None`` when not recorded."""
    shim = runtime.current
    if shim is None:
        return None
    info = _info_of(adapter, instance)
    if info is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    return _Acquire(shim, adapter, instance, info, task, args, kwargs)


def start(adapter: Adapter, instance: Any, info: LockInfo, task: Any) -> _Acquire | None:
    """Begin recording an acquire of ``info`` by ``instance`` (a target that keeps its own
    LockInfo, e.g. one per mode); ``None`` when the shim is off."""
    shim = runtime.current
    if shim is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    return _Acquire(shim, adapter, instance, info, task)


def _lookup(adapter: Adapter, instance: Any) -> LockInfo | None:
    """The wrappers' first step: ``None`` if suppressed or not recorded (errors swallowed)."""
    context = _context()
    if context.get(SUPPRESSED) or context.get(SUPPRESSED_PLAIN):
        return None
    try:
        return _info_of(adapter, instance)
    except Exception:
        failed()
        return None


def _begin_safely(adapter: Adapter, instance: Any, args: Any, kwargs: Any,
                  task: Any) -> _Acquire | None:  # fmt: skip
    """:func:`begin` for the wrappers, inlined (every call saved is ~0.1 us per acquire):
    suppression checked, errors swallowed, the wait span made current (the wrapper leaves
    it in :meth:`_Acquire.returned`/``raised``)."""
    shim = runtime.current
    info = _lookup(adapter, instance) if shim is not None else None
    if info is None or shim is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    op = None
    try:
        op = _Acquire(shim, adapter, instance, info, task, args, kwargs)
        if op.span is not None:
            op.context = _attach(_set_span(op.span))
        return op
    except Exception:
        if op is not None:  # registered, but the call goes on unrecorded: no phantom wait
            shim.recorder.waits.discard(op)
        failed()
        return None


def call_waiting(op: _Acquire, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
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

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        op = _begin_safely(adapter, instance, args, kwargs, None)
        if op is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            op.raised(exc)
            raise
        op.returned(result)
        return result

    return wrapper


def async_acquire_wrapper(adapter: Adapter) -> Wrapper:
    """The asyncio flavour of :func:`acquire_wrapper` (the actor is the current task)."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        op = _begin_safely(adapter, instance, args, kwargs, asyncio.current_task())
        if op is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            op.raised(exc)
            raise
        op.returned(result)
        return result

    return wrapper


def find_hold(adapter: Adapter, instance: Any, info: LockInfo, task: Any) -> Hold | None:
    """The hold of ``info`` that a release on ``instance`` ends (the current actor's first,
    else anyone's if :meth:`Adapter.shared`); ``None`` when there is none."""
    shim = runtime.current
    if shim is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    actor = _get_ident() if task is None else id(task)
    key = info.key if adapter.by_key else None
    return shim.recorder.find_hold(instance, actor, key, any_actor=adapter.shared(instance))


def _find_safely(adapter: Adapter, instance: Any, task: Any) -> Hold | None:
    """:func:`find_hold` for the wrappers, inlined: suppression checked, errors swallowed."""
    shim = runtime.current
    info = _lookup(adapter, instance) if shim is not None else None
    if info is None or shim is None:
        return None
    try:
        if task is None and on_behalf:
            task = on_behalf.get(_get_ident())
        actor = _get_ident() if task is None else id(task)
        key = info.key if adapter.by_key else None
        return shim.recorder.find_hold(instance, actor, key, any_actor=adapter.shared(instance))
    except Exception:
        failed()
        return None


def released(adapter: Adapter, instance: Any, hold: Hold, exc: BaseException | None) -> None:
    """A release of ``hold`` ended (``exc``: it raised); the hold ends unless the adapter
    says the object still holds it."""
    shim = runtime.current
    try:
        if shim is None:
            return
        if exc is None:
            outcome = "released"
        elif adapter.is_lost(exc):
            outcome = "lost"
        elif adapter.holds_after_release_error(instance):
            return  # the app may retry the release; the hold goes on
        else:
            outcome = "error"
        shim.recorder.end_hold(hold, outcome)
        span = hold.span
        if span is not None:
            hold.span = None
            span.set_attribute(events.ATTR_OUTCOME, outcome)
            span.set_attribute(events.ATTR_HOLD_DURATION, (_perf() - hold.start) / 1e9)
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
    except Exception:
        failed()


def _extended(adapter: Adapter, instance: Any, hold: Hold, args: Any, kwargs: Any,
              exc: BaseException | None, extension: _Extension | None) -> None:  # fmt: skip
    shim = runtime.current
    try:
        if shim is None:
            return
        if exc is not None:
            if adapter.is_lost(exc):
                released(adapter, instance, hold, exc)
            return
        seconds, replace = (extension or adapter.extension)(instance, args, kwargs)
        shim.recorder.extended(hold, seconds, replace=replace)
    except Exception:
        failed()


_After = Callable[[Any, Hold, Any, Any, BaseException | None], None]


def _held_call_done(adapter: Adapter, after: _After | None, instance: Any, hold: Hold,
                    args: Any, kwargs: Any, exc: BaseException | None,
                    token: Any) -> None:  # fmt: skip
    """After a call on a held lock: leave the hold's span context, record the call."""
    if token is not None:
        _detach(token)
    if after is None:
        released(adapter, instance, hold, exc)
    else:
        after(instance, hold, args, kwargs, exc)


def _held_call_wrapper(adapter: Adapter, after: _After | None) -> Wrapper:
    """A wrapt wrapper for a call on a held lock (release, extend): the hold's span is
    current around the call, then ``after(instance, hold, args, kwargs, exc)`` records it
    (``None``: it was a release, :func:`released` records it)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        hold = _find_safely(adapter, instance, None)
        if hold is None:
            return wrapped(*args, **kwargs)
        token = _attach(_set_span(hold.span)) if hold.span is not None else None
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _held_call_done(adapter, after, instance, hold, args, kwargs, exc, token)
            raise
        _held_call_done(adapter, after, instance, hold, args, kwargs, None, token)
        return result

    return wrapper


def _async_held_call_wrapper(adapter: Adapter, after: _After | None) -> Wrapper:
    """The asyncio driver of the same algorithm as :func:`_held_call_wrapper`."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        hold = _find_safely(adapter, instance, asyncio.current_task())
        if hold is None:
            return await wrapped(*args, **kwargs)
        token = _attach(_set_span(hold.span)) if hold.span is not None else None
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            _held_call_done(adapter, after, instance, hold, args, kwargs, exc, token)
            raise
        _held_call_done(adapter, after, instance, hold, args, kwargs, None, token)
        return result

    return wrapper


def _after_extend(adapter: Adapter, extension: _Extension | None) -> _After:
    def after(instance: Any, hold: Hold, args: Any, kwargs: Any,
              exc: BaseException | None) -> None:  # fmt: skip
        _extended(adapter, instance, hold, args, kwargs, exc, extension)

    return after


def release_wrapper(adapter: Adapter) -> Wrapper:
    """A wrapt wrapper for ``release``: ends the hold (``lost`` on a lost-lock error)."""
    return _held_call_wrapper(adapter, None)


def async_release_wrapper(adapter: Adapter) -> Wrapper:
    """The asyncio flavour of :func:`release_wrapper`."""
    return _async_held_call_wrapper(adapter, None)


def extend_wrapper(adapter: Adapter, extension: _Extension | None = None) -> Wrapper:
    """A wrapt wrapper for ``extend``-like calls (``extension`` reads the new lease)."""
    return _held_call_wrapper(adapter, _after_extend(adapter, extension))


def async_extend_wrapper(adapter: Adapter, extension: _Extension | None = None) -> Wrapper:
    """The asyncio flavour of :func:`extend_wrapper`, for methods that are plain functions
    returning an awaitable (redis-py's): their immediate errors stay immediate."""
    after = _after_extend(adapter, extension)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        hold = _find_safely(adapter, instance, asyncio.current_task())
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


_nested: ContextVar[bool] = ContextVar("lockscope_nested", default=False)


def guarded(wrapper: Wrapper) -> Wrapper:
    """``wrapper``, but calls made while another guarded call runs in the same thread or
    task pass straight through: a lock built on another lock (kazoo's Semaphore, a
    lockscope lock that delegates) is recorded once, as the outer lock."""

    def outer(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if _nested.get():
            return wrapped(*args, **kwargs)
        token = _nested.set(True)
        try:
            return wrapper(wrapped, instance, args, kwargs)
        finally:
            _nested.reset(token)

    return outer


def async_guarded(wrapper: Wrapper) -> Wrapper:
    """The asyncio flavour of :func:`guarded`."""

    async def outer(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if _nested.get():
            return await wrapped(*args, **kwargs)
        token = _nested.set(True)
        try:
            return await wrapper(wrapped, instance, args, kwargs)
        finally:
            _nested.reset(token)

    return outer


def unguarded() -> Token[bool]:
    """Leave the guard while user code runs inside a guarded call (an election's leader
    function); pass the result to :func:`reguard`."""
    return _nested.set(False)


def reguard(token: Token[bool]) -> None:
    """Undo :func:`unguarded`."""
    _nested.reset(token)
