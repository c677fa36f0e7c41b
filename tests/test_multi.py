"""acquire_all: one canonical order (no deadlock in a ring of processes), all or nothing."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lockscope.errors import BackendUnavailable, LockLost, LockNotAcquired
from lockscope.locks._delegate import DelegatingLock
from lockscope.locks.base import Lock
from lockscope.locks.database import DatabaseLock
from lockscope.locks.multi import acquire_all, acquire_all_async, canonical_order
from lockscope.locks.redis import AsyncRedisLock, RedisLock
from lockscope.locks.renewal import AutoRenewingLock

# Process ``index`` of ``count`` repeatedly takes locks ring[index] and ring[index + 1]
# (the dining philosophers), listing them in ring order: without a canonical order the last
# process lists them the other way round and the ring can deadlock.  The leases are long
# (60 s) so that a deadlock cannot heal itself within the test's bound.  Inside, each
# process checks mutual exclusion with an in-use counter per lock.
RING_WORKER = textwrap.dedent(
    """
    import sys, time, redis
    from lockscope.locks.multi import acquire_all
    from lockscope.locks.redis import RedisLock
    url, index, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    client = redis.Redis.from_url(url)
    names = [f"ring:{index}", f"ring:{(index + 1) % count}"]
    locks = [RedisLock(name, client, ttl=60, retry_interval=0.01) for name in names]
    client.incr("ready")
    while int(client.get("ready")) < count:  # start together: maximum contention
        time.sleep(0.001)
    for _ in range(rounds):
        with acquire_all(locks):
            for name in names:
                if client.incr("in-use:" + name) != 1:
                    sys.exit(3)
            time.sleep(0.002)  # the work done under both locks
            for name in names:
                client.decr("in-use:" + name)
    client.incr("finished")
    """
)


class Recording(DelegatingLock[Lock]):
    """Records the order of acquires and releases in a shared journal."""

    def __init__(self, lock: Lock, journal: list[str]) -> None:
        super().__init__(lock)
        self.journal = journal

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        ok = self.wrapped.acquire(blocking=blocking, timeout=timeout)
        if ok:
            self.journal.append(f"+{self.name}")
        return self._acquired(ok)

    def release(self) -> None:
        self.journal.append(f"-{self.name}")
        self.wrapped.release()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_ring_of_processes_asking_in_different_orders_never_deadlocks(
    redis_url: str, client: redis.Redis
) -> None:
    count, rounds = 4, 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RING_WORKER, redis_url, str(i), str(count), str(rounds)],
            stderr=subprocess.PIPE,
        )
        for i in range(count)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=45)  # a deadlock holds until the 60 s leases end
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert int(client.get("finished") or 0) == count
    # Every lock was released: only the fence counters remain.
    assert sorted(client.keys("lockscope:*")) == sorted(
        b"lockscope:{ring:%d}:fence" % i for i in range(count)
    )


def test_locks_are_taken_in_canonical_order_and_released_in_reverse(redis_url: str) -> None:
    journal: list[str] = []
    names = ["b", "c", "a"]
    locks = [Recording(RedisLock(n, redis_url, ttl=10), journal) for n in names]
    random.shuffle(locks)
    with acquire_all(locks, timeout=5) as held:
        assert [lock.name for lock in held] == ["a", "b", "c"]
        assert all(lock.owned() for lock in locks)
    assert journal == ["+a", "+b", "+c", "-c", "-b", "-a"]
    assert not any(lock.locked() for lock in locks)


def test_canonical_order_is_by_system_namespace_then_name(redis_url: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    db_z = DatabaseLock("z", url, ttl=10)
    redis_a = RedisLock("a", redis_url, ttl=10)
    db_a = DatabaseLock("a", url, ttl=10)
    ordered = canonical_order([redis_a, db_z, db_a])
    assert ordered == [db_a, db_z, redis_a]  # "database" < "redis", then by name
    with acquire_all([redis_a, db_z, db_a], timeout=5) as held:
        assert held == [db_a, db_z, redis_a]
        assert db_a.owned()
        assert redis_a.owned()
    assert not db_z.locked()


def test_wrapped_locks_sort_as_the_lock_they_wrap(redis_url: str) -> None:
    inner_b = RedisLock("b", redis_url, ttl=10)
    wrapped_b = AutoRenewingLock(inner_b)
    plain_a = RedisLock("a", redis_url, ttl=10)
    assert canonical_order([wrapped_b, plain_a]) == [plain_a, wrapped_b]
    with pytest.raises(ValueError, match="twice"):
        canonical_order([wrapped_b, RedisLock("b", redis_url, ttl=10)])
    with acquire_all([wrapped_b, plain_a], timeout=2):
        assert inner_b.owned()
        assert wrapped_b.renewing
    assert not wrapped_b.renewing


def test_all_or_nothing_on_timeout(redis_url: str) -> None:
    blocker = RedisLock("m", redis_url, ttl=10)
    assert blocker.acquire()
    locks = [RedisLock(n, redis_url, ttl=10) for n in ("z", "m", "a")]
    with pytest.raises(LockNotAcquired, match="'m'"), acquire_all(locks, timeout=0.3):
        pytest.fail("the block must not run")
    # "a" was taken before "m" timed out; it was given back.
    assert not any(lock.owned() for lock in locks)
    assert not RedisLock("a", redis_url).locked()
    assert not RedisLock("z", redis_url).locked()
    blocker.release()


def test_backend_error_releases_what_was_taken(redis_url: str) -> None:
    good = RedisLock("a", redis_url, ttl=10)
    # Namespace "localhost:1/0" sorts after "127.0.0.1:PORT/0": "a" is taken first.
    unreachable = RedisLock("a", "redis://localhost:1/0", ttl=10, socket_timeout=0.2)
    assert canonical_order([unreachable, good]) == [good, unreachable]
    with pytest.raises(BackendUnavailable), acquire_all([unreachable, good], timeout=2):
        pytest.fail("the block must not run")
    assert not good.locked()


def test_body_exception_releases_all_and_propagates(redis_url: str) -> None:
    locks = [RedisLock(n, redis_url, ttl=10) for n in ("a", "b")]
    with pytest.raises(KeyError), acquire_all(locks, timeout=1):
        raise KeyError("boom")
    assert not any(lock.locked() for lock in locks)


def test_every_release_is_attempted_and_the_first_error_raised(
    redis_url: str, client: redis.Redis
) -> None:
    locks = [RedisLock(n, redis_url, ttl=10) for n in ("a", "b", "c")]
    with pytest.raises(LockLost), acquire_all(locks, timeout=1):
        client.delete(locks[2].key)  # "c" is lost while held
    assert not any(lock.locked() for lock in locks)


def test_duplicate_lock_is_refused(redis_url: str) -> None:
    with (
        pytest.raises(ValueError, match="twice"),
        acquire_all([RedisLock("x", redis_url), RedisLock("x", redis_url)]),
    ):
        pytest.fail("the block must not run")


async def test_async_ring_of_tasks_never_deadlocks(redis_url: str) -> None:
    count, rounds = 4, 10
    done: list[int] = []

    async def worker(index: int) -> None:
        names = [f"aring:{index}", f"aring:{(index + 1) % count}"]
        locks = [AsyncRedisLock(n, redis_url, ttl=60, retry_interval=0.01) for n in names]
        for _ in range(rounds):
            async with acquire_all_async(locks):
                await asyncio.sleep(0.002)
        done.append(index)

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(count))), 30)
    assert sorted(done) == list(range(count))


async def test_async_all_or_nothing_on_timeout(redis_url: str) -> None:
    blocker = AsyncRedisLock("m", redis_url, ttl=10)
    assert await blocker.acquire()
    locks = [AsyncRedisLock(n, redis_url, ttl=10) for n in ("z", "m", "a")]
    with pytest.raises(LockNotAcquired):
        async with acquire_all_async(locks, timeout=0.3):
            pytest.fail("the block must not run")
    for lock in locks:
        assert not await lock.owned()
    assert not await AsyncRedisLock("a", redis_url).locked()
    await blocker.release()
