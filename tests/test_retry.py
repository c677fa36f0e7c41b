"""RobustLock and CircuitBreaker: backoff under a deadline, a breaker that trips on outages only."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockscope.errors import BackendUnavailable, LockNotOwned
from lockscope.locks._delegate import AsyncDelegatingLock, DelegatingLock
from lockscope.locks.base import AsyncLock, Lock
from lockscope.locks.redis import AsyncRedisLock, RedisLock
from lockscope.locks.retry import (
    AsyncRobustLock,
    CircuitBreaker,
    CircuitOpen,
    RobustLock,
    backoff_delay,
)
from lockscope.testing import RedisServer
from polling import wait_until


class Counting(DelegatingLock[Lock]):
    """Counts the acquire calls that reach the real lock (each one a network call)."""

    calls = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        self.calls += 1
        return self._acquired(self.wrapped.acquire(blocking=blocking, timeout=timeout))


class AsyncCounting(AsyncDelegatingLock[AsyncLock]):
    calls = 0

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        self.calls += 1
        return self._acquired(await self.wrapped.acquire(blocking=blocking, timeout=timeout))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail() -> None:
    raise BackendUnavailable("down")


# -- CircuitBreaker alone -----------------------------------------------------------------


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=10, clock=clock)
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            breaker.call(fail)
    assert breaker.state == "closed"
    assert breaker.call(lambda: 42) == 42  # a success resets the count
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            breaker.call(fail)
    assert breaker.state == "open"
    calls: list[int] = []
    with pytest.raises(CircuitOpen) as excinfo:
        breaker.call(calls.append, 1)
    assert calls == []  # fail fast: the function was not called
    assert excinfo.value.retry_after == pytest.approx(10)
    assert isinstance(excinfo.value, BackendUnavailable)


def test_breaker_half_opens_for_one_trial_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    with pytest.raises(BackendUnavailable):
        breaker.call(fail)
    clock.now += 5
    assert breaker.state == "half-open"
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # a second caller while the trial is in flight
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.failures == 0


def test_breaker_failed_trial_reopens_for_another_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    with pytest.raises(BackendUnavailable):
        breaker.call(fail)
    clock.now += 5
    with pytest.raises(BackendUnavailable):
        breaker.call(fail)  # the trial fails
    assert breaker.state == "open"
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: None)
    clock.now += 0.1
    assert breaker.call(lambda: "back") == "back"
    assert breaker.state == "closed"


def test_breaker_counts_only_backend_errors() -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5)

    def not_owned() -> None:
        raise LockNotOwned("an answer from a working server")

    for _ in range(3):
        with pytest.raises(LockNotOwned):
            breaker.call(not_owned)
        assert breaker.call(lambda: False) is False  # "busy" is an answer too
    assert breaker.state == "closed"


def test_breaker_unreported_trial_does_not_wedge_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    with pytest.raises(BackendUnavailable):
        breaker.call(fail)
    clock.now += 5
    breaker.before_call()  # a trial whose caller vanished without reporting
    clock.now += 5
    breaker.before_call()  # after another recovery_timeout a new trial is allowed
    breaker.record_success()
    assert breaker.state == "closed"


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="recovery_timeout"):
        CircuitBreaker(recovery_timeout=-1)


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.001, max_value=1),
    cap=st.floats(min_value=1, max_value=60),
)
def test_backoff_is_full_jitter_under_the_cap(attempt: int, base: float, cap: float) -> None:
    delay = backoff_delay(attempt, base, cap)
    assert 0.0 <= delay <= min(cap, base * 2.0**attempt)


# -- RobustLock on a real Redis -------------------------------------------------------------


def test_contention_is_retried_and_never_opens_the_breaker(redis_url: str) -> None:
    holder = RedisLock("busy", redis_url, ttl=10)
    assert holder.acquire()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    lock = RobustLock(
        RedisLock("busy", redis_url, ttl=10),
        deadline=0.3,
        base_delay=0.01,
        max_delay=0.05,
        breaker=breaker,
    )
    assert lock.acquire() is False
    assert lock.attempts > 1
    assert breaker.state == "closed"
    assert breaker.failures == 0
    holder.release()
    with lock:  # free now: the context manager takes it
        assert lock.fencing_token == lock.wrapped.fencing_token
        assert lock.owned()


def test_retries_until_the_lock_comes_free(redis_url: str) -> None:
    holder = RedisLock("frees", redis_url, ttl=0.3)  # the holder "dies": its lease runs out
    assert holder.acquire()
    lock = RobustLock(RedisLock("frees", redis_url, ttl=10), deadline=10, base_delay=0.01)
    assert lock.acquire()
    assert lock.attempts > 1
    lock.release()


def test_deadline_reraises_the_backend_error_when_the_server_stays_down(
    redis_server: RedisServer, redis_url: str
) -> None:
    inner = Counting(RedisLock("down", redis_url, ttl=10, socket_timeout=0.2))
    lock = RobustLock(inner, deadline=0.5, base_delay=0.01, max_delay=0.05)
    redis_server.kill()
    with pytest.raises(BackendUnavailable) as excinfo:
        lock.acquire()
    assert not isinstance(excinfo.value, CircuitOpen)
    assert inner.calls > 1


def test_breaker_opens_when_redis_is_killed_fails_fast_and_closes_when_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=0.5, name="redis")
    inner = Counting(RedisLock("outage", redis_url, ttl=10, socket_timeout=0.3))
    lock = RobustLock(inner, deadline=5, base_delay=0.01, max_delay=0.05, breaker=breaker)
    redis_server.kill()

    # Two failed tries open the circuit; the third try is refused without a call.
    with pytest.raises(CircuitOpen):
        lock.acquire()
    assert breaker.state == "open"
    assert inner.calls == 2

    # While open: every operation fails fast, nothing reaches the lock.
    for _ in range(5):
        with pytest.raises(CircuitOpen):
            lock.acquire()
        with pytest.raises(CircuitOpen):
            lock.locked()
    assert inner.calls == 2

    # Half-open after recovery_timeout: one trial goes out, fails, and reopens the circuit.
    wait_until(lambda: breaker.state == "half-open", what="half-open")
    with pytest.raises(CircuitOpen):
        lock.acquire()
    assert inner.calls == 3
    assert breaker.state == "open"

    # Redis is back: the next trial succeeds and closes the circuit.
    redis_server.start()
    wait_until(lambda: breaker.state == "half-open", what="half-open again")
    assert lock.acquire()
    assert breaker.state == "closed"
    assert inner.calls == 4
    lock.release()


async def test_async_robust_lock_retries_contention_and_trips_on_outage(
    redis_server: RedisServer, redis_url: str
) -> None:
    holder = AsyncRedisLock("abusy", redis_url, ttl=10)
    assert await holder.acquire()
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=60)
    inner = AsyncCounting(AsyncRedisLock("abusy", redis_url, ttl=10, socket_timeout=0.3))
    lock = AsyncRobustLock(inner, deadline=0.3, base_delay=0.01, max_delay=0.05, breaker=breaker)
    assert await lock.acquire() is False
    assert inner.calls > 1
    assert breaker.state == "closed"
    await holder.release()
    assert await lock.acquire()
    await lock.release()

    redis_server.kill()
    calls = inner.calls
    with pytest.raises(CircuitOpen):
        await lock.acquire(timeout=5)
    assert inner.calls == calls + 2
    with pytest.raises(CircuitOpen):
        await lock.acquire()
    assert inner.calls == calls + 2


def test_robust_lock_rejects_bad_delays(redis_url: str) -> None:
    inner = RedisLock("cfg", redis_url)
    with pytest.raises(ValueError, match="max_delay"):
        RobustLock(inner, base_delay=1, max_delay=0.5)
    with pytest.raises(ValueError, match="deadline"):
        RobustLock(inner, deadline=-1)


async def test_cancelled_trial_call_is_no_verdict() -> None:
    """A half-open trial whose task is cancelled says nothing about the backend: the
    breaker stays open (a success would close it) and allows the next trial at once."""
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 10.0
    assert breaker.state == "half-open"
    started = asyncio.Event()

    async def slow() -> bool:
        started.set()
        await asyncio.Event().wait()  # never answers
        return True

    task = asyncio.create_task(breaker.call_async(slow))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half-open"  # not closed: the trial gave no verdict
    assert breaker.failures == 1

    async def fine() -> bool:
        return True

    assert await breaker.call_async(fine)  # the next trial may go at once
    assert breaker.state == "closed"
