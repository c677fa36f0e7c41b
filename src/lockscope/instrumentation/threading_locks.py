"""Target (opt-in): ``threading.Lock`` and ``threading.RLock``.

``threading.Lock`` is a C type that cannot be wrapped in place, so the shim wraps the two
factories: ``threading.Lock()`` and ``threading.RLock()`` called from *application code*
return a small proxy that records holds and waits; called from the standard library,
site-packages (the OpenTelemetry SDK, logging, queue...) or lockscope itself they return
the plain lock, so the shim neither slows down nor observes library internals.  Locks
created before instrumentation (or imported as ``from threading import Lock`` earlier)
stay plain: instrument early.

A lock is named after where it was created (``app/jobs.py:42#7``, the 7th lock created
there) and its template is the creation site, so lock-order pairs are per site, as Linux
lockdep's lock classes are.  Its namespace is the process (``service.instance.id``):
in-process locks are never shared between processes.  No spans (too frequent); holds,
waits, metrics and events as for any lock.  Cost: see docs/performance.md.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import os
import sys
import sysconfig
import threading
import time
from typing import Any, SupportsIndex

from lockscope.instrumentation import adapters, operations, runtime
from lockscope.instrumentation.metrics_aggregate import LockStats
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import Hold, InProcessLock, LockInfo

__all__ = ["TracedLock", "TracedRLock", "instrument", "is_app_code"]

_get_ident = _thread.get_ident
_perf = time.perf_counter_ns
_enabled = operations.fast_enabled
_NOWHERE: list[Any] = []
"""``_held`` of a lock not held (never appended to)."""
_context = adapters.context_get
_SUPPRESS = adapters.SUPPRESSED
_SUPPRESS_PLAIN = adapters.SUPPRESSED_PLAIN
_counter = itertools.count(1)
_site_cache: dict[str, bool] = {}


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs.add(here)  # lockscope itself
    return tuple(d for d in dirs if d)


_LIBRARY_DIRS: tuple[str, ...] = ()


def is_app_code(filename: str) -> bool:
    """Whether ``filename`` is application code (not stdlib, site-packages or lockscope)."""
    global _LIBRARY_DIRS
    found = _site_cache.get(filename)
    if found is None:
        if not _LIBRARY_DIRS:
            _LIBRARY_DIRS = _library_dirs()
        path = os.path.abspath(filename)
        found = not (filename.startswith("<frozen") or path.startswith(_LIBRARY_DIRS))
        if len(_site_cache) < 10_000:
            _site_cache[filename] = found
    return found


def _site(frame: Any) -> str:
    code = frame.f_code
    filename = code.co_filename
    with contextlib.suppress(ValueError):
        filename = os.path.relpath(filename)
    return f"{filename}:{frame.f_lineno}"


class Recorded:
    """The fields and methods an in-process lock record shares (threading and asyncio):
    an :class:`~lockscope.instrumentation.recorder.InProcessLock`."""

    __slots__ = (
        "_durations",
        "_gen",
        "_held",
        "_hold",
        "_info",
        "_owner",
        "_since",
        "_site",
        "_template",
        "_waited",
    )
    _system = "threading"
    _reentrant = False
    _task: Any = None
    """The holding asyncio task (never one for a threading lock)."""

    def __init__(self, site: str) -> None:
        self._template = site
        self._site = f"{site}#{next(_counter)}"
        self._info: LockInfo | None = None
        self._gen = -1
        self._since = 0
        """perf_counter_ns() when the recorded hold began; 0 when not held (or not recorded)."""
        self._owner = 0
        self._held: list[InProcessLock] = _NOWHERE
        self._hold: Hold | None = None
        """The hold as reported to the agent, once it has lasted report_after."""
        self._durations: list[int] = []
        self._waited = False

    def lock_info(self) -> LockInfo:
        """The lock's identity in this process (rebuilt in a forked child)."""
        shim = runtime.current
        generation = shim.generation if shim is not None else 0
        info = self._info
        if info is None or self._gen != generation:
            info = self._info = LockInfo(
                self._system,
                shim.instance_id if shim is not None else "",
                self._site,
                self._template,
                reentrant=self._reentrant,
            )
            self._gen = generation
        return info

    def fold_into(self, stats: LockStats) -> None:
        """Move the hold durations recorded since the last fold into ``stats`` (reporter
        thread; ``del`` of a slice is atomic, so appends meanwhile are kept)."""
        durations = self._durations
        count = len(durations)
        batch = durations[:count]
        del durations[:count]
        stats.fold_in_process(self._template, self._system, batch)

    def _released(self, since: int) -> None:
        """Record the end of the hold, before the release: once released, the fields are
        the next holder's.  ``_since`` is zeroed first, so the reporter does not start
        reporting a hold that is ending."""
        self._since = 0
        try:
            ns = _perf() - since
            held = self._held
            if held and held[-1] is self:
                held.pop()
            else:
                with contextlib.suppress(ValueError):  # not the newest, or gone (a fork)
                    held.remove(self)
            durations = self._durations
            if not durations:
                shim = runtime.current
                if shim is not None:
                    shim.recorder.dirty.add(self)
            if self._waited:
                self._waited = False
                durations.append(-ns)
            else:
                durations.append(ns)
            if self._hold is not None:
                shim = runtime.current
                if shim is not None:
                    shim.recorder.end_light(self, ns / 1e9)
        except Exception:
            operations.failed()


class _Traced(Recorded):
    """A ``threading.Lock`` or ``RLock`` that tells the shim when it is held and waited for.

    The uncontended path keeps the hold on the object itself (``_since``) and in a per-thread
    list in the recorder; the reporter turns it into a hold event only if it lasts
    ``report_after``.  A contended acquire goes through the recorder's wait registry.

    It behaves as the lock it stands for: the same arguments are accepted and refused with
    the same errors (any call other than ``acquire()`` has its arguments checked by a
    fresh lock of the same type first), ``acquire_lock``/``release_lock``/``locked_lock``
    exist, it cannot be copied or pickled, and ``isinstance(lock, _thread.LockType)`` holds
    (through ``__class__``; ``type(lock)`` is this proxy, which Python cannot hide).
    """

    __slots__ = ("__weakref__", "_inner")
    _probe: Any = staticmethod(_thread.allocate_lock)
    """Makes a fresh lock of the inner type, to check a call's arguments exactly as bare."""

    def __init__(self, inner: Any, site: str) -> None:
        super().__init__(site)
        self._inner = inner

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(lock, _thread.LockType) holds
        return type(self._inner)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``."""
        if timeout != -1 or blocking is not True:
            return self._acquire_with(blocking, timeout)
        if not self._inner.acquire(False):
            return self._wait(-1)
        # The lean path, inlined (each call saved is ~0.1 us on a 0.1 us lock): a timestamp
        # on the lock and an append to the thread's list of held locks.
        shim = runtime.current
        if shim is not None:
            context = _context()
            if not (context.get(_SUPPRESS) or context.get(_SUPPRESS_PLAIN)):
                try:
                    self._since = _perf()
                    self._owner = ident = _get_ident()
                    recorder = shim.recorder
                    held = recorder.light.get(ident)
                    if held is None or held or ident in recorder.by_actor:
                        recorder.light_acquired(self, ident)  # first, or nested: order pairs
                    else:
                        held.append(self)
                        self._held = held
                except Exception:
                    operations.failed()
        return True

    def _took(self) -> None:
        """The lock was just taken without waiting (the calls other than ``acquire()``)."""
        shim = runtime.current
        if shim is not None and _enabled():
            self._since = _perf()
            self._owner = ident = _get_ident()
            try:
                shim.recorder.light_acquired(self, ident)
            except Exception:
                operations.failed()

    def _acquire_with(self, blocking: Any, timeout: Any) -> bool:
        # The bare lock's own checks, its own errors (NaN, overflow, a timeout without
        # blocking, wrong types): a fresh lock takes the same arguments first.
        probe = self._probe()
        probe.acquire(blocking, timeout)
        probe.release()
        if self._inner.acquire(False):
            self._took()
            return True
        if not blocking:
            return False
        return self._wait(timeout)

    def _wait(self, timeout: float) -> bool:
        inner = self._inner
        shim = runtime.current
        if shim is None or not _enabled():
            return inner.acquire(True, timeout)  # type: ignore[no-any-return]
        ident = _get_ident()
        try:
            wait = shim.recorder.begin_wait(self.lock_info(), ident, None, self)
        except Exception:
            operations.failed()
            return inner.acquire(True, timeout)  # type: ignore[no-any-return]
        try:
            got = inner.acquire(True, timeout)
        except BaseException:
            try:
                shim.recorder.end_wait(wait, "error", hold=False)
            except Exception:
                operations.failed()
            raise
        try:
            shim.recorder.end_wait(wait, "acquired" if got else "timeout", hold=False)
            if got:
                self._since = _perf()
                self._owner = ident
                self._waited = True  # its acquisition is counted (with its wait)
                shim.recorder.light_acquired(self, ident)
                if wait.reported:  # others may wait for this thread: show the hold now
                    shim.recorder.report_light(self, ident)
        except Exception:
            operations.failed()
        return bool(got)

    def release(self) -> None:
        """As ``threading.Lock.release``."""
        since = self._since
        if since:
            # _released, inlined for the common case (the newest held lock, no reported
            # hold, durations already waiting for the reporter).
            self._since = 0
            held = self._held
            durations = self._durations
            if (
                held
                and held[-1] is self
                and durations
                and not self._waited
                and (self._hold is None)
            ):
                held.pop()
                durations.append(_perf() - since)
            else:
                self._since = since
                self._released(since)
        self._inner.release()

    def locked(self) -> bool:
        """As ``threading.Lock.locked``."""
        return self._inner.locked()  # type: ignore[no-any-return]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _at_fork_reinit(self) -> None:
        self._inner._at_fork_reinit()
        self._since = 0
        self._hold = None

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return self._inner.__reduce_ex__(protocol)  # raises TypeError, as bare

    def __reduce__(self) -> Any:
        return self._inner.__reduce__()

    def __repr__(self) -> str:
        return repr(self._inner)


class TracedLock(_Traced):
    """A traced ``threading.Lock`` (with the lock type's old alias names)."""

    __slots__ = ()

    def acquire_lock(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``_thread.lock.acquire_lock`` (an alias of ``acquire``)."""
        return self.acquire(blocking, timeout)

    def release_lock(self) -> None:
        """As ``_thread.lock.release_lock``."""
        self.release()

    def locked_lock(self) -> bool:
        """As ``_thread.lock.locked_lock``."""
        return self.locked()


class TracedRLock(_Traced):
    """A ``threading.RLock``: only the outermost acquire and release are recorded.

    A release by a thread that does not own it is refused by the inner lock
    (``RuntimeError``) before the shim touches the owner's hold."""

    __slots__ = ("_depth",)
    _reentrant = True
    _probe = staticmethod(_thread.RLock)

    def __init__(self, inner: Any, site: str) -> None:
        super().__init__(inner, site)
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.RLock.acquire``."""
        if self._inner._is_owned():
            got = self._inner.acquire(blocking, timeout)
            self._depth += 1
            return bool(got)
        return super().acquire(blocking, timeout)

    __enter__ = acquire

    def release(self) -> None:
        """As ``threading.RLock.release``."""
        inner = self._inner
        if not inner._is_owned():
            inner.release()  # not ours: the bare RuntimeError, the owner's hold untouched
            return
        if self._depth:
            self._depth -= 1
            inner.release()
            return
        super().release()

    def locked(self) -> bool:
        """Whether any thread holds it (Python 3.14's ``RLock.locked``)."""
        locked = getattr(self._inner, "locked", None)
        if locked is not None:
            return bool(locked())
        return bool(self._inner._is_owned()) or bool(self._since)

    # threading.Condition uses these when present, to release every level at once.
    def _is_owned(self) -> bool:
        return bool(self._inner._is_owned())

    def _recursion_count(self) -> int:
        return int(self._inner._recursion_count())

    def _release_save(self) -> Any:
        if not self._inner._is_owned():
            return self._inner._release_save()  # raises RuntimeError, as bare
        depth = self._depth
        if self._since:
            self._released(self._since)
        self._depth = 0
        return (self._inner._release_save(), depth)

    def _acquire_restore(self, saved: Any) -> None:
        state, depth = saved
        self._inner._acquire_restore(state)
        self._depth = depth
        self._took()


def _factory(proxy: type[_Traced]) -> operations.Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        inner = wrapped(*args, **kwargs)
        try:
            frame = sys._getframe(1)
            if runtime.current is None or not is_app_code(frame.f_code.co_filename):
                return inner
            return proxy(inner, _site(frame))
        except Exception:
            operations.failed()
            return inner

    return wrapper


def instrument(patcher: Patcher) -> None:
    """Make ``threading.Lock()``/``RLock()`` in application code return traced locks."""
    patcher.wrap(threading, "Lock", _factory(TracedLock))
    patcher.wrap(threading, "RLock", _factory(TracedRLock))
