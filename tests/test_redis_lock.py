"""RedisLock and AsyncRedisLock against a real redis-server (fixtures ``redis_server``,
``redis_url``).  Worker processes: tests/redis_lock_worker.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from fencing import held_token
from lockscope.errors import BackendUnavailable, LockLost, LockNotAcquired, LockNotOwned
from lockscope.locks import RedisLock as LazyRedisLock
from lockscope.locks._redis_common import ACQUIRE_COUNTING
from lockscope.locks.aio import RedisLock as LazyAsyncRedisLock
from lockscope.locks.redis import AsyncRedisLock, RedisLock
from lockscope.testing import faults
from lockscope.testing.server import free_port
from polling import wait_until
from redis_lock_worker import Holder, run_counting


def unique(prefix: str = "lock") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def async_wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- the basics ------------------------------------------------------------------------------


def test_exports_and_identity(redis_server: Any, redis_url: str) -> None:
    assert LazyRedisLock is RedisLock
    assert LazyAsyncRedisLock is AsyncRedisLock
    lock = RedisLock("orders", redis_url)
    assert lock.system == "redis"
    assert lock.mode == "exclusive"
    assert lock.namespace == f"{redis_server.host}:{redis_server.port}/0"
    assert lock.key == "lockscope:{orders}"
    assert RedisLock("orders", redis_url, prefix="app").key == "app:{orders}"


def test_acquire_release_and_holder(redis_url: str) -> None:
    name = unique()
    lock = RedisLock(name, redis_url, ttl=10)
    assert lock.holder() is None
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    assert lock.owned()
    holder = lock.holder()
    assert holder is not None
    assert holder.owner == lock.owner
    assert holder.fencing_token == lock.fencing_token
    assert holder.ttl is not None
    assert 0 < holder.ttl <= 10
    other = RedisLock(name, redis_url, ttl=10)
    assert not other.acquire(blocking=False)
    assert not other.acquire(timeout=0.05)
    assert not other.owned()
    lock.release()
    assert not lock.locked()
    assert not lock.owned()
    assert lock.holder() is None
    with pytest.raises(LockNotOwned):
        lock.release()
    with pytest.raises(LockNotOwned):
        lock.extend(1)


def test_release_without_acquire_raises(redis_url: str) -> None:
    lock = RedisLock(unique(), redis_url)
    with pytest.raises(LockNotOwned):
        lock.release()
    with pytest.raises(LockNotOwned):
        lock.extend(1)


def test_context_manager_raises_when_busy(redis_url: str) -> None:
    name = unique()
    with RedisLock(name, redis_url) as held:
        assert held.owned()
        with pytest.raises(LockNotAcquired):  # noqa: SIM117 - the inner with is under test
            with RedisLock(name, redis_url, blocking_timeout=0.1):
                pass
    assert not held.locked()


def test_fencing_tokens_increase_per_name(redis_url: str) -> None:
    name = unique()
    tokens = []
    for _ in range(5):
        lock = RedisLock(name, redis_url)
        assert lock.acquire()
        tokens.append(held_token(lock))
        lock.release()
    assert tokens == sorted(set(tokens))
    other = RedisLock(unique(), redis_url)
    assert other.acquire()
    assert other.fencing_token == 1  # counters are per name
    other.release()


def test_extend_sets_remaining_lease(redis_url: str) -> None:
    lock = RedisLock(unique(), redis_url, ttl=1)
    assert lock.acquire()
    lock.extend(60)
    holder = lock.holder()
    assert holder is not None
    assert holder.ttl is not None
    assert holder.ttl > 30
    lock.extend(0.5)
    holder = lock.holder()
    assert holder is not None
    assert holder.ttl is not None
    assert holder.ttl <= 0.5
    lock.release()


def test_owner_is_fresh_per_acquisition(redis_url: str) -> None:
    lock = RedisLock(unique(), redis_url)
    assert lock.acquire()
    first = lock.owner
    lock.release()
    assert lock.acquire()
    assert lock.owner != first
    lock.release()


def test_works_with_a_decoding_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    lock = RedisLock(unique(), client)
    assert lock.acquire()
    assert lock.owned()
    holder = lock.holder()
    assert holder is not None
    assert holder.owner == lock.owner
    lock.release()


# -- lease expiry and lost locks -----------------------------------------------------------------


def test_lease_expiry_then_release_and_extend_raise(redis_url: str) -> None:
    name = unique()
    old = RedisLock(name, redis_url, ttl=0.2)
    assert old.acquire()
    wait_until(lambda: old.holder() is None)  # the lease ran out; old was not told
    new = RedisLock(name, redis_url, ttl=10)
    assert new.acquire(blocking=False)
    assert new.fencing_token is not None
    assert old.fencing_token is not None
    assert new.fencing_token > old.fencing_token
    with pytest.raises(LockLost):
        old.extend(10)
    with pytest.raises(LockNotOwned):  # it now knows it does not hold the lock
        old.release()
    assert not old.owned()
    assert new.owned()  # the old holder's calls did not touch the new lease
    new.release()


def test_expired_lease_release_raises_lock_lost(redis_url: str) -> None:
    lock = RedisLock(unique(), redis_url, ttl=0.1)
    assert lock.acquire()
    wait_until(lambda: not lock.locked())
    with pytest.raises(LockLost):
        lock.release()


def test_paused_holder_process_loses_the_lock(redis_url: str) -> None:
    """Kleppmann's scenario: the holder stalls past its lease, another process takes over
    with a higher token, and the stalled one learns it lost the lock at its next call."""
    name = unique()
    holder = Holder("redis", [redis_url], name, ttl=0.3)
    try:
        with faults.paused(holder.pid):
            successor = RedisLock(name, redis_url, ttl=30, retry_interval=0.01)
            assert successor.acquire(timeout=10)
            assert successor.fencing_token is not None
            assert successor.fencing_token > holder.token
            seen = successor.holder()
            assert seen is not None
            assert seen.owner == successor.owner != holder.owner
        result = holder.finish()
        assert result == {"extend": "LockLost", "release": "LockNotOwned"}
        assert successor.owned()
        successor.release()
    finally:
        holder.close()


# -- contention across processes -----------------------------------------------------------------


def test_mutual_exclusion_across_processes(redis_url: str) -> None:
    processes, iterations = 4, 25
    counter, tokens = run_counting("redis", [redis_url], redis_url, processes, iterations)
    assert counter == processes * iterations  # no lost update
    assert len(tokens) == processes * iterations
    assert all(a < b for a, b in itertools.pairwise(tokens))


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"), [("", ValueError), ("  ", ValueError), (42, TypeError), (None, TypeError)]
)
def test_bad_names(redis_url: str, name: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        RedisLock(name, redis_url)


@pytest.mark.parametrize(
    ("ttl", "error"),
    [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), ("10", TypeError),
     (True, TypeError), (None, TypeError)],
)  # fmt: skip
def test_bad_ttl(redis_url: str, ttl: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        RedisLock("x", redis_url, ttl=ttl)


def test_bad_timeouts_and_clients(redis_url: str) -> None:
    with pytest.raises(TypeError):
        RedisLock("x", redis_url, blocking_timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blocking_timeout"):
        RedisLock("x", redis_url, blocking_timeout=-1)
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisLock("x", redis_url, socket_timeout=0)
    with pytest.raises(TypeError):
        RedisLock("x", 6379)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncRedisLock"):
        RedisLock("x", redis.asyncio.Redis.from_url(redis_url))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        RedisLock("x", redis_url, prefix="a{b}")
    lock = RedisLock("x", redis_url)
    with pytest.raises(TypeError):
        lock.acquire(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(timeout=-1)
    assert lock.acquire()
    with pytest.raises(ValueError, match="seconds"):
        lock.extend(0)
    with pytest.raises(TypeError):
        lock.extend("5")  # type: ignore[arg-type]
    lock.release()


# -- a server that is down ---------------------------------------------------------------


def test_nothing_listening_is_backend_unavailable() -> None:
    lock = RedisLock("x", f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    for call in (lock.acquire, lock.locked, lock.holder):
        with pytest.raises(BackendUnavailable):
            call()
    assert lock.fencing_token is None


def test_paused_server_fails_within_socket_timeout(redis_server: Any, redis_url: str) -> None:
    timeout = 0.3
    lock = RedisLock(unique(), redis_url, ttl=1, socket_timeout=timeout)
    assert lock.acquire()
    with faults.paused(redis_server.pid):
        for call in (lock.acquire, lock.release, lambda: lock.extend(5), lock.locked):
            start = time.monotonic()
            with pytest.raises(BackendUnavailable):
                call()
            # bounded by the socket timeout, not redis-py's 5 s default or a hang
            assert time.monotonic() - start < timeout * 10
    # A failed release leaves the lock held locally, so it can be retried.  (The server
    # may still run the timed-out commands once resumed, so either outcome is fine.)
    with contextlib.suppress(LockNotOwned):
        lock.release()
    assert lock.acquire(timeout=10)
    lock.release()


def test_works_again_after_a_restart(redis_server: Any, redis_url: str) -> None:
    lock = RedisLock(unique(), redis_url, socket_timeout=0.5)
    assert lock.acquire()
    lock.release()
    redis_server.kill()
    with pytest.raises(BackendUnavailable):
        lock.acquire()
    redis_server.start()
    assert lock.acquire()
    lock.release()


# -- asyncio -------------------------------------------------------------------------------


async def test_async_acquire_extend_release(redis_url: str) -> None:
    name = unique()
    lock = AsyncRedisLock(name, redis_url, ttl=5)
    try:
        assert lock.system == "redis"
        assert await lock.acquire()
        assert await lock.owned()
        assert await lock.locked()
        holder = await lock.holder()
        assert holder is not None
        assert holder.owner == lock.owner
        assert holder.fencing_token == lock.fencing_token
        other = AsyncRedisLock(name, redis_url)
        assert not await other.acquire(blocking=False)
        await lock.extend(30)
        holder = await lock.holder()
        assert holder is not None
        assert holder.ttl is not None
        assert holder.ttl > 10
        await lock.release()
        assert not await lock.locked()
        with pytest.raises(LockNotOwned):
            await lock.release()
        assert await other.acquire(blocking=False)
        assert other.fencing_token is not None
        assert lock.fencing_token is not None
        assert other.fencing_token > lock.fencing_token
        await other.release()
        await other.aclose()
    finally:
        await lock.aclose()


async def test_async_context_manager_and_client(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    name = unique()
    async with AsyncRedisLock(name, client) as held:
        assert await held.owned()
        with pytest.raises(LockNotAcquired):
            async with AsyncRedisLock(name, client, blocking_timeout=0.05):
                pass
    assert not await held.locked()
    with pytest.raises(TypeError, match="RedisLock"):
        AsyncRedisLock(name, redis.Redis.from_url(redis_url))  # type: ignore[arg-type]
    await client.aclose()


async def test_async_contention_between_tasks(redis_url: str) -> None:
    name, counter = unique(), unique("counter")
    data = redis.asyncio.Redis.from_url(redis_url)
    tokens: list[int] = []

    async def worker() -> None:
        lock = AsyncRedisLock(name, redis_url, retry_interval=0.005, blocking_timeout=30)
        for _ in range(10):
            async with lock:
                value = int(await data.get(counter) or 0)
                await asyncio.sleep(0.002)  # give the other tasks a chance to interleave
                await data.set(counter, value + 1)
                tokens.append(lock.fencing_token or 0)
        await lock.aclose()

    await asyncio.gather(*(worker() for _ in range(5)))
    assert int(await data.get(counter) or 0) == 50
    assert all(a < b for a, b in itertools.pairwise(tokens))
    await data.aclose()


async def test_async_lease_expiry(redis_url: str) -> None:
    name = unique()
    old = AsyncRedisLock(name, redis_url, ttl=0.2)
    new = AsyncRedisLock(name, redis_url, ttl=10)
    assert await old.acquire()
    assert await new.acquire(timeout=10)
    assert new.fencing_token is not None
    assert old.fencing_token is not None
    assert new.fencing_token > old.fencing_token
    with pytest.raises(LockLost):
        await old.extend(5)
    assert await new.owned()
    await new.release()
    await old.aclose()
    await new.aclose()


async def test_async_paused_server_is_backend_unavailable(
    redis_server: Any, redis_url: str
) -> None:
    lock = AsyncRedisLock(unique(), redis_url, ttl=0.5, socket_timeout=0.3)
    with faults.paused(redis_server.pid), pytest.raises(BackendUnavailable):
        await asyncio.wait_for(lock.acquire(), timeout=5)
    await async_wait_until(lambda: lock.acquire(blocking=False))
    await lock.release()
    await lock.aclose()


async def test_cancelled_async_acquire_deletes_the_key_its_script_set(redis_url: str) -> None:
    """The acquire script may run after the task was cancelled (here: postponed by CLIENT
    PAUSE WRITE, then run): the key it set is deleted before the cancellation propagates."""
    admin = redis.Redis.from_url(redis_url)
    lock = AsyncRedisLock(unique(), redis_url, ttl=30)
    assert not await lock.locked()  # connected (and policy checked) before the pause
    admin.script_load(ACQUIRE_COUNTING)  # so the postponed EVALSHA runs, not NOSCRIPT
    admin.client_pause(30_000, all=False)  # writes wait; reads and this client go on
    try:
        task = asyncio.create_task(lock.acquire(timeout=10))
        deadline = time.monotonic() + 10
        while not any(
            c["cmd"] in ("evalsha", "eval") and "b" in c["flags"] for c in admin.client_list()
        ):
            assert time.monotonic() < deadline, "the acquire script never reached the server"
            await asyncio.sleep(0.01)
        task.cancel()  # seen by the task only at its next turn, after the unpause below
    finally:
        admin.client_unpause()  # the server now runs the script: the key is set
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admin.exists(lock.key) == 0
    await lock.aclose()
    admin.close()
