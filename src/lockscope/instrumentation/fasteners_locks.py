"""Target: ``fasteners`` inter-process locks (``InterProcessLock`` and
``InterProcessReaderWriterLock``, with their decorators and context managers).

Wrapped: ``InterProcessLock.acquire``/``release`` and the reader-writer lock's
``acquire_read_lock``/``acquire_write_lock``/``release_read_lock``/``release_write_lock``
(``read_lock()``/``write_lock()`` call those).  Identity: system ``file``, namespace the host
name, name the lock file's absolute path; the reader-writer lock holds in mode ``read`` or
``write`` (a writer waits for every reader, a reader for the writer).  A second
``acquire`` of a held ``InterProcessLock`` re-locks the same descriptor without waiting,
and one ``release`` lets go: lockscope records the first.  fasteners locks with
``fcntl.lockf``: the kernel releases them with their process, so a dead holder is no
orphan.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import _file_common, operations
from lockscope.instrumentation._file_common import FileAdapter
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import LockInfo

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"fasteners": ">=0.17,<1"}
"""Tested with 0.20 (its own test suite runs with the shim on in CI)."""

_RW_ATTR = "_lockscope_rw"


class InterProcessAdapter(FileAdapter):
    def path(self, instance: Any) -> Any:
        return instance.path

    def held(self, instance: Any) -> bool:
        return bool(instance.acquired)


class ReaderWriterAdapter(FileAdapter):
    def path(self, instance: Any) -> Any:
        return instance.path

    def mode_info(self, instance: Any, mode: str) -> LockInfo | None:
        infos = instance.__dict__.get(_RW_ATTR)
        if infos is None:
            base = self.info(instance)
            if base is None:
                return None
            infos = instance.__dict__[_RW_ATTR] = {
                m: _file_common.make_info(
                    base.system, base.namespace, base.name, mode=m, process_bound=True, adapter=self
                )
                for m in ("read", "write")
            }
        return infos.get(mode)  # type: ignore[no-any-return]


def _rw_acquire(adapter: ReaderWriterAdapter, mode: str) -> operations.Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not operations.fast_enabled():
            return wrapped(*args, **kwargs)
        try:
            info = adapter.mode_info(instance, mode)
            ref = _file_common.ref_of(instance)
            op = None if info is None else operations.start(adapter, ref, info, None)
        except Exception:
            operations.failed()
            op = None
        if op is None:
            return wrapped(*args, **kwargs)
        result = operations.call_waiting(op, wrapped, args, kwargs)
        blocking = kwargs.get("blocking", args[0] if args else True)
        op.done("acquired" if result else ("timeout" if blocking else "busy"))
        return result

    return wrapper


def _rw_release(adapter: ReaderWriterAdapter, mode: str) -> operations.Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        hold = None
        if operations.fast_enabled():
            try:
                info = adapter.mode_info(instance, mode)
                if info is not None:
                    ref = _file_common.ref_of(instance)
                    hold = operations.find_hold(adapter, ref, info, None)
            except Exception:
                operations.failed()
        if hold is None or hold.info.mode != mode:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            operations.released(adapter, hold.target, hold, exc)
            raise
        operations.released(adapter, hold.target, hold, None)
        return result

    return wrapper


def instrument(patcher: Patcher) -> None:
    """Wrap fasteners' inter-process locks when ``fasteners.process_lock`` is imported."""

    def apply(module: Any) -> None:
        plain = InterProcessAdapter()
        cls = module.InterProcessLock
        patcher.wrap(cls, "acquire", _file_common.acquire_wrapper(plain))
        patcher.wrap(cls, "release", _file_common.release_wrapper(plain))
        rw = ReaderWriterAdapter()
        cls = module.InterProcessReaderWriterLock
        for mode in ("read", "write"):
            patcher.wrap(cls, f"acquire_{mode}_lock", _rw_acquire(rw, mode))
            patcher.wrap(cls, f"release_{mode}_lock", _rw_release(rw, mode))

    patcher.when_imported("fasteners.process_lock", apply)
