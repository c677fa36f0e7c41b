"""Base classes for locks that wrap another lock and keep its identity.

:class:`~lockscope.locks.renewal.AutoRenewingLock` and
:class:`~lockscope.locks.retry.RobustLock` add behaviour around a backend lock; to the rest
of lockscope (``acquire_all``'s ordering, the shim's events) they must look like the lock
they wrap: same ``system``, ``namespace``, ``name``, ``mode``.  The wrapped lock is
``wrapped`` (the shim follows it instead of reporting the hold twice); attributes the
wrapper does not define (``key``, ``owner``, ``holder()``...) are read from it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from lockscope.locks.base import AsyncLock, Lock, _LockCommon

__all__ = ["AsyncDelegatingLock", "DelegatingLock"]

_L = TypeVar("_L", bound=Lock)
_A = TypeVar("_A", bound=AsyncLock)


class _Delegation(_LockCommon):
    """What both flavours share: the wrapped lock's identity, its extras and its token."""

    wrapped: Lock | AsyncLock
    _flavour: ClassVar[type[Lock] | type[AsyncLock]]
    """The kind of lock a wrapper of this flavour accepts (checked at run time too: a sync
    lock inside an asyncio wrapper would fail only at the first ``await``)."""

    def __init__(self, lock: Lock | AsyncLock) -> None:
        if not isinstance(lock, self._flavour):
            raise TypeError(
                f"expected a lockscope {self._flavour.__name__}, not {type(lock).__name__}"
            )
        super().__init__(
            lock.name,
            ttl=lock.ttl,
            blocking_timeout=lock.blocking_timeout,
            retry_interval=lock.retry_interval,
        )
        self.wrapped = lock
        # The wrapper *is* the wrapped lock for identity purposes (ordering, events).
        self.system = lock.system  # type: ignore[misc]
        self.mode = lock.mode
        self.fifo: bool = bool(getattr(lock, "fifo", False))

    @property
    def namespace(self) -> str:
        return self.wrapped.namespace

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the wrapper lacks: backend extras (key, owner, holder(),
        # ticket) stay reachable, as on a wrapt proxy.
        if name == "wrapped" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def _acquired(self, ok: bool) -> bool:
        if ok:
            self.fencing_token = self.wrapped.fencing_token
        return ok

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.wrapped!r}>"


class DelegatingLock(_Delegation, Lock, Generic[_L]):
    """A :class:`Lock` that forwards every call to ``wrapped``; subclasses add behaviour."""

    wrapped: _L
    _flavour = Lock

    def __init__(self, lock: _L) -> None:
        super().__init__(lock)

    def _try_acquire(self) -> bool:
        return self._acquired(self.wrapped.acquire(blocking=False))

    def release(self) -> None:
        self.wrapped.release()

    def extend(self, seconds: float) -> None:
        self.wrapped.extend(seconds)

    def locked(self) -> bool:
        return self.wrapped.locked()

    def owned(self) -> bool:
        return self.wrapped.owned()


class AsyncDelegatingLock(_Delegation, AsyncLock, Generic[_A]):
    """The asyncio flavour of :class:`DelegatingLock`."""

    wrapped: _A
    _flavour = AsyncLock

    def __init__(self, lock: _A) -> None:
        super().__init__(lock)

    async def _try_acquire(self) -> bool:
        return self._acquired(await self.wrapped.acquire(blocking=False))

    async def release(self) -> None:
        await self.wrapped.release()

    async def extend(self, seconds: float) -> None:
        await self.wrapped.extend(seconds)

    async def locked(self) -> bool:
        return await self.wrapped.locked()

    async def owned(self) -> bool:
        return await self.wrapped.owned()
