"""Calls on a held lock (release, extend): find the hold a call ends, then record it.

:func:`.acquire.enter` finds the hold a driver's call is on (see :mod:`.drivers`);
:func:`released` ends a hold (``lost`` when :meth:`Adapter.is_lost` says so) and its span.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Status, StatusCode

from lockscope import events
from lockscope.instrumentation import runtime
from lockscope.instrumentation.adapters import Adapter, failed, on_behalf
from lockscope.instrumentation.recorder import Hold, LockInfo

__all__ = [
    "After",
    "Extension",
    "after_extend",
    "find_hold",
    "held_call_done",
    "released",
]

_get_ident = threading.get_ident
_perf = time.perf_counter_ns
_detach = otel_context.detach
Extension = Callable[[Any, Any, Any], tuple[float | None, bool]]
After = Callable[[Any, Hold, Any, Any, BaseException | None], None]
"""What records a call on a held lock other than a release: ``after(instance, hold, args,
kwargs, exc)``."""


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


def held_call_done(adapter: Adapter, after: After | None, instance: Any, hold: Hold,
                   args: Any, kwargs: Any, exc: BaseException | None,
                   token: Any) -> None:  # fmt: skip
    """After a call on a held lock: leave the hold's span context, record the call
    (``after`` ``None``: it was a release)."""
    if token is not None:
        _detach(token)
    if after is None:
        released(adapter, instance, hold, exc)
    else:
        after(instance, hold, args, kwargs, exc)


def _extended(adapter: Adapter, instance: Any, hold: Hold, args: Any, kwargs: Any,
              exc: BaseException | None, extension: Extension | None) -> None:  # fmt: skip
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


def after_extend(adapter: Adapter, extension: Extension | None) -> After:
    """The ``after`` of an extend-like call (``extension`` reads the new lease; ``None``:
    :meth:`Adapter.extension`)."""

    def after(instance: Any, hold: Hold, args: Any, kwargs: Any,
              exc: BaseException | None) -> None:  # fmt: skip
        _extended(adapter, instance, hold, args, kwargs, exc, extension)

    return after
