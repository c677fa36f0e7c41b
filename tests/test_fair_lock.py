"""FairLock on a real Redis: arrival order across processes, dead waiters drop out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from lockscope.locks.fair import FAIR_ACQUIRE, AsyncFairLock, FairLock
from lockscope.locks.redis import RedisLock
from lockscope.locks.renewal import AutoRenewingLock
from polling import wait_until

# A waiter process: queue for the lock, record our turn, release.  argv: url name index.
WAITER = textwrap.dedent(
    """
    import sys, redis
    from lockscope.locks.fair import FairLock
    url, name, index, waiter_timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    lock = FairLock(name, url, ttl=10, waiter_timeout=waiter_timeout, retry_interval=0.02)
    if not lock.acquire(timeout=60):
        sys.exit(2)
    redis.Redis.from_url(url).rpush("served", index)
    lock.release()
    """
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def spawn_waiter(
    procs: list[subprocess.Popen[bytes]], url: str, name: str, index: int, waiter_timeout: float
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, url, name, str(index), str(waiter_timeout)],
        stderr=subprocess.PIPE,
    )
    procs.append(proc)
    return proc


def served(client: redis.Redis) -> list[int]:
    return [int(v) for v in client.lrange("served", 0, -1)]


def test_waiters_are_served_in_arrival_order_across_processes(
    redis_url: str, client: redis.Redis, spawned: list[subprocess.Popen[bytes]]
) -> None:
    holder = FairLock("fifo", redis_url, ttl=30)
    assert holder.acquire(blocking=False)
    count = 4
    for index in range(count):
        spawn_waiter(spawned, redis_url, "fifo", index, waiter_timeout=5)

        # The next process starts only once this one is queued: arrival order is defined.
        def queued(i: int = index) -> bool:
            return len(holder.waiters()) == i + 1

        wait_until(queued, what=f"waiter {index}")
    holder.release()
    for proc in spawned:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
    assert served(client) == list(range(count))
    assert holder.waiters() == []


def test_killed_waiter_stops_blocking_the_queue_after_its_timeout(
    redis_url: str, client: redis.Redis, spawned: list[subprocess.Popen[bytes]]
) -> None:
    holder = FairLock("stuck", redis_url, ttl=30)
    assert holder.acquire(blocking=False)
    doomed = spawn_waiter(spawned, redis_url, "stuck", 0, waiter_timeout=1.0)
    wait_until(lambda: len(holder.waiters()) == 1, what="first waiter queued")
    survivor = spawn_waiter(spawned, redis_url, "stuck", 1, waiter_timeout=1.0)
    wait_until(lambda: len(holder.waiters()) == 2, what="second waiter queued")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    holder.release()
    # The dead waiter is at the head of the queue: without pruning the survivor would wait
    # for it forever (its own polling keeps the queue keys alive).
    _, err = survivor.communicate(timeout=30)
    assert survivor.returncode == 0, err.decode()
    assert served(client) == [1]
    assert holder.waiters() == []


def test_waiter_that_gives_up_leaves_the_queue(redis_url: str) -> None:
    holder = FairLock("give-up", redis_url, ttl=30)
    waiter = FairLock("give-up", redis_url, ttl=30)
    assert holder.acquire()
    assert waiter.acquire(timeout=0.2) is False
    assert holder.waiters() == []
    assert waiter.queue_position is None
    holder.release()
    assert waiter.acquire(blocking=False)
    waiter.release()


def test_non_blocking_try_does_not_jump_or_join_the_queue(redis_url: str) -> None:
    holder = FairLock("queue-jump", redis_url, ttl=30)
    assert holder.acquire()
    queued = FairLock("queue-jump", redis_url, ttl=30, retry_interval=0.02)
    result: list[bool] = []

    t = threading.Thread(target=lambda: result.append(queued.acquire(timeout=20)))
    t.start()
    try:
        wait_until(lambda: len(holder.waiters()) == 1, what="waiter queued")
        assert queued.queue_position == 0
        assert queued.ticket is not None
        # The lock is held and someone is queued: a try neither takes it nor queues.
        jumper = FairLock("queue-jump", redis_url, ttl=30)
        assert jumper.acquire(blocking=False) is False
        assert len(holder.waiters()) == 1
    finally:
        holder.release()
        t.join(timeout=20)
    assert result == [True]
    queued.release()


def test_auto_renewed_fair_lock_outlives_its_ttl_and_hands_over_in_order(
    redis_url: str,
) -> None:
    holder = AutoRenewingLock(FairLock("renewed", redis_url, ttl=0.5))
    assert holder.acquire()
    waiter = FairLock("renewed", redis_url, ttl=5, retry_interval=0.02)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(waiter.acquire(timeout=20)))
    t.start()
    try:
        # Hold for three leases while the waiter is queued: the watchdog keeps the lock.
        wait_until(lambda: holder.renewals >= 9, what="nine renewals (3 x ttl)")
        assert result == []
        assert holder.owned()
    finally:
        holder.release()
        t.join(timeout=20)
    assert result == [True]
    assert waiter.fencing_token is not None
    assert holder.fencing_token is not None
    assert waiter.fencing_token > holder.fencing_token
    waiter.release()


def test_fencing_token_is_shared_with_redis_lock(redis_url: str) -> None:
    plain = RedisLock("shared", redis_url, ttl=5)
    fair = FairLock("shared", redis_url, ttl=5)
    assert plain.acquire()
    first = plain.fencing_token
    assert fair.acquire(blocking=False) is False  # same key: mutual exclusion holds
    plain.release()
    assert fair.acquire()
    assert fair.fencing_token is not None
    assert first is not None
    assert fair.fencing_token > first
    assert fair.key == plain.key
    assert fair.owned()
    assert plain.locked()
    fair.extend(10)
    holder = fair.holder()
    assert holder is not None
    assert holder.fencing_token == fair.fencing_token
    fair.release()
    assert not plain.locked()
    assert FairLock.fifo
    assert fair.system == "redis"


def test_paused_waiter_loses_its_place(redis_url: str) -> None:
    # A waiter that stops trying for longer than waiter_timeout is pruned; when it comes
    # back it queues again at the end (with a new ticket).
    holder = FairLock("pause", redis_url, ttl=30)
    assert holder.acquire()
    slow = FairLock("pause", redis_url, ttl=30, waiter_timeout=0.3)
    fast = FairLock("pause", redis_url, ttl=30, waiter_timeout=5)
    slow._start_wait(True, None)
    assert slow._try_acquire() is False
    first_ticket = slow.ticket
    fast._start_wait(True, None)
    assert fast._try_acquire() is False
    # Only the fast waiter keeps trying; its tries prune the slow one once it is overdue.
    wait_until(
        lambda: not fast._try_acquire() and holder.waiters() == [fast._waiter],
        what="slow waiter pruned by the fast one's try",
    )
    assert slow._try_acquire() is False
    assert slow.queue_position == 1
    assert fast.queue_position == 0
    assert slow.ticket is not None
    assert first_ticket is not None
    assert slow.ticket > first_ticket
    holder.release()
    wait_until(fast._try_acquire, what="fast waiter acquires")
    assert slow._try_acquire() is False
    fast.release()
    assert slow._try_acquire()
    slow.release()


async def test_async_fair_lock_serves_tasks_in_order(redis_url: str) -> None:
    holder = AsyncFairLock("async-fifo", redis_url, ttl=30)
    assert await holder.acquire()
    order: list[int] = []

    async def waiter(index: int) -> None:
        lock = AsyncFairLock("async-fifo", redis_url, ttl=30, retry_interval=0.02)
        assert await lock.acquire(timeout=20)
        order.append(index)
        await lock.release()

    tasks = []
    for index in range(3):
        tasks.append(asyncio.create_task(waiter(index)))
        deadline = time.monotonic() + 10
        while len(await holder.waiters()) != index + 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert order == [0, 1, 2]


async def test_cancelled_async_waiter_leaves_the_queue(redis_url: str) -> None:
    holder = AsyncFairLock("async-cancel", redis_url, ttl=30)
    assert await holder.acquire()
    waiter = AsyncFairLock("async-cancel", redis_url, ttl=30, retry_interval=0.02)
    task = asyncio.create_task(waiter.acquire())
    deadline = time.monotonic() + 10
    while len(await holder.waiters()) != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await holder.waiters() == []
    await holder.release()


def test_waiter_timeout_must_exceed_poll_interval(redis_url: str) -> None:
    with pytest.raises(ValueError, match="waiter_timeout"):
        FairLock("bad", redis_url, waiter_timeout=0.1, retry_interval=0.05)


async def test_cancelled_async_acquire_gives_back_a_lock_its_try_took(redis_url: str) -> None:
    """The try's script may run after the task was cancelled (here: the server postpones
    writes under CLIENT PAUSE WRITE, then runs the script): the lock it took is given back
    before the cancellation propagates, instead of blocking the name for the whole ttl."""
    admin = redis.Redis.from_url(redis_url)
    lock = AsyncFairLock("async-give-back", redis_url, ttl=30)
    assert await lock.waiters() == []  # connected (and policy checked) before the pause
    admin.script_load(FAIR_ACQUIRE)  # so the postponed EVALSHA runs, not a NOSCRIPT reply
    admin.client_pause(30_000, all=False)  # writes wait; reads and this client go on
    try:
        task = asyncio.create_task(lock.acquire(timeout=10))
        deadline = time.monotonic() + 10
        while not any(
            c["cmd"] in ("evalsha", "eval") and "b" in c["flags"] for c in admin.client_list()
        ):
            assert time.monotonic() < deadline, "the try's script never reached the server"
            await asyncio.sleep(0.01)
        task.cancel()  # seen by the task only at its next turn, after the unpause below
    finally:
        admin.client_unpause()  # the server now runs the try's script: the lock is taken
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admin.exists(lock.key) == 0
    assert await lock.waiters() == []
    await lock.aclose()
    admin.close()
