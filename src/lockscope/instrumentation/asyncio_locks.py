"""Target (opt-in): ``asyncio.Lock``.

``asyncio.Lock`` is a Python class: its ``__init__`` is wrapped (to note where the lock was
created) and its ``acquire`` and ``release`` are replaced by plain functions calling the
originals (cheaper than a wrapt proxy on a call that costs a fraction of a microsecond).
As for threading locks, only locks created by application code are recorded (those
created inside asyncio, site-packages or lockscope pass through with one dict look-up),
each named after its creation site, with the process as namespace; the actor is the
asyncio task.  No spans.

The lean path is the threading one (:mod:`.threading_locks`): an acquire that does not
wait (the lock is free and nobody is queued) writes a timestamp on the lock's record and
appends it to the task's list of held locks; a release pops it and appends the hold's
duration.  An acquire that may wait goes through the recorder's wait registry first, so a
long wait is reported.  The record lives in the lock's ``__dict__`` and names the lock it
belongs to, so a ``copy.copy`` of a lock (which bare asyncio allows) is a lock of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import adapters, operations, runtime
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.threading_locks import Recorded, _site, is_app_code

__all__ = ["instrument"]

_SITE_ATTR = "_lockscope_site"
_RECORD_ATTR = "_lockscope_record"
_counter = itertools.count(1)
_perf = time.perf_counter_ns
_current_task = asyncio.current_task
_context = adapters.context_get
_SUPPRESS = adapters.SUPPRESSED
_SUPPRESS_PLAIN = adapters.SUPPRESSED_PLAIN


class _Record(Recorded):
    """The shim's record of one asyncio.Lock's holds (an ``InProcessLock``)."""

    __slots__ = ("_task", "lock_id")
    _system = "asyncio"

    def __init__(self, lock: Any, site: str) -> None:
        super().__init__(site.rpartition("#")[0])
        self._site = site
        self._task: Any = None
        self.lock_id = id(lock)
        """The lock this records (a copy of the lock carries the record along: not its)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # A deep copy or an unpickled lock starts unrecorded (``None``), as a new lock.
        return type(None), ()


def _new_record(lock: Any, d: dict[str, Any], site: str, record: _Record | None) -> _Record:
    """The lock's first record (``record`` ``None``), or a copy's own (``record``: the
    original lock's, carried along by the copy)."""
    if record is not None:  # a copy: a lock of its own, named after the same site
        site = f"{site.rpartition('#')[0]}#{next(_counter)}"
        d[_SITE_ATTR] = site
    new = d[_RECORD_ATTR] = _Record(lock, site)
    return new


def _init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    wrapped(*args, **kwargs)
    try:
        frame = sys._getframe(1)
        if is_app_code(frame.f_code.co_filename):
            instance.__dict__[_SITE_ATTR] = f"{_site(frame)}#{next(_counter)}"
    except Exception:
        operations.failed()


def _named_like(func: Any, original: Any) -> Any:
    """``func`` with ``original``'s names, also in its code object: Python's own messages
    (a wrong argument count) then read as the bare method's."""
    func = functools.wraps(original)(func)
    with contextlib.suppress(AttributeError, ValueError):
        func.__code__ = func.__code__.replace(co_qualname=original.__code__.co_qualname)
    return func


def _acquire(original: Callable[..., Any]) -> Callable[..., Any]:
    async def acquire(self: Any) -> Any:
        d = self.__dict__
        site = d.get(_SITE_ATTR)
        shim = runtime.current
        if site is None or shim is None:
            return await original(self)
        context = _context()
        if context.get(_SUPPRESS) or context.get(_SUPPRESS_PLAIN):
            return await original(self)
        try:
            record = d.get(_RECORD_ATTR)
            if record is None or record.lock_id != id(self):
                record = _new_record(self, d, site, record)
            task = _current_task()
        except Exception:
            operations.failed()
            return await original(self)
        if task is None:
            return await original(self)
        # Free and nobody queued (as the base class decides): taken without waiting.  An
        # attribute missing in some Python version means "may wait" (the full path).
        if d.get("_locked", True) is False and not d.get("_waiters", True):
            got = await original(self)
            try:
                record._since = _perf()
                record._task = task
                record._owner = ident = id(task)
                recorder = shim.recorder
                held = recorder.light_tasks.get(ident)
                if held is None or held or ident in recorder.by_actor:
                    recorder.light_acquired(record, ident, task)  # first, or nested: pairs
                else:
                    held.append(record)
                    record._held = held
            except Exception:
                operations.failed()
            return got
        return await _wait(self, original, shim, record, task)

    return _named_like(acquire, original)  # type: ignore[no-any-return]


async def _wait(lock: Any, original: Callable[..., Any], shim: runtime.Shim, record: _Record,
                task: Any) -> Any:  # fmt: skip
    recorder = shim.recorder
    ident = id(task)
    try:
        wait = recorder.begin_wait(record.lock_info(), ident, task, record)
    except Exception:
        operations.failed()
        return await original(lock)
    try:
        got = await original(lock)
    except BaseException as exc:
        outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
        try:
            recorder.end_wait(wait, outcome, hold=False)
        except Exception:
            operations.failed()
        raise
    try:
        recorder.end_wait(wait, "acquired" if got else "busy", hold=False)
        if got:
            record._since = _perf()
            record._task = task
            record._owner = ident
            record._waited = True  # its acquisition is counted (with its wait)
            recorder.light_acquired(record, ident, task)
            if wait.reported:  # others may wait for this task: show the hold now
                recorder.report_light(record, ident)
    except Exception:
        operations.failed()
    return got


def _release(original: Callable[..., Any]) -> Callable[..., Any]:
    def release(self: Any) -> Any:
        record = self.__dict__.get(_RECORD_ATTR)
        if record is not None and record._since and record.lock_id == id(self):
            # Recorded before the release: once released, the record is the next holder's
            # (_released swallows its own errors).
            record._released(record._since)
        return original(self)

    return _named_like(release, original)  # type: ignore[no-any-return]


def instrument(patcher: Patcher) -> None:
    """Record ``asyncio.Lock`` objects that application code creates."""
    cls = asyncio.locks.Lock
    patcher.wrap(cls, "__init__", _init)
    patcher.replace(cls, "acquire", _acquire)
    patcher.replace(cls, "release", _release)
