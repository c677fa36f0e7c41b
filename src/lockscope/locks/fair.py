"""A first-come-first-served Redis lock: waiters queue, and a dead waiter drops out.

A plain Redis lock is a free-for-all: whichever waiter polls first after a release wins, so
an unlucky process can starve.  :class:`FairLock` serves waiters in arrival order::

    from lockscope.locks import FairLock

    lock = FairLock("batch-slot", "redis://127.0.0.1:6379/0", ttl=30, waiter_timeout=5)
    with lock:                      # queued behind earlier waiters
        run_batch()

How it works (the approach of Redisson's ``RFairLock``; every step one Lua script, so
atomic on the server, using the server's clock):

* ``<prefix>:{name}:queue`` is a list of waiter ids in arrival order;
  ``<prefix>:{name}:waiters`` a sorted set of each waiter's deadline.
* A waiter's try first prunes waiters whose deadline has passed, then takes the lock if it
  is free and the waiter is at the head of the queue (or the queue is empty); otherwise it
  joins the queue (once) and pushes its own deadline ``waiter_timeout`` ahead.  Waiters
  poll, so a live waiter keeps refreshing its deadline; a waiter that died (SIGKILL, lost
  network, a pause longer than ``waiter_timeout``) stops refreshing and is pruned, so it
  blocks the queue for at most ``waiter_timeout``.  (Redisson instead gives each waiter a
  deadline that adds up along the queue; refreshing one's own deadline is simpler and does
  not depend on how long the holders ahead keep the lock.)
* The lock key, its value (the owner token) and the fence counter are exactly those of
  :class:`~lockscope.locks.redis.RedisLock`, so release, extend, ``holder()`` and the
  fencing token work the same, and the token is bumped in the acquiring script.
* A waiter that gives up (timeout, ``blocking=False``, an exception) leaves the queue at
  once.

Do not mix a :class:`RedisLock` and a :class:`FairLock` on one name: mutual exclusion
holds, but the plain lock jumps the queue.  Needs Redis >= 6.0.6 (``LPOS``).

On ZooKeeper no extra lock is needed: the plain ZooKeeper lock is already FIFO (contenders
are served in the order of their sequential nodes).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, TypeVar, Unpack

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from lockscope.errors import BackendUnavailable
from lockscope.locks._redis_common import decode, new_owner, to_ms
from lockscope.locks._sansio import Call, GiveBack, Invoke, Op, run, run_async
from lockscope.locks.redis import (
    SCRIPTS,
    AsyncRedisLock,
    RedisLock,
    RedisLockOptions,
    _RedisLockCommon,
)

__all__ = ["DEFAULT_WAITER_TIMEOUT", "AsyncFairLock", "FairLock"]

_C = TypeVar("_C")

DEFAULT_WAITER_TIMEOUT = 5.0

# KEYS: 1 lock, 2 fence counter, 3 queue (list), 4 waiter deadlines (zset, ms), 5 tickets.
# ARGV: 1 waiter id (becomes the owner token), 2 lease ms, 3 waiter timeout ms,
#       4 '1' to join the queue when the lock cannot be had, '0' to only try.
# Reply: {1, fencing token} when acquired; {0, position or nil, new ticket or nil} when not.
FAIR_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('ZREM', KEYS[4], stale)
  redis.call('LREM', KEYS[3], 0, stale)
end
local head = redis.call('LINDEX', KEYS[3], 0)
if redis.call('EXISTS', KEYS[1]) == 0 and ((not head) or head == ARGV[1]) then
  if head then
    redis.call('LPOP', KEYS[3])
    redis.call('ZREM', KEYS[4], ARGV[1])
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, redis.call('INCR', KEYS[2])}
end
if ARGV[4] ~= '1' then
  return {0, false, false}
end
local ticket = false
if redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  ticket = redis.call('INCR', KEYS[5])
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {0, redis.call('LPOS', KEYS[3], ARGV[1]), ticket}
"""

# KEYS: 1 queue, 2 waiter deadlines; ARGV: 1 waiter id.
FAIR_LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('LREM', KEYS[1], 0, ARGV[1])
"""


class _FairCommon(_RedisLockCommon[_C]):
    """The queue and every operation (sans-IO) of both flavours."""

    fifo: ClassVar[bool] = True
    """Waiters are served in arrival order (the agent adds queue-order edges)."""

    def __init__(
        self,
        name: str,
        client_or_url: _C | str,
        *,
        waiter_timeout: float = DEFAULT_WAITER_TIMEOUT,
        **options: Unpack[RedisLockOptions],
    ) -> None:
        super().__init__(name, client_or_url, **options)
        self._waiter_ms = to_ms(waiter_timeout, "waiter_timeout")
        self.waiter_timeout = self._waiter_ms / 1000
        # A live waiter must refresh its deadline well before it passes, or it is pruned.
        if self.waiter_timeout < 4 * self.retry_interval:
            raise ValueError(
                f"waiter_timeout ({waiter_timeout}s) must be at least 4 x retry_interval "
                f"({self.retry_interval}s)"
            )
        base = f"{self.prefix}:{{{self.name}}}"
        self._queue_key = f"{base}:queue"
        self._waiters_key = f"{base}:waiters"
        self._ticket_key = f"{base}:ticket"
        self._waiter: str | None = None
        self._join = True
        self._queued = False
        self.queue_position: int | None = None
        """While waiting: how many waiters are ahead of this one (0 = next), as of the
        latest try; ``None`` when not queued."""
        self.ticket: int | None = None
        """While waiting: this waiter's ticket, increasing with arrival order per lock name
        (the ``lockscope.wait.ticket`` event attribute); ``None`` when not queued."""

    def _scripts(self) -> dict[str, str]:
        return {**SCRIPTS, "fair_acquire": FAIR_ACQUIRE, "fair_leave": FAIR_LEAVE}

    def _start_wait(self, blocking: bool, timeout: float | None) -> None:
        self._waiter = new_owner()
        self._join = blocking and timeout != 0
        self._queued = False
        self.queue_position = None
        self.ticket = None

    def _end_wait(self) -> None:
        self._waiter = None
        self._queued = False
        self.queue_position = None
        self.ticket = None

    def _queue_keys(self) -> tuple[str, str]:
        return (self._queue_key, self._waiters_key)

    def _parse(self, reply: Any) -> int | None:
        """The fencing token if acquired; else record the queue place and return None."""
        if int(reply[0]) == 1:
            return int(reply[1])
        if reply[1] is not None:
            self._queued = True
            self.queue_position = int(reply[1])
        if reply[2] is not None:
            self.ticket = int(reply[2])
        return None

    # -- the operations, written once --------------------------------------------------------
    def _fair_op(self, blocking: bool, timeout: float | None, acquire: Any) -> Op[bool]:
        """The whole acquire: ``acquire`` is the polling loop of the flavour's base class,
        trying :meth:`_try_op`; a waiter that ends without the lock leaves the queue."""
        self._start_wait(blocking, timeout)
        try:
            acquired = yield Invoke(acquire, kwargs={"blocking": blocking, "timeout": timeout})
        except GeneratorExit:
            raise
        except BaseException:  # an error, KeyboardInterrupt, a cancellation (GiveBack)
            yield from self._leave_op()
            self._end_wait()
            raise
        if not acquired:
            yield from self._leave_op()
        self._end_wait()
        return bool(acquired)

    def _try_op(self) -> Op[bool]:
        if self._waiter is None:  # _try_acquire called directly, outside acquire()
            self._waiter = new_owner()
        owner = self._waiter
        keys = (self._key, self._fence_key, *self._queue_keys(), self._ticket_key)
        args = (owner, self._ttl_ms, self._waiter_ms, "1" if self._join else "0")
        try:
            (reply,) = yield [Call(0, "fair_acquire", keys, args)]
        except GiveBack:
            # The script may have given us the lock before the cancellation.
            yield self._release_call(owner)
            raise
        token = self._parse(reply)
        return token is not None and self._take(owner, token)

    def _leave_op(self) -> Op[None]:
        if not self._queued or self._waiter is None:
            return
        # Unreachable: our deadline stops being refreshed, and the next try of anyone
        # prunes us from the queue.
        with contextlib.suppress(BackendUnavailable):
            yield [Call(0, "fair_leave", self._queue_keys(), (self._waiter,))]

    def _waiters_op(self) -> Op[list[str]]:
        (values,) = yield [Call(0, "lrange", (self._queue_key,), (0, -1))]
        return [decode(value) for value in values]


class FairLock(_FairCommon[redis.Redis | RedisCluster], RedisLock):
    """A FIFO lease lock on one Redis server, with fencing tokens.

    Parameters as :class:`~lockscope.locks.redis.RedisLock`, plus ``waiter_timeout``:
    seconds after its last try that a waiter which stopped trying (it died) is dropped
    from the queue.  It must comfortably exceed ``retry_interval`` and a client round
    trip; a waiter paused longer than this loses its place and re-queues at the end.
    """

    system: ClassVar[str] = "redis"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Join the queue and take the lock when first in line; see :meth:`Lock.acquire`.

        ``blocking=False`` (or ``timeout=0``) takes the lock only if it is free and nobody
        is queued, without joining the queue.
        """
        return run(self._fair_op(blocking, timeout, super().acquire), self._io.execute)

    def _try_acquire(self) -> bool:
        return run(self._try_op(), self._io.execute)

    def waiters(self) -> list[str]:
        """Waiter ids in queue order (live and not yet pruned)."""
        return run(self._waiters_op(), self._io.execute)


class AsyncFairLock(_FairCommon[redis.asyncio.Redis | redis.asyncio.RedisCluster], AsyncRedisLock):
    """The asyncio flavour of :class:`FairLock`, on ``redis.asyncio.Redis``.

    A waiter task that is cancelled leaves the queue before the cancellation propagates.
    """

    system: ClassVar[str] = "redis"

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Join the queue and take the lock when first in line; see :meth:`FairLock.acquire`."""
        return await run_async(self._fair_op(blocking, timeout, super().acquire), self._io.execute)

    async def _try_acquire(self) -> bool:
        return await run_async(self._try_op(), self._io.execute)

    async def waiters(self) -> list[str]:
        """Waiter ids in queue order (live and not yet pruned)."""
        return await run_async(self._waiters_op(), self._io.execute)
