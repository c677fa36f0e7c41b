"""Target: ``filelock`` (``FileLock``/``UnixFileLock``, ``SoftFileLock`` and their asyncio
flavours ``AsyncFileLock``/``AsyncUnixFileLock``/``AsyncSoftFileLock``, and every other
subclass of ``BaseFileLock``/``BaseAsyncFileLock``).

Wrapped: ``acquire`` and ``release`` of ``filelock.BaseFileLock`` and
``filelock.asyncio.BaseAsyncFileLock``.  Identity: system ``file``, namespace the host
name, name the absolute path of ``lock_file``.  Reentrancy is filelock's: a lock object
counts its levels (per thread unless ``thread_local=False``); lockscope records the outer
acquire and ends the hold when the last level (or a ``force`` release) lets go.
``Timeout`` is a ``timeout`` (``busy`` for ``blocking=False``).  Soft locks (the file's
existence is the lock) outlive a crashed holder: the agent reports them orphaned; the
others are flock locks the kernel releases with their process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import _file_common
from lockscope.instrumentation._file_common import FileAdapter
from lockscope.instrumentation.patching import Patcher

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"filelock": ">=3.12,<5"}
"""Tested with 4.3.1 (its own test suite runs with the shim on in CI)."""


class FilelockAdapter(FileAdapter):
    reentrant = True

    def __init__(self, timeout_errors: tuple[type[BaseException], ...], soft: Any) -> None:
        super().__init__(timeout_errors)
        self.soft = soft

    def path(self, instance: Any) -> Any:
        return instance.lock_file

    def held(self, instance: Any) -> bool:
        return bool(instance.is_locked)

    def process_bound(self, instance: Any) -> bool:
        return not isinstance(instance, self.soft)

    def blocking(self, instance: Any, args: Any, kwargs: Any) -> bool:
        blocking = kwargs.get("blocking")
        if blocking is None:
            blocking = getattr(_file_common.deref(instance), "blocking", True)
        return bool(blocking)


def _spelling_fixed(wrapper: Any) -> Any:
    """filelock warns about the deprecated ``poll_intervall`` with a fixed stacklevel that
    would name the shim's frame: the warning is given here, naming the caller's line, and
    the call goes on with ``poll_interval`` (which ``poll_intervall`` overrides)."""

    def acquire(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if kwargs.get("poll_intervall") is not None:
            kwargs = dict(kwargs)
            interval = kwargs.pop("poll_intervall")
            warnings.warn(
                "use poll_interval instead of poll_intervall", DeprecationWarning, stacklevel=2
            )
            if len(args) >= 2:
                args = (args[0], interval, *args[2:])
            else:
                kwargs["poll_interval"] = interval
        return wrapper(wrapped, instance, args, kwargs)

    return acquire


def instrument(patcher: Patcher) -> None:
    """Wrap filelock's sync and asyncio base classes when they are imported."""

    def sync(module: Any) -> None:
        adapter = FilelockAdapter((module.Timeout,), module.SoftFileLock)
        acquire = _spelling_fixed(_file_common.acquire_wrapper(adapter))
        patcher.wrap(module.BaseFileLock, "acquire", acquire)
        patcher.wrap(module.BaseFileLock, "release", _file_common.release_wrapper(adapter))

    def asynchronous(module: Any) -> None:
        import filelock

        adapter = FilelockAdapter((filelock.Timeout,), filelock.SoftFileLock)
        cls = module.BaseAsyncFileLock
        patcher.wrap(cls, "acquire", _file_common.async_acquire_wrapper(adapter))
        patcher.wrap(cls, "release", _file_common.async_release_wrapper(adapter))

    patcher.when_imported("filelock", sync)
    patcher.when_imported("filelock.asyncio", asynchronous)
