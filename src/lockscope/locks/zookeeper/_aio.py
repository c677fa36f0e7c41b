"""The asyncio flavours of the ZooKeeper locks: the sync twin's blocking kazoo calls run
off the event loop, and its callbacks are delivered on the loop that acquired."""

from __future__ import annotations

import asyncio
import inspect
import warnings
from typing import Any, ClassVar, TypeVar

from kazoo.client import KazooClient

from lockscope.locks._threaded import (
    CancelHandle,
    Forward,
    SyncTwin,
    acquire_cancel_safe,
    in_thread,
)
from lockscope.locks.base import AsyncLock, validate_timeout
from lockscope.locks.zookeeper._listener import Callback
from lockscope.locks.zookeeper._locks import ZooKeeperLock, ZooKeeperReadLock, ZooKeeperWriteLock
from lockscope.locks.zookeeper._primitive import ZooKeeperHolder, ZooKeeperPrimitive
from lockscope.locks.zookeeper._semaphore import ZooKeeperSemaphore

_S = TypeVar("_S", bound=ZooKeeperPrimitive)
_THREAD = "lockscope-zookeeper-acquire"


class _AsyncZooKeeperPrimitive(SyncTwin[_S], AsyncLock):
    """Runs the sync twin's blocking kazoo calls off the event loop."""

    system: ClassVar[str] = "zookeeper"
    fifo: ClassVar[bool] = True
    max_leases: int | None = None
    """Semaphores only: how many holders at once."""
    _sync_class: ClassVar[type[ZooKeeperPrimitive]]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.mode = cls._sync_class.mode  # a twin has its sync class's mode

    def __init__(
        self,
        client: KazooClient | str,
        name: str,
        *,
        blocking_timeout: float | None = None,
        on_lost: Callback | None = None,
        on_uncertain: Callback | None = None,
        **kw: Any,
    ) -> None:
        self.on_lost = on_lost
        self.on_uncertain = on_uncertain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback_tasks: set[asyncio.Future[Any]] = set()
        sync: Any = self._sync_class(
            client,
            name,
            on_lost=self._relay_lost,
            on_uncertain=self._relay_uncertain,
            **kw,
        )
        self.sync = sync
        super().__init__(sync.path, ttl=None, blocking_timeout=blocking_timeout)
        self.path: str = sync.path
        self.mode = sync.mode
        self.max_leases = sync.max_leases

    # Callbacks arrive on a kazoo thread; run them on the loop that acquired the lock.
    def _relay(self, callback: Callback | None, *args: object) -> None:
        if callback is None:
            return
        loop = self._loop

        def call() -> None:
            result = callback(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callback_tasks.add(task)
                task.add_done_callback(self._callback_tasks.discard)

        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(call)
        else:
            call()

    def _relay_lost(self, _sync: object) -> None:
        self._relay(self.on_lost, self)

    def _relay_uncertain(self, _sync: object, uncertain: bool) -> None:
        self._relay(self.on_uncertain, self, uncertain)

    @property
    def namespace(self) -> str:
        return self.sync.namespace

    client = Forward[Any]("The :class:`kazoo.client.KazooClient` in use.")
    lost = Forward[bool]("See :attr:`ZooKeeperLock.lost`.")
    uncertain = Forward[bool]("See :attr:`ZooKeeperLock.uncertain`.")
    node = Forward[str | None]("See :attr:`ZooKeeperLock.node`.")
    sequence = Forward[int | None]("See :attr:`ZooKeeperLock.sequence`.")
    pending_cleanups = Forward[int]("See :attr:`ZooKeeperLock.pending_cleanups`.")

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; see :meth:`ZooKeeperLock.acquire`.

        Cancelling the awaiting task cancels the wait and removes the contender node
        before the ``CancelledError`` propagates (and gives the lock back if it was
        granted at that instant). If the server does not answer within a second, the
        cancellation propagates anyway and the node is removed when it answers.
        """
        timeout = validate_timeout(timeout)
        self._loop = asyncio.get_running_loop()
        handle = CancelHandle()
        got = await acquire_cancel_safe(
            in_thread(lambda: self.sync._acquire(blocking, timeout, handle), _THREAD),
            self.sync.release,
            interrupt=handle.cancel,
        )
        self.fencing_token = self.sync.fencing_token
        return got

    async def _try_acquire(self) -> bool:
        return await self.acquire(blocking=False)

    async def release(self) -> None:
        """See :meth:`ZooKeeperLock.release`."""
        await self._in_thread(self.sync.release)

    async def extend(self, seconds: float) -> None:
        """See :meth:`ZooKeeperLock.extend`."""
        await self._in_thread(self.sync.extend, seconds)

    async def locked(self) -> bool:
        """See :meth:`ZooKeeperLock.locked`."""
        return await self._in_thread(self.sync.locked)

    async def owned(self) -> bool:
        """See :meth:`ZooKeeperLock.owned`."""
        return await self._in_thread(self.sync.owned)

    async def contenders(self) -> list[str]:
        """See :meth:`ZooKeeperLock.contenders`."""
        return await self._in_thread(self.sync.contenders)

    async def holder_sequence(self) -> int | None:
        """Deprecated: ``(await holder()).fencing_token``."""
        warnings.warn(
            "holder_sequence() is deprecated: use (await holder()).fencing_token",
            DeprecationWarning,
            stacklevel=2,
        )
        found = await self.holder()
        return None if found is None else found.fencing_token

    async def holder(self) -> ZooKeeperHolder | None:
        """See :meth:`ZooKeeperLock.holder`."""
        return await self._in_thread(self.sync.holder)

    owner = Forward[str | None]("See :attr:`ZooKeeperLock.owner`.")

    async def aclose(self) -> None:
        """See :meth:`ZooKeeperLock.close` (``await lock.close()`` is a deprecated alias)."""
        await self._in_thread(self.sync.close)


class AsyncZooKeeperLock(_AsyncZooKeeperPrimitive[ZooKeeperLock]):
    """The asyncio flavour of :class:`ZooKeeperLock` (same arguments)."""

    _sync_class = ZooKeeperLock


class AsyncZooKeeperReadLock(_AsyncZooKeeperPrimitive[ZooKeeperReadLock]):
    """The asyncio flavour of :class:`ZooKeeperReadLock`."""

    _sync_class = ZooKeeperReadLock


class AsyncZooKeeperWriteLock(_AsyncZooKeeperPrimitive[ZooKeeperWriteLock]):
    """The asyncio flavour of :class:`ZooKeeperWriteLock`."""

    _sync_class = ZooKeeperWriteLock


class AsyncZooKeeperSemaphore(_AsyncZooKeeperPrimitive[ZooKeeperSemaphore]):
    """The asyncio flavour of :class:`ZooKeeperSemaphore` (``max_leases`` is required)."""

    _sync_class = ZooKeeperSemaphore
