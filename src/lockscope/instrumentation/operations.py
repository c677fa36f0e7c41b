"""The generic lock-call wrappers every target shares: acquire, release, extend.

A target module describes its library with an :class:`Adapter` (how to read a lock's
identity, token and lease; which exceptions mean "lost"); this module turns it into wrapt
wrappers.  Each wrapper first checks :func:`is_instrumentation_enabled` (as
:data:`fast_enabled`, the same test with fewer calls) and never lets its own errors reach
the caller: the wrapped call's result or exception is passed through
unchanged (principle 4, fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Status, StatusCode

from lockscope import events
from lockscope.instrumentation import runtime
from lockscope.instrumentation.recorder import Hold, LockInfo, Wait

__all__ = [
    "Adapter",
    "acquire_wrapper",
    "async_acquire_wrapper",
    "async_extend_wrapper",
    "async_guarded",
    "async_release_wrapper",
    "begin",
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
    "sync_task",
    "unguarded",
]

_log = logging.getLogger("lockscope.instrumentation")
_INFO_ATTR = "_lockscope_info"
_SKIP = object()
"""Cached in place of a LockInfo on lock objects the shim must not record (an election's
inner lock, for instance)."""

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
_get_ident = threading.get_ident

on_behalf: dict[int, Any] = {}
"""thread ident -> the asyncio task a worker thread runs a blocking call for (filled by
:mod:`.executor` around ``run_in_executor``/``to_thread`` calls): a lock call made there
is the task's, not the worker thread's."""


def sync_task() -> Any:
    """The asyncio task the current (worker) thread acts for, else ``None``."""
    return on_behalf.get(_get_ident()) if on_behalf else None


_attach = otel_context.attach
_detach = otel_context.detach
_set_span = trace.set_span_in_context


class Adapter:
    """How the shim reads one library's lock objects; targets override what differs."""

    def shared(self, instance: Any) -> bool:
        """Whether another thread or task may release the lock (the hold is the object's)."""
        return True

    def info(self, instance: Any) -> LockInfo | None:
        """The lock's identity and kind; ``None`` to leave this object alone."""
        raise NotImplementedError

    def blocking(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this acquire call may wait (a miss is ``timeout`` rather than ``busy``)."""
        value = kwargs["blocking"] if "blocking" in kwargs else (args[0] if args else True)
        return bool(value)

    def outcome(self, result: Any, blocking: bool) -> str:
        """The outcome of an acquire that returned ``result``."""
        if result:
            return "acquired"
        return "timeout" if blocking else "busy"

    def exc_outcome(self, exc: BaseException) -> str:
        """The outcome of an acquire that raised ``exc``."""
        if isinstance(exc, asyncio.CancelledError):
            return "cancelled"
        return "error"

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        """(fencing token, owner id, lease seconds) right after a successful acquire."""
        return None, None, None

    def is_lost(self, exc: BaseException) -> bool:
        """Whether a release/extend error means the lock had been lost."""
        return False

    def holds_after_release_error(self, instance: Any) -> bool:
        """Whether the object still believes it holds the lock after a failed release."""
        return False

    def extension(
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[float | None, bool]:
        """(seconds, replace) of an extend call: the lease now lasts ``seconds`` from now
        (``replace``) or ``seconds`` longer."""
        seconds = kwargs.get("seconds", args[0] if args else None)
        return (float(seconds) if isinstance(seconds, int | float) else None), True

    def probe_for(self, wait: Wait) -> Callable[[Wait], None] | None:
        """For a long wait: a function the reporter's probe thread calls to fill
        ``wait.holder_token``/``holder_owner``/``ticket`` where the library can tell
        cheaply (``None``: nothing to learn).  Its errors are ignored."""
        return None

    by_key = True
    """Whether a release on an object that holds nothing may end another object's hold of
    the same lock (for lock objects that delegate to another); targets whose objects each
    hold for themselves set it false."""

    watches_holds = False
    """Whether :meth:`on_hold` does anything (saves a call per acquire when not)."""

    def on_hold(self, instance: Any, hold: Hold) -> None:
        """Called after a hold is registered, if :attr:`watches_holds` (kazoo watches its
        session here)."""


def suppression_keys() -> tuple[Callable[[], Any], object, object] | None:
    """(the current context's getter, the two suppression keys) that
    :func:`is_instrumentation_enabled` reads, for paths that inline the check (the
    in-process locks); ``None`` if this OpenTelemetry version keeps them elsewhere."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT, _SUPPRESS_INSTRUMENTATION_KEY
        from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN

        var = _RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
        if not isinstance(var, ContextVar):
            return None
        return var.get, _SUPPRESS_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
    except Exception:
        return None


def _fast_enabled_check() -> Callable[[], bool]:
    """:func:`is_instrumentation_enabled`, with the same two keys read straight from the
    current context (saves ~150 ns per call); falls back to the public call."""
    found = suppression_keys()
    if found is None:
        return is_instrumentation_enabled
    get, key, plain = found

    def enabled() -> bool:
        current = get()
        return not (current.get(key) or current.get(plain))

    return enabled


fast_enabled = _fast_enabled_check()


def lock_info(adapter: Adapter, instance: Any) -> LockInfo | None:
    """The adapter's LockInfo for ``instance``, cached on the object where possible."""
    try:
        cached = instance.__dict__.get(_INFO_ATTR)
    except AttributeError:
        cached = None
    if cached is not None:
        return None if cached is _SKIP else cached
    info = adapter.info(instance)
    with contextlib.suppress(AttributeError):
        instance.__dict__[_INFO_ATTR] = _SKIP if info is None else info
    return info


def _cached_info(instance: Any) -> Any:
    try:
        return instance.__dict__.get(_INFO_ATTR)
    except AttributeError:
        return None


def skip(instance: Any) -> None:
    """Never record calls on ``instance`` (its owner records them itself)."""
    with contextlib.suppress(AttributeError):
        instance.__dict__[_INFO_ATTR] = _SKIP


def forget(instance: Any) -> None:
    """Drop the cached LockInfo (after uninstrumenting)."""
    with contextlib.suppress(AttributeError):
        instance.__dict__.pop(_INFO_ATTR, None)


def failed() -> None:
    shim = runtime.current
    if shim is not None:
        shim.recorder.errors += 1
    _log.debug("lockscope: internal error (ignored)", exc_info=True)


class _Acquire:
    """One instrumented acquire in flight."""

    __slots__ = ("adapter", "args", "info", "instance", "kwargs", "shim", "span", "wait")

    def __init__(
        self, shim: runtime.Shim, adapter: Adapter, instance: Any, info: LockInfo, task: Any
    ) -> None:
        self.shim = shim
        self.adapter = adapter
        self.instance = instance
        self.info = info
        actor = _get_ident() if task is None else id(task)
        self.wait = shim.recorder.begin_wait(info, actor, task, instance)
        self.args: Any = ()
        self.kwargs: Any = {}
        self.span: Any = None
        spans = shim.spans
        if spans is not None:
            try:  # the wait is registered: a tracing failure must not orphan it
                certainty = spans.certainty()
                if certainty >= 0:
                    span = spans.start_acquire(info, shim.recorder, certainty > 0)
                    if span.is_recording():
                        self.span = span
            except Exception:
                failed()

    def done(self, outcome: str, exc: BaseException | None = None) -> Hold | None:
        """Record the acquire's outcome; the new hold on ``acquired``."""
        hold = None
        try:
            token = owner = ttl = None
            if outcome == "acquired":
                token, owner, ttl = self.adapter.hold_fields(self.instance)
            hold = self.shim.recorder.end_wait(
                self.wait, outcome, token=token, owner=owner, ttl=ttl
            )
            span = self.span
            if span is not None:
                end = hold.start if hold is not None else _now()
                # One set_attribute per key: cheaper in the SDK than set_attributes of a
                # small dict (which it type-checks as a mapping first).
                span.set_attribute(events.ATTR_OUTCOME, outcome)
                span.set_attribute(events.ATTR_WAIT_DURATION, (end - self.wait.start) / 1e9)
                if token is not None:
                    span.set_attribute(events.ATTR_LOCK_TOKEN, token)
                if exc is not None and outcome == "error":
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
                if hold is not None and self.shim.spans is not None:
                    hold.span = self.shim.spans.start_hold(self.info, token)
            if hold is not None and self.adapter.watches_holds:
                self.adapter.on_hold(self.instance, hold)
        except Exception:
            failed()
        return hold


_now = time.perf_counter_ns


def begin(adapter: Adapter, instance: Any, args: Any, kwargs: Any, task: Any) -> _Acquire | None:
    shim = runtime.current
    if shim is None:
        return None
    info = _cached_info(instance)
    if info is None:
        info = lock_info(adapter, instance)
        if info is None:
            return None
    elif info is _SKIP:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    op = _Acquire(shim, adapter, instance, info, task)
    op.args, op.kwargs = args, kwargs
    return op


def start(adapter: Adapter, instance: Any, info: LockInfo, task: Any) -> _Acquire | None:
    """Begin recording an acquire of ``info`` by ``instance`` (a target that keeps its own
    LockInfo, e.g. one per mode); ``None`` when the shim is off."""
    shim = runtime.current
    if shim is None:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    return _Acquire(shim, adapter, instance, info, task)


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


def acquire_wrapper(adapter: Adapter) -> Wrapper:
    """A wrapt wrapper for a blocking ``acquire``-like method."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not fast_enabled():
            return wrapped(*args, **kwargs)
        try:
            op = begin(adapter, instance, args, kwargs, None)
        except Exception:
            failed()
            op = None
        if op is None:
            return wrapped(*args, **kwargs)
        span = op.span
        token = _attach(_set_span(span)) if span is not None else None
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                _detach(token)
            op.done(exc_outcome(adapter, exc), exc)
            raise
        if token is not None:
            _detach(token)
        op.done("acquired" if result is True else _result_outcome(adapter, result, op))
        return result

    return wrapper


def async_acquire_wrapper(adapter: Adapter) -> Wrapper:
    """The asyncio flavour of :func:`acquire_wrapper` (the actor is the current task)."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not fast_enabled():
            return await wrapped(*args, **kwargs)
        try:
            op = begin(adapter, instance, args, kwargs, asyncio.current_task())
        except Exception:
            failed()
            op = None
        if op is None:
            return await wrapped(*args, **kwargs)
        span = op.span
        token = _attach(_set_span(span)) if span is not None else None
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                _detach(token)
            op.done(exc_outcome(adapter, exc), exc)
            raise
        if token is not None:
            _detach(token)
        op.done(_result_outcome(adapter, result, op))
        return result

    return wrapper


def exc_outcome(adapter: Adapter, exc: BaseException) -> str:
    try:
        return adapter.exc_outcome(exc)
    except Exception:
        return "error"


def _result_outcome(adapter: Adapter, result: Any, op: _Acquire) -> str:
    if result is True:
        return "acquired"
    try:
        return adapter.outcome(result, adapter.blocking(op.instance, op.args, op.kwargs))
    except Exception:
        return "error"


def _find(adapter: Adapter, instance: Any, task: Any) -> Hold | None:
    shim = runtime.current
    if shim is None:
        return None
    info = _cached_info(instance)
    if info is None:
        info = lock_info(adapter, instance)
        if info is None:
            return None
    elif info is _SKIP:
        return None
    if task is None and on_behalf:
        task = on_behalf.get(_get_ident())
    actor = _get_ident() if task is None else id(task)
    key = info.key if adapter.by_key else None
    return shim.recorder.find_hold(instance, actor, key, any_actor=adapter.shared(instance))


def released(adapter: Adapter, instance: Any, hold: Hold, exc: BaseException | None) -> None:
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
            span.set_attribute(events.ATTR_HOLD_DURATION, (_now() - hold.start) / 1e9)
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
    except Exception:
        failed()


_After = Callable[[Any, Hold, Any, Any, BaseException | None], None]


def _held_call_wrapper(adapter: Adapter, after: _After) -> Wrapper:
    """A wrapt wrapper for a call on a held lock (release, extend): the hold's span is
    current around the call, then ``after(instance, hold, args, kwargs, exc)`` records it."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not fast_enabled():
            return wrapped(*args, **kwargs)
        try:
            hold = _find(adapter, instance, None)
        except Exception:
            failed()
            hold = None
        if hold is None:
            return wrapped(*args, **kwargs)
        token = _attach(_set_span(hold.span)) if hold.span is not None else None
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                _detach(token)
            after(instance, hold, args, kwargs, exc)
            raise
        if token is not None:
            _detach(token)
        after(instance, hold, args, kwargs, None)
        return result

    return wrapper


def release_wrapper(adapter: Adapter) -> Wrapper:
    """A wrapt wrapper for ``release``: ends the hold (``lost`` on a lost-lock error)."""
    return _held_call_wrapper(
        adapter, lambda instance, hold, _a, _k, exc: released(adapter, instance, hold, exc)
    )


def async_release_wrapper(adapter: Adapter) -> Wrapper:
    """The asyncio flavour of :func:`release_wrapper`."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not fast_enabled():
            return await wrapped(*args, **kwargs)
        try:
            hold = _find(adapter, instance, asyncio.current_task())
        except Exception:
            failed()
            hold = None
        if hold is None:
            return await wrapped(*args, **kwargs)
        token = _attach(_set_span(hold.span)) if hold.span is not None else None
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                _detach(token)
            released(adapter, instance, hold, exc)
            raise
        if token is not None:
            _detach(token)
        released(adapter, instance, hold, None)
        return result

    return wrapper


def _extended(
    adapter: Adapter,
    instance: Any,
    hold: Hold,
    args: Any,
    kwargs: Any,
    exc: BaseException | None,
    extension: Callable[[Any, Any, Any], tuple[float | None, bool]] | None,
) -> None:
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


def extend_wrapper(
    adapter: Adapter,
    extension: Callable[[Any, Any, Any], tuple[float | None, bool]] | None = None,
) -> Wrapper:
    """A wrapt wrapper for ``extend``-like calls (``extension`` reads the new lease)."""
    return _held_call_wrapper(
        adapter,
        lambda instance, hold, args, kwargs, exc: _extended(
            adapter, instance, hold, args, kwargs, exc, extension
        ),
    )


def async_extend_wrapper(
    adapter: Adapter,
    extension: Callable[[Any, Any, Any], tuple[float | None, bool]] | None = None,
) -> Wrapper:
    """The asyncio flavour of :func:`extend_wrapper`, for methods that are plain functions
    returning an awaitable (redis-py's): their immediate errors stay immediate."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not fast_enabled():
            return wrapped(*args, **kwargs)
        try:
            hold = _find(adapter, instance, asyncio.current_task())
        except Exception:
            failed()
            hold = None
        if hold is None:
            return wrapped(*args, **kwargs)
        awaitable = wrapped(*args, **kwargs)

        async def finish() -> Any:
            try:
                result = await awaitable
            except BaseException as exc:
                _extended(adapter, instance, hold, args, kwargs, exc, extension)
                raise
            _extended(adapter, instance, hold, args, kwargs, None, extension)
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
