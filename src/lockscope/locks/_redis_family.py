"""What RedisLock, FairLock and Redlock share: client plumbing, and the public methods of
each flavour, which only run the lock's sans-IO operations (:mod:`lockscope.locks._sansio`)
with that flavour's runner and executor.

A lock class is its configuration and operations (``_acquire_op``, ``_release_op``...)
plus :class:`SyncRedisFamily` or :class:`AsyncRedisFamily`; the algorithm exists once.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lockscope.locks._redis_common import (
    LockHolder,
    async_client,
    lock_keys,
    sync_client,
    validate_prefix,
)
from lockscope.locks._redis_servers import AsyncServers, SyncServers
from lockscope.locks._sansio import Op, run, run_async
from lockscope.locks.base import AsyncLock, Lock, _LockCommon

__all__ = ["AsyncRedisFamily", "RedisFamily", "SyncRedisFamily"]


class RedisFamily(_LockCommon):
    """Clients and the operations every Redis-family lock implements."""

    # What a flavour plugs in: its client types, how it makes one from a URL, its executor.
    _client_types: ClassVar[tuple[type, ...]]
    _io_class: ClassVar[type[SyncServers] | type[AsyncServers]]
    _wrong_client: ClassVar[str]
    _owned_clients: list[Any]
    _io: Any  # the flavour's executor: SyncServers or AsyncServers
    prefix: str
    _key: str
    _fence_key: str

    @staticmethod
    def _new_client(url: str, timeout: float) -> Any:
        raise NotImplementedError  # each flavour names its client factory

    def _set_keys(self, prefix: object) -> None:
        """Validate the key ``prefix`` and derive the lock key and its fence-counter key."""
        self.prefix = validate_prefix(prefix)
        self._key, self._fence_key = lock_keys(self.prefix, self.name)

    def _client_of(self, item: object, what: str, timeout: float) -> Any:
        """A client for ``item`` (a URL: made and owned by this lock; or a client)."""
        if isinstance(item, str):
            client = type(self)._new_client(item, timeout)
            self._owned_clients.append(client)
            return client
        if isinstance(item, self._client_types):
            return item
        raise TypeError(
            f"{what} must be a redis URL or a {self._wrong_client}, not {type(item).__name__}"
        )

    def _acquire_op(self) -> Op[bool]:
        raise NotImplementedError

    def _release_op(self) -> Op[None]:
        raise NotImplementedError

    def _extend_op(self, seconds: float) -> Op[None]:
        raise NotImplementedError

    def _locked_op(self) -> Op[bool]:
        raise NotImplementedError

    def _owned_op(self) -> Op[bool]:
        raise NotImplementedError

    def _holder_op(self) -> Op[LockHolder | None]:
        raise NotImplementedError


class SyncRedisFamily(RedisFamily, Lock):
    """The blocking flavour: each call runs the operation with blocking I/O."""

    _io: SyncServers
    _io_class = SyncServers
    _new_client = staticmethod(sync_client)

    def _try_acquire(self) -> bool:
        return run(self._acquire_op(), self._io.execute)

    def release(self) -> None:
        """Delete our key (token-checked; on every server for Redlock).

        :raises LockNotOwned: this object does not hold the lock (never acquired, released).
        :raises LockLost: the lease expired, or another owner holds the lock now (Redlock:
            fewer than a quorum still had our key).
        :raises BackendUnavailable: the server(s) did not answer. A single-server lock is
            then still considered held, so ``release`` may be called again (else the lease
            frees it after ``ttl``); a Redlock counts as released, and the keys left expire
            with the lease.
        """
        run(self._release_op(), self._io.execute)

    def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now (token-checked ``PEXPIRE``).

        :raises LockNotOwned: not held by this object; :class:`LockLost` if the lease
            expired or another owner holds the lock (Redlock: fewer than a quorum could be
            extended within the new validity; the lock is then released everywhere).
        :raises LockError: Redlock's ``max_extensions`` reached.
        :raises BackendUnavailable: too many servers failed to tell; the old lease stands.
        """
        run(self._extend_op(seconds), self._io.execute)

    def locked(self) -> bool:
        """Whether anyone holds the lock now (Redlock: the key is on a quorum)."""
        return run(self._locked_op(), self._io.execute)

    def owned(self) -> bool:
        """Whether this object holds the lock now (one ``GET`` per server; Redlock: with
        validity left and our key on a quorum)."""
        return run(self._owned_op(), self._io.execute)

    def holder(self) -> LockHolder | None:
        """The current holder's owner token, fencing token and remaining lease, or ``None``.

        One atomic script call per server: the owner and token always belong to the same
        holder (Redlock: the owner seen on a quorum, with the highest token among them).
        """
        return run(self._holder_op(), self._io.execute)

    def close(self) -> None:
        """Close the clients this lock made from URLs."""
        for client in self._owned_clients:
            client.close()


class AsyncRedisFamily(RedisFamily, AsyncLock):
    """The asyncio flavour: the same operations, run on the event loop."""

    _io: AsyncServers
    _io_class = AsyncServers
    _new_client = staticmethod(async_client)

    async def _try_acquire(self) -> bool:
        return await run_async(self._acquire_op(), self._io.execute)

    async def release(self) -> None:
        """Delete our key; see :meth:`SyncRedisFamily.release`."""
        await run_async(self._release_op(), self._io.execute)

    async def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now; see :meth:`SyncRedisFamily.extend`."""
        await run_async(self._extend_op(seconds), self._io.execute)

    async def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return await run_async(self._locked_op(), self._io.execute)

    async def owned(self) -> bool:
        """Whether this object holds the lock now."""
        return await run_async(self._owned_op(), self._io.execute)

    async def holder(self) -> LockHolder | None:
        """The current holder; see :meth:`SyncRedisFamily.holder`."""
        return await run_async(self._holder_op(), self._io.execute)

    async def aclose(self) -> None:
        """Close the clients this lock made from URLs."""
        for client in self._owned_clients:
            await client.aclose()
