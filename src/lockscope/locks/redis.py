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

:class:`AsyncRedisLock` is the same lock on ``redis.asyncio.Redis``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

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
    backend_errors,
    client_namespace,
    decode,
    lock_keys,
    new_owner,
    parse_holder,
    sync_client,
    to_ms,
    validate_prefix,
)
from lockscope.locks._redis_eviction import check_eviction, check_eviction_async
from lockscope.locks.base import AsyncLock, Lock, LockMode, _LockCommon, validate_ttl

__all__ = ["AsyncRedisLock", "LockHolder", "RedisLock"]

DEFAULT_TTL = 30.0
DEFAULT_SOCKET_TIMEOUT = 1.0


class _RedisLockCommon(_LockCommon):
    """State and configuration shared by the sync and asyncio flavours."""

    system: ClassVar[str] = "redis"
    mode: LockMode = "exclusive"

    def __init__(
        self,
        name: str,
        *,
        ttl: float,
        blocking_timeout: float | None,
        retry_interval: float,
        prefix: str,
        socket_timeout: float,
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
        self._namespace = ""
        self._eviction_checked = False  # see _redis_eviction: once per object, cheaply

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


class RedisLock(_RedisLockCommon, Lock):
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

    def __init__(
        self,
        name: str,
        client_or_url: redis.Redis | RedisCluster | str,
        *,
        ttl: float = DEFAULT_TTL,
        blocking_timeout: float | None = None,
        retry_interval: float = 0.05,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        super().__init__(
            name,
            ttl=ttl,
            blocking_timeout=blocking_timeout,
            retry_interval=retry_interval,
            prefix=prefix,
            socket_timeout=socket_timeout,
        )
        client: redis.Redis | RedisCluster
        if isinstance(client_or_url, str):
            client = sync_client(client_or_url, self.socket_timeout)
            self._owns_client = True
        elif isinstance(client_or_url, redis.Redis | RedisCluster):
            client = client_or_url
            self._owns_client = False
        else:
            raise TypeError(
                "client_or_url must be a redis URL or a redis.Redis client, not "
                f"{type(client_or_url).__name__} (use AsyncRedisLock for redis.asyncio)"
            )
        self.client = client
        self._namespace = client_namespace(client)
        self._acquire_script = client.register_script(ACQUIRE_COUNTING)
        self._release_script = client.register_script(RELEASE)
        self._extend_script = client.register_script(EXTEND)
        self._holder_script = client.register_script(HOLDER)

    def _try_acquire(self) -> bool:
        if not self._eviction_checked:
            self._eviction_checked = True
            check_eviction(self.client, self.namespace)
        owner = new_owner()
        with backend_errors(self.namespace):
            reply = self._acquire_script(
                keys=[self._key, self._fence_key], args=[owner, self._ttl_ms]
            )
        return self._take(owner, reply)

    def release(self) -> None:
        """Delete the key if it is still ours.

        :raises LockNotOwned: this object does not hold the lock (never acquired, released).
        :raises LockLost: the lease expired, or another owner holds the lock now.
        :raises BackendUnavailable: Redis did not answer; the lock is still considered held,
            so ``release`` may be called again (else the lease frees it after ``ttl``).
        """
        owner = self._check_held()
        with backend_errors(self.namespace):
            released = self._release_script(keys=[self._key], args=[owner])
        if not released:
            raise self._lost("release of")
        self._held = False

    def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now (token-checked ``PEXPIRE``).

        :raises LockNotOwned: not held by this object; :class:`LockLost` if the lease
            expired or another owner holds the lock.
        """
        ms = to_ms(seconds, "seconds")
        owner = self._check_held()
        with backend_errors(self.namespace):
            extended = self._extend_script(keys=[self._key], args=[owner, ms])
        if not extended:
            raise self._lost("extend of")

    def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        with backend_errors(self.namespace):
            return bool(self.client.exists(self._key))

    def owned(self) -> bool:
        """Whether this object holds the lock now (one ``GET``)."""
        if not self._held or self.owner is None:
            return False
        with backend_errors(self.namespace):
            value = self.client.get(self._key)
        if value is None or decode(value) != self.owner:
            self._held = False
        return self._held

    def holder(self) -> LockHolder | None:
        """The current holder's owner token, fencing token and remaining lease, or ``None``.

        One atomic script call: the owner and token always belong to the same holder.
        """
        with backend_errors(self.namespace):
            reply = self._holder_script(keys=[self._key, self._fence_key])
        return parse_holder(reply)

    def close(self) -> None:
        """Close the client if this lock made it from a URL."""
        if self._owns_client:
            self.client.close()


class AsyncRedisLock(_RedisLockCommon, AsyncLock):
    """The asyncio flavour of :class:`RedisLock`, on ``redis.asyncio.Redis``.

    Same parameters and behaviour; every method is a coroutine.
    """

    def __init__(
        self,
        name: str,
        client_or_url: redis.asyncio.Redis | redis.asyncio.RedisCluster | str,
        *,
        ttl: float = DEFAULT_TTL,
        blocking_timeout: float | None = None,
        retry_interval: float = 0.05,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        super().__init__(
            name,
            ttl=ttl,
            blocking_timeout=blocking_timeout,
            retry_interval=retry_interval,
            prefix=prefix,
            socket_timeout=socket_timeout,
        )
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster
        if isinstance(client_or_url, str):
            client = async_client(client_or_url, self.socket_timeout)
            self._owns_client = True
        elif isinstance(client_or_url, redis.asyncio.Redis | redis.asyncio.RedisCluster):
            client = client_or_url
            self._owns_client = False
        else:
            raise TypeError(
                "client_or_url must be a redis URL or a redis.asyncio.Redis client, not "
                f"{type(client_or_url).__name__} (use RedisLock for sync clients)"
            )
        self.client = client
        self._namespace = client_namespace(client)
        self._acquire_script = client.register_script(ACQUIRE_COUNTING)
        self._release_script = client.register_script(RELEASE)
        self._extend_script = client.register_script(EXTEND)
        self._holder_script = client.register_script(HOLDER)

    async def _try_acquire(self) -> bool:
        if not self._eviction_checked:
            self._eviction_checked = True
            await check_eviction_async(self.client, self.namespace)
        owner = new_owner()
        try:
            with backend_errors(self.namespace):
                reply = await self._acquire_script(
                    keys=[self._key, self._fence_key], args=[owner, self._ttl_ms]
                )
        except asyncio.CancelledError:
            # The script may have run before the cancellation: do not leave a key that
            # nobody will release blocking the lock for a whole ttl.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release_script(keys=[self._key], args=[owner]))
            raise
        return self._take(owner, reply)

    async def release(self) -> None:
        """Delete the key if it is still ours; see :meth:`RedisLock.release`."""
        owner = self._check_held()
        with backend_errors(self.namespace):
            released = await self._release_script(keys=[self._key], args=[owner])
        if not released:
            raise self._lost("release of")
        self._held = False

    async def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now; see :meth:`RedisLock.extend`."""
        ms = to_ms(seconds, "seconds")
        owner = self._check_held()
        with backend_errors(self.namespace):
            extended = await self._extend_script(keys=[self._key], args=[owner, ms])
        if not extended:
            raise self._lost("extend of")

    async def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        with backend_errors(self.namespace):
            return bool(await self.client.exists(self._key))

    async def owned(self) -> bool:
        """Whether this object holds the lock now (one ``GET``)."""
        if not self._held or self.owner is None:
            return False
        with backend_errors(self.namespace):
            value = await self.client.get(self._key)
        if value is None or decode(value) != self.owner:
            self._held = False
        return self._held

    async def holder(self) -> LockHolder | None:
        """The current holder; see :meth:`RedisLock.holder`."""
        with backend_errors(self.namespace):
            reply = await self._holder_script(keys=[self._key, self._fence_key])
        return parse_holder(reply)

    async def aclose(self) -> None:
        """Close the client if this lock made it from a URL."""
        if self._owns_client:
            await self.client.aclose()
