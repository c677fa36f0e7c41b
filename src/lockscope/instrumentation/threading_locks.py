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
from types import TracebackType
from typing import Any

from lockscope.instrumentation import operations, runtime
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import Hold, LockInfo

__all__ = ["TracedLock", "TracedRLock", "instrument", "is_app_code"]

_get_ident = _thread.get_ident
_enabled = operations.is_instrumentation_enabled
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


class TracedLock:
    """A ``threading.Lock`` that tells the shim when it is held and waited for."""

    __slots__ = ("__weakref__", "_gen", "_hold", "_info", "_inner", "_site")
    _system = "threading"
    _reentrant = False

    def __init__(self, inner: Any, site: str) -> None:
        self._inner = inner
        self._site = f"{site}#{next(_counter)}"
        self._info: LockInfo | None = None
        self._gen = -1
        self._hold: Hold | None = None

    def _lock_info(self, shim: runtime.Shim) -> LockInfo:
        info = self._info
        if info is None or self._gen != shim.generation:
            # Per process: a forked child's copy of the lock is another lock.
            info = self._info = LockInfo(
                self._system,
                shim.instance_id,
                self._site,
                self._site.rpartition("#")[0],
                reentrant=self._reentrant,
            )
            self._gen = shim.generation
        return info

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``."""
        inner = self._inner
        shim = runtime.current
        if shim is None or (timeout != -1 and (not blocking or timeout < 0)) or not _enabled():
            return inner.acquire(blocking, timeout)  # type: ignore[no-any-return]
        if inner.acquire(False):
            try:
                self._hold = shim.recorder.acquired(self._lock_info(shim), _get_ident(), None, self)
            except Exception:
                operations.failed()
            return True
        return self._slow_acquire(shim, blocking, timeout)

    def _slow_acquire(self, shim: runtime.Shim, blocking: bool, timeout: float) -> bool:
        inner = self._inner
        try:
            wait = shim.recorder.begin_wait(self._lock_info(shim), _get_ident(), None, self)
        except Exception:
            operations.failed()
            return inner.acquire(blocking, timeout)  # type: ignore[no-any-return]
        if not blocking:
            got = inner.acquire(False)
        else:
            try:
                got = inner.acquire(True, timeout)
            except BaseException:
                shim.recorder.end_wait(wait, "error")
                raise
        outcome = "acquired" if got else ("timeout" if blocking else "busy")
        try:
            self._hold = shim.recorder.end_wait(wait, outcome)
        except Exception:
            operations.failed()
        return bool(got)

    def release(self) -> None:
        """As ``threading.Lock.release``."""
        hold = self._hold
        self._inner.release()
        if hold is not None:
            self._hold = None
            shim = runtime.current
            if shim is not None:
                try:
                    shim.recorder.end_hold(hold)
                except Exception:
                    operations.failed()

    def locked(self) -> bool:
        """As ``threading.Lock.locked``."""
        return self._inner.locked()  # type: ignore[no-any-return]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _at_fork_reinit(self) -> None:
        self._inner._at_fork_reinit()
        self._hold = None

    def __repr__(self) -> str:
        return f"<traced {self._inner!r} {self._site}>"


class TracedRLock(TracedLock):
    """A ``threading.RLock``: only the outermost acquire and release are recorded."""

    __slots__ = ("_depth",)
    _reentrant = True

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
        if self._depth and self._inner._is_owned():
            self._inner.release()
            self._depth -= 1
            return
        super().release()

    def locked(self) -> bool:
        """Whether any thread holds it (Python 3.14's ``RLock.locked``)."""
        locked = getattr(self._inner, "locked", None)
        if locked is not None:
            return bool(locked())
        return bool(self._inner._is_owned()) or self._hold is not None

    # threading.Condition uses these when present, to release every level at once.
    def _is_owned(self) -> bool:
        return bool(self._inner._is_owned())

    def _release_save(self) -> Any:
        hold, depth = self._hold, self._depth
        self._hold, self._depth = None, 0
        state = self._inner._release_save()
        if hold is not None and runtime.current is not None:
            try:
                runtime.current.recorder.end_hold(hold)
            except Exception:
                operations.failed()
        return (state, depth)

    def _acquire_restore(self, saved: Any) -> None:
        state, depth = saved
        self._inner._acquire_restore(state)
        self._depth = depth
        shim = runtime.current
        if shim is not None:
            try:
                self._hold = shim.recorder.acquired(self._lock_info(shim), _get_ident(), None, self)
            except Exception:
                operations.failed()


def _factory(proxy: type[TracedLock]) -> operations.Wrapper:
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
