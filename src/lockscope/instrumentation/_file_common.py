"""What the file-lock targets share: identity, and wrappers that follow the lock's state.

Identity: system ``file``, namespace the host name, name the lock file's absolute path.
A flock/lockf lock is released by the kernel when its process dies, so its LockInfo says
``process_bound`` (the agent then raises no orphaned-holder finding for a dead holder);
a lock that is a file's existence (``SoftFileLock``) outlives its process and is not.

Reentrancy follows each library: instead of counting calls, the wrappers ask the lock
object whether the calling thread (or task) already holds it.  An acquire it already
holds passes straight through (the outer hold stands); a release ends the hold only when
the lock was held before the call and is not after it, so nested levels, ``force``
releases, releases from a thread that holds nothing, and failed releases all leave the
registry as the library leaves the lock.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import operations
from lockscope.instrumentation._holdref import deref, ref_of
from lockscope.instrumentation.manual import make_info
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.recorder import LockInfo

__all__ = [
    "FileAdapter",
    "acquire_wrapper",
    "async_acquire_wrapper",
    "async_release_wrapper",
    "deref",
    "host",
    "make_info",
    "ref_of",
    "release_wrapper",
]

_host: str | None = None
_current_task = asyncio.current_task


def host() -> str:
    """This machine's name (file locks are local to it)."""
    global _host
    if _host is None:
        _host = socket.gethostname()
    return _host


def absolute(path: Any) -> str:
    """The absolute path of a lock file given as str, bytes or path-like."""
    value: str | bytes = os.fspath(path)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    try:
        return os.path.abspath(value)
    except OSError:  # a relative path while the working directory is gone
        return os.path.normpath(value)


class FileAdapter(Adapter):
    """One file-lock library; subclasses say where the file is and whether it is held."""

    by_key = False
    mode = "exclusive"
    reentrant = False

    def __init__(self, timeout_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.timeout_errors = timeout_errors

    def path(self, instance: Any) -> Any:
        raise NotImplementedError

    def held(self, instance: Any) -> bool:
        """Whether the calling thread (task) holds ``instance`` now."""
        raise NotImplementedError

    def process_bound(self, instance: Any) -> bool:
        return True

    def max_leases(self, instance: Any) -> int | None:
        return None

    # The operations see the lock's HoldRef (filelock releases a lock dropped while held
    # from its __del__: the registry must not keep it alive); ``deref`` gives the lock.
    def info(self, instance: Any) -> LockInfo | None:
        instance = deref(instance)
        if instance is None:
            return None
        return make_info(
            "file",
            host(),
            absolute(self.path(instance)),
            mode=self.mode,
            reentrant=self.reentrant,
            max_leases=self.max_leases(instance),
            process_bound=self.process_bound(instance),
            adapter=self,
        )

    def exc_outcome(self, exc: BaseException) -> str:
        if self.timeout_errors and isinstance(exc, self.timeout_errors):
            return "timeout"
        return super().exc_outcome(exc)


# The library's own "is it held" check is inlined at each use (one Python call less per
# use: a cycle asks three times); when it raises, the library's call decides and nothing is
# recorded.  The suppression check of an acquire is the operation's own (``enter``).


def acquire_wrapper(adapter: FileAdapter) -> operations.Wrapper:
    """A sync acquire: recorded unless the caller holds the lock already."""
    inner = operations.acquire_wrapper(adapter)
    held = adapter.held

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            if held(instance):
                return wrapped(*args, **kwargs)
            ref = ref_of(instance)
        except Exception:
            return wrapped(*args, **kwargs)
        return inner(wrapped, ref, args, kwargs)

    return wrapper


def async_acquire_wrapper(adapter: FileAdapter) -> operations.Wrapper:
    """The asyncio flavour of :func:`acquire_wrapper`."""
    inner = operations.async_acquire_wrapper(adapter)
    held = adapter.held

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            if held(instance):
                return await wrapped(*args, **kwargs)
            ref = ref_of(instance)
        except Exception:
            return await wrapped(*args, **kwargs)
        return await inner(wrapped, ref, args, kwargs)

    return wrapper


def _hold_before(adapter: FileAdapter, instance: Any, task: Any) -> Any:
    """The hold a release may end: the caller's, if the lock is held and not suppressed."""
    try:
        if not adapter.held(instance) or not operations.fast_enabled():
            return None
    except Exception:
        return None
    try:
        ref = ref_of(instance)
        info = operations.lock_info(adapter, ref)
        return None if info is None else operations.find_hold(adapter, ref, info, task)
    except Exception:
        operations.failed()
        return None


def _after(adapter: FileAdapter, instance: Any, hold: Any, exc: BaseException | None) -> None:
    """After a release call (failed or not): end ``hold`` if the lock is no longer held."""
    try:
        if adapter.held(instance):
            return
    except Exception:
        return
    operations.released(adapter, hold.target, hold, exc)


# An interrupt (a signal handler's KeyboardInterrupt) can land in the shim's own look-up
# before the release: filelock completes a release it interrupts, so the release still
# runs before the interrupt goes on.


def release_wrapper(adapter: FileAdapter) -> operations.Wrapper:
    """A sync release: ends the hold once the lock is no longer held."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            hold = _hold_before(adapter, instance, None)
        except BaseException:
            wrapped(*args, **kwargs)
            raise
        if hold is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _after(adapter, instance, hold, exc)
            raise
        _after(adapter, instance, hold, None)
        return result

    return wrapper


def async_release_wrapper(adapter: FileAdapter) -> operations.Wrapper:
    """The asyncio flavour of :func:`release_wrapper`."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            hold = _hold_before(adapter, instance, _current_task())
        except BaseException:
            await wrapped(*args, **kwargs)
            raise
        if hold is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            _after(adapter, instance, hold, exc)
            raise
        _after(adapter, instance, hold, None)
        return result

    return wrapper
