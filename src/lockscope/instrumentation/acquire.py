"""One instrumented acquire in flight, and the one way a wrapper begins it.

:class:`Acquire` is at once the operation and the registry's
:class:`~lockscope.instrumentation.recorder.Wait` (one object per acquire, one more for the
hold).  :func:`enter` is the first step of every driver (wrapt wrappers and plain functions,
acquire and release alike, see :mod:`.drivers`): the suppression check, the LockInfo
look-up, then the acquire begun or the hold found, errors swallowed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from lockscope import events
from lockscope.instrumentation import runtime, spans
from lockscope.instrumentation.adapters import (
    INFO_ATTR,
    SKIP,
    SUPPRESSED,
    SUPPRESSED_PLAIN,
    Adapter,
    exc_outcome,
    failed,
    lock_info,
    on_behalf,
)
from lockscope.instrumentation.adapters import context_get as _context
from lockscope.instrumentation.recorder import Hold, LockInfo, Wait

__all__ = ["Acquire", "enter"]

_get_ident = threading.get_ident
_perf = time.perf_counter_ns
_attach = otel_context.attach
_detach = otel_context.detach
_set_span = trace.set_span_in_context
_SPAN = spans._SPAN
# The span is read from the same context mapping as the suppression keys (one context
# look-up for both), when both were found in the SDK's context variable.
_SAME_CONTEXT = spans._context == _context


class Acquire(Wait):
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
        self.probed = False
        self.shim = shim
        self.adapter = adapter
        self.args = args
        self.kwargs = kwargs
        self.span: Any = None
        self.context: Any = None
        recorder.waits.add(self)  # registered: one GIL-atomic set add
        factory = shim.spans
        if factory is not None and traced:
            try:  # the wait is registered: a tracing failure must not orphan it
                certainty = factory.always  # certainty(), inlined for a sampler that is
                if certainty == 0:  # the same for every parent (AlwaysOn, AlwaysOff)
                    certainty = factory.certainty()
                if certainty > 0:  # surely recording: no is_recording() to ask
                    self.span = factory.start_acquire(info, recorder, True)
                elif certainty == 0:
                    span = factory.start_acquire(info, recorder, False)
                    if span.is_recording():
                        self.span = span
            except Exception:
                failed()

    def raised(self, exc: BaseException) -> None:
        """The wrapped acquire raised ``exc``."""
        if self.context is not None:
            _detach(self.context)
            self.context = None
        self.done(exc_outcome(self.adapter, exc), exc)

    def outcome_of(self, result: Any) -> str:
        """The outcome of the wrapped acquire that returned ``result`` (not ``True``)."""
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
                self.end_span(hold, outcome, token, exc)
            if hold is not None and adapter.watches_holds:
                adapter.on_hold(self.target, hold)
        except Exception:
            failed()
        return hold

    def end_span(
        self, hold: Hold | None, outcome: str, token: int | None, exc: BaseException | None
    ) -> None:
        """End the wait span with the outcome; the hold span starts on ``hold``."""
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
        factory = self.shim.spans
        if hold is not None and factory is not None:
            hold.span = factory.start_hold(self.info, token)


def enter(shim: runtime.Shim, adapter: Adapter, instance: Any, args: Any, kwargs: Any,
          task: Any, held: bool) -> Any:  # fmt: skip
    """The first step of every driver (:mod:`.drivers`), everything inlined (every call
    saved is ~0.1 us per lock operation): suppression checked, the LockInfo looked up,
    errors swallowed; ``None``: the call goes on unrecorded.

    ``held`` false (an acquire): the :class:`Acquire` begun, with the sampler's certain
    drop checked here (no call into the span factory for an unsampled root acquire) and
    the wait span made current (the driver leaves it when the call ends).  ``held`` true
    (a release or extend): the :class:`~lockscope.instrumentation.recorder.Hold` the call
    is on (this actor's hold of
    ``instance``, else anyone's if :meth:`Adapter.shared`, else the lock's by key if
    :attr:`Adapter.by_key`), :meth:`Recorder.find_hold` inlined."""
    op = None
    try:
        context = _context()
        if context.get(SUPPRESSED) or context.get(SUPPRESSED_PLAIN):
            return None
        try:
            info = instance.__dict__.get(INFO_ATTR)
        except AttributeError:
            info = None
        if info is None:
            info = lock_info(adapter, instance)
            if info is None:
                return None
        elif info is SKIP:
            return None
        if task is None and on_behalf:
            task = on_behalf.get(_get_ident())
        if held:
            actor = _get_ident() if task is None else id(task)
            same = shim.recorder._holds.get(id(instance))
            if same:
                for hold in same:
                    if hold.actor == actor:
                        return hold
                return same[0] if adapter.shared(instance) else None
            return shim.recorder.holder_of(info.key) if adapter.by_key else None
        factory = shim.spans
        traced = factory is not None and not (
            factory.drops_root and _SAME_CONTEXT and context.get(_SPAN) is None
        )
        op = Acquire(shim, adapter, instance, info, task, args, kwargs, traced)
        if op.span is not None:
            op.context = _attach(_set_span(op.span))
        return op
    except Exception:
        if op is not None:  # registered, but the call goes on unrecorded: no phantom wait
            shim.recorder.waits.discard(op)
        failed()
        return None
