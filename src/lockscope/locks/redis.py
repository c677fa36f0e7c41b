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
exactly among keys with a TTL).  The first call to the server checks its policy once and
logs a warning on the ``lockscope.locks`` logger if it can evict lock keys.

:class:`AsyncRedisLock` is the same lock on ``redis.asyncio.Redis``: each operation is
written once, as a sans-IO generator (:mod:`lockscope.locks._sansio`), and each flavour
only runs it with its own executor.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypedDict, TypeVar

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
    client_namespace,
    decode,
    new_owner,
    parse_holder,
    to_ms,
)
from lockscope.locks._redis_family import AsyncRedisFamily, RedisFamily, SyncRedisFamily
from lockscope.locks._sansio import Batch, Call, GiveBack, Op
from lockscope.locks.base import validate_ttl

__all__ = ["AsyncRedisLock", "LockHolder", "RedisLock"]

DEFAULT_TTL = 30.0
DEFAULT_SOCKET_TIMEOUT = 1.0

SCRIPTS = {"acquire": ACQUIRE_COUNTING, "release": RELEASE, "extend": EXTEND, "holder": HOLDER}

_C = TypeVar("_C")


class RedisLockOptions(TypedDict, total=False):
    """:class:`RedisLock`'s keyword arguments (for the locks built on it, like FairLock)."""

    ttl: float
    blocking_timeout: float | None
    retry_interval: float
    prefix: str
    socket_timeout: float


class _RedisLockCommon(RedisFamily, Generic[_C]):
    """Configuration, state and every operation (sans-IO) of both flavours."""

    system: ClassVar[str] = "redis"

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
        self._set_keys(prefix)
        self.socket_timeout = validate_ttl(socket_timeout, "socket_timeout")
        self._ttl_ms = to_ms(ttl)
        self.owner: str | None = None
        """Owner token of this object's latest acquisition (what the server stores)."""
        self._held = False
        self._owned_clients: list[Any] = []
        client = self._client_of(client_or_url, "client_or_url", self.socket_timeout)
        self.client: _C = client
        self._namespace = client_namespace(client)
        self._io = self._io_class([client], self._scripts())

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


class RedisLock(_RedisLockCommon[redis.Redis | RedisCluster], SyncRedisFamily):
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
    _wrong_client = "redis.Redis client (use AsyncRedisLock for redis.asyncio)"


class AsyncRedisLock(
    _RedisLockCommon[redis.asyncio.Redis | redis.asyncio.RedisCluster], AsyncRedisFamily
):
    """The asyncio flavour of :class:`RedisLock`, on ``redis.asyncio.Redis``.

    Same parameters and behaviour; every method is a coroutine. An acquire cancelled
    while its script is in flight deletes the key it may have set.
    """

    _client_types = (redis.asyncio.Redis, redis.asyncio.RedisCluster)
    _wrong_client = "redis.asyncio.Redis client (use RedisLock for sync clients)"
