"""A lease lock on one Redis server, with fencing tokens.

::

    from lockscope.locks import RedisLock

    lock = RedisLock("invoice:42", "redis://127.0.0.1:6379/0", ttl=10)
    with lock:
        storage.write(..., fence=lock.fencing_token)

How it works (every step one Lua script run with redis-py's ``register_script``, so
atomic on the server):

* acquire: ``SET <prefix>:{name} <owner> NX PX <ttl>`` and, in the same script,
  ``INCR <prefix>:{name}:fence``; the new counter value is the fencing token.  ``owner`` is
  128 random bits, fresh for every acquisition.
* release: ``DEL`` only if the key still holds our owner token.
* extend: ``PEXPIRE`` only if the key still holds our owner token.

Both keys carry the hash tag ``{name}``, so they share a Redis Cluster slot.  The fence
counter has no expiry (it must outlive every lease to keep tokens increasing): one small
key per lock name.  Under ``maxmemory`` the server must use ``maxmemory-policy
noeviction``: every other policy may evict the lock key (it has a TTL) during its lease,
so that a second client takes a lock that is still held (``volatile-*`` policies choose
exactly among keys with a TTL).  The first acquire checks the server's policy once and
logs a warning on the ``lockscope.locks`` logger if it can evict lock keys.

:class:`AsyncRedisLock` is the same lock on ``redis.asyncio.Redis``: each operation is
written once, as a sans-IO generator (:mod:`lockscope.locks._sansio`), and each flavour
only runs it with its own executor.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from lockscope.errors import LockLost, LockNotOwned
from lockscope.locks._redis_common import (
    ACQUIRE_COUNTING,
    DEFAULT_PREFIX,
    EXTEND,
    HOLDER,
    RELEASE,
    LockHolder,
    async_client,
    client_namespace,
    decode,
    lock_keys,
    new_owner,
    parse_holder,
    sync_client,
    to_ms,
    validate_prefix,
)
from lockscope.locks._redis_servers import AsyncServers, SyncServers
from lockscope.locks._sansio import Batch, Call, GiveBack, Op, run, run_async
from lockscope.locks.base import AsyncLock, Lock, LockMode, _LockCommon, validate_ttl

__all__ = ["AsyncRedisLock", "LockHolder", "RedisLock"]

DEFAULT_TTL = 30.0
DEFAULT_SOCKET_TIMEOUT = 1.0

SCRIPTS = {"acquire": ACQUIRE_COUNTING, "release": RELEASE, "extend": EXTEND, "holder": HOLDER}

_C = TypeVar("_C")


class _RedisLockCommon(_LockCommon, Generic[_C]):
    """Configuration, state and every operation (sans-IO) of both flavours."""

    system: ClassVar[str] = "redis"
    mode: LockMode = "exclusive"
    # What a flavour plugs in: its client types, how it makes one from a URL, its executor.
    _client_types: ClassVar[tuple[type, ...]]
    _io_class: ClassVar[type[SyncServers] | type[AsyncServers]]
    _wrong_client: ClassVar[str]

    def __init__(
        self,
        name: str,
        client_or_url: _C | str,
        *,
        ttl: float = DEFAULT_TTL,
        blocking_timeout: float | None = None,
        retry_interval: float = 0.05,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        if ttl is None:
            raise TypeError("a Redis lock needs a ttl (seconds); None is not allowed")
        super().__init__(
            name, ttl=ttl, blocking_timeout=blocking_timeout, retry_interval=retry_interval
        )
        self.prefix = validate_prefix(prefix)
        self.socket_timeout = validate_ttl(socket_timeout, "socket_timeout")
        self._ttl_ms = to_ms(ttl)
        self._key, self._fence_key = lock_keys(self.prefix, self.name)
        self.owner: str | None = None
        """Owner token of this object's latest acquisition (what the server stores)."""
        self._held = False
        if isinstance(client_or_url, str):
            client = type(self)._new_client(client_or_url, self.socket_timeout)
            self._owns_client = True
        elif isinstance(client_or_url, self._client_types):
            client = client_or_url
            self._owns_client = False
        else:
            raise TypeError(
                f"client_or_url must be a redis URL or a {self._wrong_client}, not "
                f"{type(client_or_url).__name__}"
            )
        self.client: _C = client
        self._namespace = client_namespace(client)
        self._io = self._io_class([client], self._scripts())

    @staticmethod
    def _new_client(url: str, timeout: float) -> Any:
        raise NotImplementedError  # each flavour names its client factory

    def _scripts(self) -> dict[str, str]:
        return SCRIPTS

    @property
    def namespace(self) -> str:
        """``host:port/db`` of the Redis server."""
        return self._namespace

    @property
    def key(self) -> str:
        """The Redis key of the lock; the fence counter lives at ``key + ":fence"``."""
        return self._key

    def _take(self, owner: str, reply: Any) -> bool:
        token = int(reply)
        if token <= 0:
            return False
        self.owner, self.fencing_token, self._held = owner, token, True
        return True

    def _check_held(self) -> str:
        if not self._held or self.owner is None:
            raise LockNotOwned(f"{self.name!r} is not held by this lock object")
        return self.owner

    def _lost(self, what: str) -> LockLost:
        self._held = False
        return LockLost(
            f"{what} {self.name!r} at {self.namespace}: the lease expired or another "
            f"owner holds it (our fencing token was {self.fencing_token})"
        )

    # -- the operations, written once --------------------------------------------------------
    def _release_call(self, owner: str) -> Batch:
        return [Call(0, "release", (self._key,), (owner,))]

    def _acquire_op(self) -> Op[bool]:
        owner = new_owner()
        try:
            (reply,) = yield [
                Call(0, "acquire", (self._key, self._fence_key), (owner, self._ttl_ms))
            ]
        except GiveBack:
            # The script may have run before the cancellation: do not leave a key that
            # nobody will release blocking the lock for a whole ttl.
            yield self._release_call(owner)
            raise
        return self._take(owner, reply)

    def _release_op(self) -> Op[None]:
        owner = self._check_held()
        (released,) = yield self._release_call(owner)
        if not released:
            raise self._lost("release of")
        self._held = False

    def _extend_op(self, seconds: float) -> Op[None]:
        ms = to_ms(seconds, "seconds")
        owner = self._check_held()
        (extended,) = yield [Call(0, "extend", (self._key,), (owner, ms))]
        if not extended:
            raise self._lost("extend of")

    def _locked_op(self) -> Op[bool]:
        (found,) = yield [Call(0, "exists", (self._key,))]
        return bool(found)

    def _owned_op(self) -> Op[bool]:
        if not self._held or self.owner is None:
            return False
        (value,) = yield [Call(0, "get", (self._key,))]
        if value is None or decode(value) != self.owner:
            self._held = False
        return self._held

    def _holder_op(self) -> Op[LockHolder | None]:
        (reply,) = yield [Call(0, "holder", (self._key, self._fence_key))]
        return parse_holder(reply)


class RedisLock(_RedisLockCommon[redis.Redis | RedisCluster], Lock):
    """An exclusive lease lock on one Redis server, with a fencing token per acquisition.

    :param name: lock name; the key is ``<prefix>:{name}``.
    :param client_or_url: a ``redis.Redis`` (or ``RedisCluster``) client, or a URL from
        which one is made with ``socket_timeout`` and no retries.
    :param ttl: lease in seconds; the lock frees itself this long after the last
        acquire/extend unless released.
    :param blocking_timeout: how long ``with lock:`` waits before raising
        :class:`~lockscope.errors.LockNotAcquired` (``None`` = forever).
    :param retry_interval: mean pause between acquire attempts while the lock is busy.
    :param prefix: key prefix (no braces).
    :param socket_timeout: connect/read timeout of a client made from a URL: every call
        then fails with :class:`~lockscope.errors.BackendUnavailable` within about this
        long.  A client you pass keeps its own timeouts.

    One lock object stands for one holder: share the name, not the object, between
    threads or processes.
    """

    _client_types = (redis.Redis, RedisCluster)
    _new_client = staticmethod(sync_client)
    _io_class = SyncServers
    _wrong_client = "redis.Redis client (use AsyncRedisLock for redis.asyncio)"
    _io: SyncServers

    def _try_acquire(self) -> bool:
        return run(self._acquire_op(), self._io.execute)

    def release(self) -> None:
        """Delete the key if it is still ours.

        :raises LockNotOwned: this object does not hold the lock (never acquired, released).
        :raises LockLost: the lease expired, or another owner holds the lock now.
        :raises BackendUnavailable: Redis did not answer; the lock is still considered held,
            so ``release`` may be called again (else the lease frees it after ``ttl``).
        """
        run(self._release_op(), self._io.execute)

    def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now (token-checked ``PEXPIRE``).

        :raises LockNotOwned: not held by this object; :class:`LockLost` if the lease
            expired or another owner holds the lock.
        """
        run(self._extend_op(seconds), self._io.execute)

    def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return run(self._locked_op(), self._io.execute)

    def owned(self) -> bool:
        """Whether this object holds the lock now (one ``GET``)."""
        return run(self._owned_op(), self._io.execute)

    def holder(self) -> LockHolder | None:
        """The current holder's owner token, fencing token and remaining lease, or ``None``.

        One atomic script call: the owner and token always belong to the same holder.
        """
        return run(self._holder_op(), self._io.execute)

    def close(self) -> None:
        """Close the client if this lock made it from a URL."""
        if self._owns_client:
            self.client.close()


class AsyncRedisLock(_RedisLockCommon[redis.asyncio.Redis | redis.asyncio.RedisCluster], AsyncLock):
    """The asyncio flavour of :class:`RedisLock`, on ``redis.asyncio.Redis``.

    Same parameters and behaviour; every method is a coroutine. An acquire cancelled
    while its script is in flight deletes the key it may have set.
    """

    _client_types = (redis.asyncio.Redis, redis.asyncio.RedisCluster)
    _new_client = staticmethod(async_client)
    _io_class = AsyncServers
    _wrong_client = "redis.asyncio.Redis client (use RedisLock for sync clients)"
    _io: AsyncServers

    async def _try_acquire(self) -> bool:
        return await run_async(self._acquire_op(), self._io.execute)

    async def release(self) -> None:
        """Delete the key if it is still ours; see :meth:`RedisLock.release`."""
        await run_async(self._release_op(), self._io.execute)

    async def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now; see :meth:`RedisLock.extend`."""
        await run_async(self._extend_op(seconds), self._io.execute)

    async def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return await run_async(self._locked_op(), self._io.execute)

    async def owned(self) -> bool:
        """Whether this object holds the lock now (one ``GET``)."""
        return await run_async(self._owned_op(), self._io.execute)

    async def holder(self) -> LockHolder | None:
        """The current holder; see :meth:`RedisLock.holder`."""
        return await run_async(self._holder_op(), self._io.execute)

    async def aclose(self) -> None:
        """Close the client if this lock made it from a URL."""
        if self._owns_client:
            await self.client.aclose()
