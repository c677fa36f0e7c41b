"""Redlock and AsyncRedlock against three real, independent redis-servers (fixture
``redis_servers``; the session servers are healed after every test by the plugin).
Worker processes: tests/redis_lock_worker.py."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from fencing import held_token
from lockscope.errors import BackendUnavailable, LockError, LockLost, LockNotOwned
from lockscope.locks import Redlock as LazyRedlock
from lockscope.locks.aio import Redlock as LazyAsyncRedlock
from lockscope.locks.redlock import AsyncRedlock, Redlock, clock_drift
from lockscope.testing import faults
from polling import wait_until
from redis_lock_worker import Holder, run_counting


def unique(prefix: str = "lock") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def urls(redis_servers: list[Any]) -> list[str]:
    for server in redis_servers:
        server.ensure_running()
    return [server.url for server in redis_servers]


@pytest.fixture
def direct(urls: list[str]) -> Iterator[list[redis.Redis]]:
    """Plain clients, one per server, to look behind the lock's back."""
    clients = [redis.Redis.from_url(url, socket_timeout=2) for url in urls]
    yield clients
    for client in clients:
        client.close()


def owners_on(direct: list[redis.Redis], lock: Redlock) -> list[str | None]:
    owners: list[str | None] = []
    for client in direct:
        value = client.get(lock.key)
        assert value is None or isinstance(value, bytes)  # plain clients: no decode_responses
        owners.append(None if value is None else value.decode())
    return owners


# -- the basics ------------------------------------------------------------------------------


def test_identity_and_quorum(urls: list[str]) -> None:
    assert LazyRedlock is Redlock
    assert LazyAsyncRedlock is AsyncRedlock
    lock = Redlock("orders", urls, ttl=10)
    assert lock.system == "redlock"
    assert lock.mode == "exclusive"
    assert lock.quorum == 2
    assert lock.namespace == ",".join(sorted(u.removeprefix("redis://") for u in urls))
    assert Redlock("x", urls[:1], ttl=1).quorum == 1
    assert clock_drift(10) == pytest.approx(0.102)


def test_acquire_release_holder(urls: list[str], direct: list[redis.Redis]) -> None:
    name = unique()
    lock = Redlock(name, urls, ttl=10)
    assert lock.holder() is None
    assert lock.acquire()
    assert lock.owned()
    assert lock.locked()
    assert 9 < lock.validity <= 10 - clock_drift(10)
    assert owners_on(direct, lock) == [lock.owner] * 3
    holder = lock.holder()
    assert holder is not None
    assert holder.owner == lock.owner
    assert holder.fencing_token == lock.fencing_token
    other = Redlock(name, urls, ttl=10)
    assert not other.acquire(blocking=False)
    assert owners_on(direct, lock) == [lock.owner] * 3  # the loser took nothing
    lock.release()
    assert owners_on(direct, lock) == [None] * 3
    assert lock.validity == 0
    with pytest.raises(LockNotOwned):
        lock.release()
    assert other.acquire(blocking=False)
    assert other.fencing_token is not None
    assert lock.fencing_token is not None
    assert other.fencing_token > lock.fencing_token
    other.release()


def test_failed_attempt_releases_every_server(urls: list[str], direct: list[redis.Redis]) -> None:
    lock = Redlock(unique(), urls, ttl=30)
    for client in direct[1:]:  # someone else holds two servers
        client.set(lock.key, "someone-else", px=30_000)
    assert not lock.acquire(blocking=False)
    assert owners_on(direct, lock) == [None, "someone-else", "someone-else"]
    assert not lock.owned()


def test_tokens_increase_when_quorums_differ(urls: list[str], direct: list[redis.Redis]) -> None:
    """Each acquisition uses a different pair of servers; per-server counters alone would
    repeat a token here, the quorum maximum does not."""
    name = unique()
    tokens = []
    for blocked in (2, 0, 1, 2, 0, 1):
        probe = Redlock(name, urls, ttl=30)
        direct[blocked].set(probe.key, "blocker", px=30_000)
        assert probe.acquire(blocking=False)
        assert owners_on(direct, probe).count(probe.owner) == 2
        tokens.append(held_token(probe))
        probe.release()
        direct[blocked].delete(probe.key)
    assert tokens == sorted(set(tokens)), tokens


def test_extend_and_extension_cap(urls: list[str], direct: list[redis.Redis]) -> None:
    lock = Redlock(unique(), urls, ttl=1, max_extensions=2)
    assert lock.acquire()
    lock.extend(30)
    assert lock.validity > 20
    assert all(0 < client.pttl(lock.key) <= 30_000 for client in direct)
    lock.extend(20)
    assert lock.extensions == 2
    with pytest.raises(LockError, match="max_extensions"):
        lock.extend(10)
    assert lock.owned()  # hitting the cap does not give the lock up
    lock.release()
    assert lock.acquire()  # a new hold starts a new count
    lock.extend(5)
    lock.release()
    unlimited = Redlock(unique(), urls, ttl=1, max_extensions=None)
    assert unlimited.acquire()
    for _ in range(5):
        unlimited.extend(1)
    unlimited.release()


def test_lease_expiry_then_release_and_extend_raise(urls: list[str]) -> None:
    name = unique()
    old = Redlock(name, urls, ttl=0.2, server_timeout=1)
    assert old.acquire()
    wait_until(lambda: old.holder() is None)
    assert not old.owned()
    new = Redlock(name, urls, ttl=10)
    assert new.acquire(blocking=False)
    assert new.fencing_token is not None
    assert old.fencing_token is not None
    assert new.fencing_token > old.fencing_token
    with pytest.raises(LockLost):
        old.extend(5)
    with pytest.raises(LockNotOwned):
        old.release()
    assert new.owned()
    new.release()


def test_expired_release_raises_lock_lost(urls: list[str]) -> None:
    lock = Redlock(unique(), urls, ttl=0.1, server_timeout=1)
    assert lock.acquire()
    wait_until(lambda: lock.holder() is None)
    with pytest.raises(LockLost):
        lock.release()


def test_paused_holder_process_loses_the_lock(urls: list[str]) -> None:
    name = unique()
    holder = Holder("redlock", urls, name, ttl=0.3)
    try:
        with faults.paused(holder.pid):
            successor = Redlock(name, urls, ttl=30, retry_interval=0.02)
            assert successor.acquire(timeout=10)
            assert successor.fencing_token is not None
            assert successor.fencing_token > holder.token
            seen = successor.holder()
            assert seen is not None
            assert seen.owner == successor.owner != holder.owner
        assert holder.finish() == {"extend": "LockLost", "release": "LockNotOwned"}
        assert successor.owned()
        successor.release()
    finally:
        holder.close()


def test_mutual_exclusion_across_processes(urls: list[str]) -> None:
    processes, iterations = 3, 20
    counter, tokens = run_counting("redlock", urls, urls[0], processes, iterations)
    assert counter == processes * iterations
    assert len(tokens) == processes * iterations
    assert all(a < b for a, b in itertools.pairwise(tokens))


# -- servers failing -----------------------------------------------------------------------


def test_one_of_three_killed_still_works(redis_servers: list[Any], urls: list[str]) -> None:
    name = unique()
    first = Redlock(name, urls, ttl=10, server_timeout=0.5)
    assert first.acquire()
    first.release()
    redis_servers[0].kill()
    lock = Redlock(name, urls, ttl=10, server_timeout=0.5)
    assert lock.acquire(blocking=False)
    assert lock.fencing_token is not None
    assert first.fencing_token is not None
    assert lock.fencing_token > first.fencing_token
    assert lock.owned()
    assert lock.locked()
    lock.extend(10)
    busy = Redlock(name, urls, ttl=10, server_timeout=0.5)
    assert not busy.acquire(blocking=False)  # busy, not unavailable: a quorum could answer
    lock.release()


def test_two_of_three_killed_refuses(
    redis_servers: list[Any], urls: list[str], direct: list[redis.Redis]
) -> None:
    name = unique()
    redis_servers[0].kill()
    redis_servers[1].kill()
    lock = Redlock(name, urls, ttl=10, server_timeout=0.5)
    with pytest.raises(BackendUnavailable, match="quorum"):
        lock.acquire(blocking=False)
    with pytest.raises(BackendUnavailable):
        lock.acquire(timeout=1)
    assert not lock.owned()
    assert direct[2].get(lock.key) is None  # the one server it reached was released
    redis_servers[0].start()
    redis_servers[1].start()
    assert lock.acquire(blocking=False)  # works again once the servers are back
    lock.release()


def test_holder_learns_when_two_servers_die(redis_servers: list[Any], urls: list[str]) -> None:
    lock = Redlock(unique(), urls, ttl=10, server_timeout=0.5)
    assert lock.acquire()
    redis_servers[1].kill()
    redis_servers[2].kill()
    with pytest.raises(BackendUnavailable):
        lock.extend(10)
    with pytest.raises(BackendUnavailable):
        lock.release()


def test_refuses_when_acquiring_outlasts_the_validity(
    redis_servers: list[Any], urls: list[str], direct: list[redis.Redis]
) -> None:
    """A stalled first server makes the attempt take longer than the ttl.  The other two
    servers are asked after the stall, so their keys are fresh and the fence writes
    succeed: only the validity (ttl - elapsed - drift) tells that the lock is unsafe."""
    name = unique()
    lock = Redlock(name, urls, ttl=0.2, server_timeout=0.5)
    with faults.paused(redis_servers[0].pid):
        assert not lock.acquire(blocking=False)
        assert not lock.owned()
        assert lock.validity == 0
        assert owners_on(direct[1:], lock) == [None, None]  # released after the failure
        # A longer lease fits the same delay: the stall alone is not the reason.
        patient = Redlock(name, urls, ttl=5, server_timeout=0.5)
        assert patient.acquire(blocking=False)
        assert patient.validity < 5 - 0.5
        patient.release()
    assert lock.acquire(timeout=10)
    lock.release()


def test_down_server_fails_fast_never_hangs(redis_servers: list[Any], urls: list[str]) -> None:
    lock = Redlock(unique(), urls, ttl=10, server_timeout=0.3)
    for server in redis_servers:
        server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            lock.acquire()
        # three sequential calls plus the release round, each bounded by server_timeout
        assert time.monotonic() - start < 0.3 * 6 * 3
    finally:
        for server in redis_servers:
            server.resume()


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, ValueError),
        ({"name": 7}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": -5}, ValueError),
        ({"ttl": 0.001}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"ttl": None}, TypeError),
        ({"blocking_timeout": "1"}, TypeError),
        ({"blocking_timeout": -1}, ValueError),
        ({"server_timeout": 0}, ValueError),
        ({"server_timeout": "fast"}, TypeError),
        ({"max_extensions": -1}, ValueError),
        ({"max_extensions": 1.5}, TypeError),
        ({"prefix": "{x}"}, ValueError),
    ],
)
def test_bad_arguments(urls: list[str], kwargs: dict[str, Any], error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"name": "x", "ttl": 10, **kwargs}
    name = arguments.pop("name")
    with pytest.raises(error):
        Redlock(name, urls, **arguments)


def test_bad_server_lists(urls: list[str]) -> None:
    with pytest.raises(TypeError):
        Redlock("x", urls[0], ttl=10)  # a str (a sequence to type checkers), not a list
    with pytest.raises(ValueError, match="at least one"):
        Redlock("x", [], ttl=10)
    with pytest.raises(ValueError, match="distinct"):
        Redlock("x", [urls[0], urls[0], urls[1]], ttl=10)
    with pytest.raises(TypeError):
        Redlock("x", [urls[0], 6379], ttl=10)  # type: ignore[list-item]
    lock = Redlock("x", urls, ttl=10)
    with pytest.raises(TypeError):
        lock.acquire(timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(LockNotOwned):
        lock.extend(5)
    with pytest.raises(TypeError, match="AsyncRedlock"):
        Redlock("x", [redis.asyncio.Redis.from_url(urls[0])], ttl=10)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Redlock"):
        AsyncRedlock("x", [redis.Redis.from_url(urls[0])], ttl=10)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="ttl"):
        AsyncRedlock("x", urls, ttl=0)


# -- asyncio -------------------------------------------------------------------------------


async def test_async_acquire_extend_release(urls: list[str]) -> None:
    name = unique()
    lock = AsyncRedlock(name, urls, ttl=5)
    other = AsyncRedlock(name, urls, ttl=5)
    assert lock.system == "redlock"
    assert await lock.acquire()
    assert await lock.owned()
    assert await lock.locked()
    holder = await lock.holder()
    assert holder is not None
    assert holder.owner == lock.owner
    assert holder.fencing_token == lock.fencing_token
    assert not await other.acquire(blocking=False)
    await lock.extend(30)
    assert lock.validity > 20
    await lock.release()
    with pytest.raises(LockNotOwned):
        await lock.release()
    assert await other.acquire(blocking=False)
    assert other.fencing_token is not None
    assert lock.fencing_token is not None
    assert other.fencing_token > lock.fencing_token
    await other.release()
    await lock.aclose()
    await other.aclose()


async def test_async_contention_between_tasks(urls: list[str]) -> None:
    name, counter = unique(), unique("counter")
    data = redis.asyncio.Redis.from_url(urls[0])
    tokens: list[int] = []

    async def worker() -> None:
        lock = AsyncRedlock(name, urls, ttl=10, retry_interval=0.005, blocking_timeout=30)
        for _ in range(8):
            async with lock:
                value = int(await data.get(counter) or 0)
                await asyncio.sleep(0.002)  # give the other tasks a chance to interleave
                await data.set(counter, value + 1)
                tokens.append(lock.fencing_token or 0)
        await lock.aclose()

    await asyncio.gather(*(worker() for _ in range(4)))
    assert int(await data.get(counter) or 0) == 32
    assert all(a < b for a, b in itertools.pairwise(tokens))
    await data.aclose()


async def test_async_lease_expiry(urls: list[str]) -> None:
    name = unique()
    old = AsyncRedlock(name, urls, ttl=0.2, server_timeout=1)
    new = AsyncRedlock(name, urls, ttl=10)
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


async def test_async_server_failures(redis_servers: list[Any], urls: list[str]) -> None:
    lock = AsyncRedlock(unique(), urls, ttl=10, server_timeout=0.5)
    redis_servers[0].kill()
    assert await lock.acquire(blocking=False)
    await lock.release()
    redis_servers[1].kill()
    with pytest.raises(BackendUnavailable):
        await lock.acquire(blocking=False)
    redis_servers[0].start()
    redis_servers[1].start()
    assert await lock.acquire(blocking=False)
    await lock.release()
    await lock.aclose()


async def test_async_refuses_when_acquiring_outlasts_the_validity(
    redis_servers: list[Any], urls: list[str]
) -> None:
    lock = AsyncRedlock(unique(), urls, ttl=0.2, server_timeout=0.5)
    with faults.paused(redis_servers[1].pid):
        assert not await lock.acquire(blocking=False)
        assert lock.validity == 0
    assert await lock.acquire(timeout=10)
    await lock.release()
    await lock.aclose()


async def test_async_cancelled_acquire_releases_what_it_took(
    redis_servers: list[Any], urls: list[str], direct: list[redis.Redis]
) -> None:
    lock = AsyncRedlock(unique(), urls, ttl=30, server_timeout=2)
    with faults.paused(redis_servers[2].pid):
        task = asyncio.create_task(lock.acquire())
        # servers 0 and 1 answer at once; server 2 keeps the attempt waiting
        deadline = time.monotonic() + 10
        while not all(client.exists(lock.key) for client in direct[:2]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [client.exists(lock.key) for client in direct[:2]] == [0, 0]
    await lock.aclose()
