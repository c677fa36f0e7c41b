"""AutoRenewingLock on a real Redis: keeps long jobs covered, stops with its owner, reports loss."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
import redis

from lockscope.errors import LockLost, LockNotOwned
from lockscope.locks.base import Lock
from lockscope.locks.database import DatabaseLock
from lockscope.locks.redis import AsyncRedisLock, RedisLock
from lockscope.locks.redlock import AsyncRedlock, Redlock
from lockscope.locks.renewal import AsyncAutoRenewingLock, AutoRenewingLock
from lockscope.locks.retry import RobustLock
from lockscope.testing import RedisServer
from polling import wait_until

TTL = 0.9  # short enough for quick tests, long enough for a loaded 2-core CI box


def contender_never_gets_it(lock: Lock, contender: Lock, seconds: float) -> bool:
    """Run a 'job' of ``seconds`` under ``lock`` while a contender keeps trying."""
    with lock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if contender.acquire(blocking=False):
                contender.release()
                return False
            time.sleep(0.03)  # the job's own work; the contender tries between steps
    return True


def test_watchdog_keeps_the_lock_through_a_job_three_times_its_ttl(redis_url: str) -> None:
    lock = AutoRenewingLock(RedisLock("job", redis_url, ttl=TTL))
    contender = RedisLock("job", redis_url, ttl=TTL)
    assert contender_never_gets_it(lock, contender, 3 * TTL)
    assert lock.renewals >= 3
    assert not lock.lost
    assert not lock.renewing  # released: the watchdog stopped
    assert contender.acquire(blocking=False)
    contender.release()


def test_watchdog_renews_a_database_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    lock = AutoRenewingLock(DatabaseLock("job", url, ttl=TTL))
    contender = DatabaseLock("job", url, ttl=TTL)
    assert contender_never_gets_it(lock, contender, 3 * TTL)
    assert lock.renewals >= 3
    assert contender.acquire(blocking=False)
    contender.release()


def test_one_watchdog_thread_renews_many_locks(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    locks = [AutoRenewingLock(RedisLock(f"many:{i}", client, ttl=TTL)) for i in range(20)]
    for lock in locks:
        assert lock.acquire(blocking=False)
    wait_until(lambda: all(lock.renewals >= 2 for lock in locks), what="every lock renewed")
    watchdogs = [t for t in threading.enumerate() if t.name == "lockscope-watchdog"]
    assert len(watchdogs) == 1
    assert all(lock.owned() for lock in locks)
    for lock in locks:
        lock.release()


def test_without_the_watchdog_the_same_job_loses_the_lock(redis_url: str) -> None:
    # The control for the test above: the job really does outlive a bare lease.
    lock = RedisLock("job", redis_url, ttl=TTL)
    contender = RedisLock("job", redis_url, ttl=TTL)
    with pytest.raises(LockLost):
        contender_never_gets_it(lock, contender, 3 * TTL)


def test_renewal_stops_when_the_owner_thread_ends(redis_url: str) -> None:
    lock = AutoRenewingLock(RedisLock("orphan", redis_url, ttl=TTL))
    owner = threading.Thread(target=lock.acquire, name="short-lived-owner")
    owner.start()
    owner.join()
    assert lock.renewing
    wait_until(lambda: not lock.renewing, what="watchdog to notice the dead owner")
    contender = RedisLock("orphan", redis_url, ttl=TTL)
    # Renewing forever (the Redisson bug) would keep the contender out for good.
    assert contender.acquire(timeout=5 * TTL)
    assert not lock.lost
    contender.release()


def test_max_renewals_bounds_the_hold(redis_url: str) -> None:
    lock = AutoRenewingLock(RedisLock("bounded", redis_url, ttl=TTL), max_renewals=2)
    assert lock.acquire()
    wait_until(lambda: not lock.renewing, what="renewals to run out")
    assert lock.renewals == 2
    contender = RedisLock("bounded", redis_url, ttl=TTL)
    assert contender.acquire(timeout=5 * TTL)
    contender.release()


@pytest.mark.parametrize("fault", ["deleted", "taken over"])
def test_failed_renewal_signals_lock_lost_once(redis_url: str, fault: str) -> None:
    calls: list[LockLost] = []
    inner = RedisLock("lost", redis_url, ttl=TTL)
    lock = AutoRenewingLock(inner, on_lost=calls.append)
    assert lock.acquire()
    key = inner.key  # lock.wrapped is inner, typed as any Lock
    client = redis.Redis.from_url(redis_url)
    if fault == "deleted":
        client.delete(key)
    else:
        client.set(key, "someone-else", px=10_000)
    wait_until(lambda: lock.lost, what="loss to be detected")
    assert len(calls) == 1
    assert isinstance(calls[0], LockLost)
    assert not lock.renewing
    with pytest.raises(LockLost):
        lock.extend(TTL)
    with pytest.raises(LockLost):
        lock.release()
    with pytest.raises(LockNotOwned):  # the loss is reported once; now it is just not held
        lock.release()
    assert len(calls) == 1
    if fault == "taken over":
        assert client.get(key) == b"someone-else"  # nothing deleted another owner's key


def test_killed_server_signals_lock_lost(redis_server: RedisServer, redis_url: str) -> None:
    calls: list[LockLost] = []
    inner = RedisLock("dead-server", redis_url, ttl=TTL, socket_timeout=0.2)
    lock = AutoRenewingLock(inner, on_lost=calls.append)
    assert lock.acquire()
    redis_server.kill()
    wait_until(lambda: lock.lost, what="renewals to fail until the lease ran out")
    assert len(calls) == 1
    assert "lease ran out" in str(calls[0])
    with pytest.raises(LockLost):
        lock.release()


def test_lock_can_be_reacquired_after_a_loss(redis_url: str) -> None:
    inner = RedisLock("again", redis_url, ttl=TTL)
    lock = AutoRenewingLock(inner)
    assert lock.acquire()
    redis.Redis.from_url(redis_url).delete(inner.key)
    wait_until(lambda: lock.lost)
    with pytest.raises(LockLost):
        lock.release()
    assert lock.acquire(timeout=1)
    assert not lock.lost
    assert lock.renewing
    assert lock.fencing_token == lock.wrapped.fencing_token
    lock.release()


def test_wrapper_keeps_the_identity_of_the_wrapped_lock(redis_url: str) -> None:
    inner = RedisLock("identity", redis_url, ttl=TTL)
    lock = AutoRenewingLock(inner, interval=0.1)
    assert (lock.system, lock.namespace, lock.name) == (inner.system, inner.namespace, "identity")
    assert lock.interval == 0.1
    assert lock.wrapped is inner
    assert lock.key == inner.key  # backend extras read through
    assert lock.acquire()
    assert lock.owner == inner.owner
    holder = lock.holder()
    assert holder is not None
    assert holder.fencing_token == lock.fencing_token
    lock.release()
    with pytest.raises(AttributeError):
        _ = lock.no_such_attribute


def test_bad_configuration_is_refused(redis_url: str) -> None:
    inner = RedisLock("config", redis_url, ttl=TTL)
    with pytest.raises(ValueError, match="shorter than the lease"):
        AutoRenewingLock(inner, interval=TTL)
    with pytest.raises(ValueError, match="max_renewals"):
        AutoRenewingLock(inner, max_renewals=-1)
    with pytest.raises(TypeError):
        AutoRenewingLock(object())  # type: ignore[arg-type]


def test_watchdog_around_a_redlock_capping_its_extensions_is_refused(
    redis_servers: list[RedisServer],
) -> None:
    """Redlock's default max_extensions=3 would refuse the 4th renewal: the hold would be
    declared lost mid-job. The combination is refused when it is made, saying the fix."""
    urls = [s.url for s in redis_servers]
    capped = Redlock("capped", urls, ttl=TTL)  # max_extensions=3 by default
    with pytest.raises(ValueError, match=r"max_extensions=3.*max_extensions=None"):
        AutoRenewingLock(capped)
    with pytest.raises(ValueError, match="max_renewals=4"):
        AutoRenewingLock(capped, max_renewals=4)
    with pytest.raises(ValueError, match="max_extensions=3"):
        AutoRenewingLock(RobustLock(capped))  # the cap is seen through a wrapper too
    AutoRenewingLock(capped, max_renewals=3)  # within the cap: fine
    with pytest.raises(ValueError, match="max_extensions=3"):
        AsyncAutoRenewingLock(AsyncRedlock("capped", urls, ttl=TTL))


def test_watchdog_keeps_an_uncapped_redlock_past_three_renewals(
    redis_servers: list[RedisServer],
) -> None:
    urls = [s.url for s in redis_servers]
    lock = AutoRenewingLock(Redlock("renewed", urls, ttl=TTL, max_extensions=None))
    contender = Redlock("renewed", urls, ttl=TTL)
    with lock:
        wait_until(lambda: lock.renewals >= 5 or lock.lost, timeout=60, what="5 renewals")
        assert not lock.lost
        assert lock.owned()
        assert not contender.acquire(blocking=False)
    assert not lock.lost
    assert contender.acquire(blocking=False)
    contender.release()


# -- asyncio ------------------------------------------------------------------------------


async def test_async_watchdog_keeps_the_lock_through_a_long_job(redis_url: str) -> None:
    lock = AsyncAutoRenewingLock(AsyncRedisLock("ajob", redis_url, ttl=TTL))
    contender = AsyncRedisLock("ajob", redis_url, ttl=TTL)
    async with lock:
        end = time.monotonic() + 3 * TTL
        while time.monotonic() < end:
            assert not await contender.acquire(blocking=False)
            await asyncio.sleep(0.03)
    assert lock.renewals >= 3
    assert not lock.lost
    assert await contender.acquire(blocking=False)
    await contender.release()


async def test_async_renewal_stops_when_the_owner_task_ends(redis_url: str) -> None:
    lock = AsyncAutoRenewingLock(AsyncRedisLock("aorphan", redis_url, ttl=TTL))
    await asyncio.create_task(lock.acquire())
    started = lock.renewing  # a local: mypy would keep lock.renewing True through the loop
    assert started
    deadline = time.monotonic() + 10
    while lock.renewing:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    contender = AsyncRedisLock("aorphan", redis_url, ttl=TTL)
    assert await contender.acquire(timeout=5 * TTL)
    await contender.release()


async def test_async_lost_lock_calls_async_callback_once(redis_url: str) -> None:
    calls: list[LockLost] = []

    async def on_lost(error: LockLost) -> None:
        calls.append(error)

    inner = AsyncRedisLock("alost", redis_url, ttl=TTL)
    lock = AsyncAutoRenewingLock(inner, on_lost=on_lost)
    assert await lock.acquire()
    redis.Redis.from_url(redis_url).delete(inner.key)
    deadline = time.monotonic() + 10
    while not lock.lost:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert len(calls) == 1
    with pytest.raises(LockLost):
        await lock.release()
    assert len(calls) == 1


async def test_async_blocked_event_loop_logs_a_late_renewal(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    lock = AsyncAutoRenewingLock(AsyncRedisLock("late", redis_url, ttl=TTL))
    async with lock:
        # The fault: sync code blocks the loop past ttl/2, so the watchdog cannot run.
        time.sleep(0.7 * TTL)  # noqa: ASYNC251
        with caplog.at_level(logging.WARNING, logger="lockscope.locks.renewal"):
            deadline = time.monotonic() + 10
            while lock.late_renewals == 0 and lock.renewals == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
    assert lock.late_renewals >= 1
    assert "renewal ran" in caplog.text
    assert not lock.lost
