"""Target: ``portalocker`` (``Lock``, ``RLock``, ``BoundedSemaphore`` and
``NamedBoundedSemaphore``; ``TemporaryFileLock``/``PidFileLock`` through ``Lock``).

Wrapped: ``acquire`` and ``release`` of ``portalocker.utils.Lock``, ``RLock`` and
``BoundedSemaphore``.  Identity: system ``file``, namespace the host name, name the lock
file's absolute path; a semaphore is named after its slot files with ``*`` for the slot
number (``/tmp/jobs.*.lock``), mode ``semaphore`` with ``maximum`` permits.  Reentrancy is
portalocker's: ``Lock.acquire`` on a held lock hands back the same file handle and one
``release`` lets go; ``RLock`` counts its levels.  ``AlreadyLocked`` is a ``timeout``
(``busy`` with ``fail_when_locked``).  An RLock's inner ``Lock`` and a semaphore's slot
locks are recorded once, as the outer object.  portalocker locks with ``flock``/``lockf``:
the kernel releases them with their process, so a dead holder is no orphan.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import wrapt

from lockscope.instrumentation import _file_common, operations
from lockscope.instrumentation._file_common import FileAdapter
from lockscope.instrumentation.patching import Patcher

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"portalocker": ">=2.7,<5"}
"""Tested with 4.4.2 (its own test suite runs with the shim on in CI)."""

_NUMBER = re.compile(r"\{number[^}]*\}")


class PortalockerAdapter(FileAdapter):
    def path(self, instance: Any) -> Any:
        return instance.filename

    def held(self, instance: Any) -> bool:
        return instance.fh is not None

    def blocking(self, instance: Any, args: Any, kwargs: Any) -> bool:
        fail = kwargs.get("fail_when_locked", args[2] if len(args) > 2 else None)
        if fail is None:
            fail = getattr(_file_common.deref(instance), "fail_when_locked", False)
        return not fail


class RLockAdapter(PortalockerAdapter):
    reentrant = True

    def held(self, instance: Any) -> bool:
        return bool(instance._acquire_count)


class SemaphoreAdapter(PortalockerAdapter):
    mode = "semaphore"

    def path(self, instance: Any) -> Any:
        pattern = _NUMBER.sub("*", str(instance.filename_pattern))
        return f"{instance.directory}/{pattern.format(name=instance.name)}"

    def held(self, instance: Any) -> bool:
        return instance.lock is not None

    def max_leases(self, instance: Any) -> int | None:
        return int(instance.maximum)


_OURS = (os.path.dirname(operations.__file__), os.path.dirname(wrapt.__file__))


def _stacklevel(module_file: str) -> operations.Wrapper:
    """portalocker's ``_stacklevel_beyond_module`` skips its own frames so a warning names
    the app's line; the shim's wrapper frames must be skipped too (else the warning names
    lockscope).  The same walk, with lockscope's and wrapt's frames counted as portalocker's."""

    def stacklevel(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            frame: Any = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(_OURS):
                frame = frame.f_back  # wrapt's own frames, if any, between us and the caller
            level = 1
            while frame is not None and (
                frame.f_code.co_filename == module_file
                or frame.f_code.co_filename.startswith(_OURS)
            ):
                level += 1
                frame = frame.f_back
            return level
        except Exception:
            operations.failed()
            return wrapped(*args, **kwargs)

    return stacklevel


def instrument(patcher: Patcher) -> None:
    """Wrap portalocker's locks when ``portalocker.utils`` is imported."""

    def apply(module: Any) -> None:
        from portalocker import exceptions

        errors = (exceptions.AlreadyLocked,)
        for cls, adapter in (
            (module.Lock, PortalockerAdapter(errors)),
            (module.RLock, RLockAdapter(errors)),
            (module.BoundedSemaphore, SemaphoreAdapter(errors)),
        ):
            acquire = operations.guarded(_file_common.acquire_wrapper(adapter))
            release = operations.guarded(_file_common.release_wrapper(adapter))
            patcher.wrap(cls, "acquire", acquire)
            patcher.wrap(cls, "release", release)
        if hasattr(module, "_stacklevel_beyond_module"):
            patcher.wrap(module, "_stacklevel_beyond_module", _stacklevel(module.__file__))

    patcher.when_imported("portalocker.utils", apply)
