"""Acquire through a flaky backend: retries with backoff, and a circuit breaker.

:class:`RobustLock` wraps any lock.  ``acquire`` retries a busy lock *and* a failing
backend with exponential backoff and full jitter (``sleep = uniform(0, min(max_delay,
base_delay * 2**attempt))``, as in the AWS Architecture Blog's "Exponential Backoff And
Jitter") until an overall ``deadline``, so a crowd of clients spreads out instead of
hammering a server that is busy or recovering::

    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30)
    lock = RobustLock(RedisLock("invoice", client=r, ttl=30), deadline=10, breaker=breaker)
    with lock:          # LockNotAcquired after 10 s of contention, CircuitOpen if Redis is down
        ...

:class:`CircuitBreaker` stops calling a backend that keeps failing.  It counts only
:class:`~lockscope.errors.BackendUnavailable` (the server is down or erroring): a lock
that is busy is the backend *working*, and never opens the circuit.  After
``failure_threshold`` consecutive failures the circuit opens and every call fails at once
with :class:`CircuitOpen` (a ``BackendUnavailable``) without touching the network; after
``recovery_timeout`` seconds one trial call is let through (half-open): success closes
the circuit, failure opens it for another ``recovery_timeout``.  Share one breaker between
all locks on the same server.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypedDict, TypeVar, Unpack, cast

from lockscope._forward import Forward
from lockscope.errors import BackendUnavailable
from lockscope.locks._delegate import AsyncDelegatingLock, DelegatingLock
from lockscope.locks._sansio import GiveBack, Invoke, Op, Sleep, run, run_async
from lockscope.locks.base import AsyncLock, Lock, validate_timeout, validate_ttl

__all__ = [
    "AsyncRobustLock",
    "CircuitBreaker",
    "CircuitOpen",
    "RobustLock",
    "backoff_delay",
]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitOpen(BackendUnavailable):
    """The circuit breaker is open: the call was refused without contacting the backend."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until the breaker lets a trial call through."""


class CircuitBreaker:
    """Closed / open / half-open breaker that trips on backend errors only; thread-safe.

    Use :meth:`call` (or :meth:`call_async`) around each backend call, or let
    :class:`RobustLock` do it.  ``clock`` (monotonic seconds) is replaceable for tests.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        self.failure_threshold = failure_threshold
        self.recovery_timeout = validate_ttl(recovery_timeout, "recovery_timeout")
        self.name = name
        self._clock = clock
        self._mutex = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (open, and a trial call is allowed
        or in flight)."""
        with self._mutex:
            if self._state == OPEN and self._clock() >= self._opened_at + self.recovery_timeout:
                return HALF_OPEN
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive backend failures counted so far."""
        return self._failures

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go to the backend now.

        In half-open state only one caller gets through (the trial); every call that
        passes must be followed by :meth:`record_success` or :meth:`record_failure` (or
        :meth:`record_neutral`).
        """
        with self._mutex:
            if self._state == CLOSED:
                return
            now = self._clock()
            if self._state == OPEN:
                reopen_at = self._opened_at + self.recovery_timeout
                if now < reopen_at:
                    raise CircuitOpen(self._why("open"), reopen_at - now)
                self._state = HALF_OPEN
                log.info("circuit %s half-open: letting one trial call through", self.name)
            # half-open: one trial at a time; a trial never reported frees its slot after
            # recovery_timeout so a lost caller cannot wedge the breaker.
            if self._trial_started is not None and now < (
                self._trial_started + self.recovery_timeout
            ):
                raise CircuitOpen(self._why("half-open, trial call in flight"), 0.0)
            self._trial_started = now

    def record_success(self) -> None:
        """The backend answered (whatever the answer): close the circuit."""
        with self._mutex:
            self._failures = 0
            self._trial_started = None
            if self._state != CLOSED:
                self._state = CLOSED
                log.info("circuit %s closed: backend answered", self.name)

    def record_failure(self) -> None:
        """The backend failed (``BackendUnavailable``)."""
        with self._mutex:
            self._failures += 1
            self._trial_started = None
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._failures >= self.failure_threshold
            ):
                self._state = OPEN
                self._opened_at = self._clock()
                log.warning(
                    "circuit %s open after %d backend failures: failing fast for %.3gs",
                    self.name,
                    self._failures,
                    self.recovery_timeout,
                )

    def record_neutral(self) -> None:
        """The call ended without telling anything about the backend (e.g. cancelled)."""
        with self._mutex:
            self._trial_started = None
            if self._state == HALF_OPEN:
                self._state = OPEN  # the trial ended with no verdict: allow another at once

    def _guarded_op(self, call: Invoke) -> Op[Any]:
        # Both flavours: what the call's outcome says about the backend.
        self.before_call()
        try:
            result = yield call
        except BackendUnavailable:
            self.record_failure()
            raise
        except GiveBack:  # the awaiting task was cancelled: no verdict
            self.record_neutral()
            raise
        except Exception:
            self.record_success()  # e.g. LockNotOwned: an answer from a working backend
            raise
        except BaseException:
            self.record_neutral()
            raise
        self.record_success()
        return result

    def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` through the breaker."""
        return cast(_T, run(self._guarded_op(Invoke(fn, args, kwargs))))

    async def call_async(
        self, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``await fn(*args, **kwargs)`` through the breaker."""
        return cast(_T, await run_async(self._guarded_op(Invoke(fn, args, kwargs))))

    def _why(self, state: str) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (
            f"circuit breaker{label} is {state} after {self._failures} backend failures: "
            "not calling the backend"
        )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state} failures={self._failures}>"


def backoff_delay(attempt: int, base_delay: float, max_delay: float) -> float:
    """Full jitter: ``uniform(0, min(max_delay, base_delay * 2**attempt))``."""
    return random.uniform(0.0, min(max_delay, base_delay * 2.0 ** min(attempt, 64)))


def _check_delays(base_delay: float, max_delay: float) -> tuple[float, float]:
    base = validate_ttl(base_delay, "base_delay")
    cap = validate_ttl(max_delay, "max_delay")
    if cap < base:
        raise ValueError(f"max_delay ({cap}) must not be below base_delay ({base})")
    return base, cap


class RetryOptions(TypedDict, total=False):
    """:class:`RobustLock`'s keyword arguments (both flavours): ``deadline`` (10 s; ``None``
    = forever), ``base_delay`` (0.05 s), ``max_delay`` (2 s), ``breaker`` (none)."""

    deadline: float | None
    base_delay: float
    max_delay: float
    breaker: CircuitBreaker | None


class _Retrying:
    """Settings and bookkeeping shared by both flavours."""

    def __init__(
        self,
        *,
        deadline: float | None = 10.0,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.deadline = validate_timeout(deadline, "deadline")
        self.base_delay, self.max_delay = _check_delays(base_delay, max_delay)
        self.breaker = breaker
        self.attempts = 0
        """Tries made by the latest ``acquire`` call."""

    def end(self, timeout: float | None) -> float | None:
        budget = self.deadline if timeout is None else validate_timeout(timeout)
        return None if budget is None else time.monotonic() + budget

    def pause_after_miss(
        self, attempt: int, end: float | None, blocking: bool, error: BackendUnavailable | None
    ) -> float | None:
        """Seconds to sleep after try ``attempt`` (from 0) missed, or ``None`` to give up.

        Giving up after a try that hit a backend ``error`` re-raises it.
        """
        remaining = None if end is None else end - time.monotonic()
        if not blocking or (remaining is not None and remaining <= 0):
            if error is not None:
                raise error
            return None
        delay = backoff_delay(attempt, self.base_delay, self.max_delay)
        return delay if remaining is None else min(delay, remaining)


class _Robust:
    """The retry loop (sans-IO) and the accessors of both flavours."""

    _retry: _Retrying
    _acquired: Callable[[bool], bool]

    breaker = Forward[CircuitBreaker | None]("The circuit breaker in use, if any.", via="_retry")
    attempts = Forward[int]("Tries made by the latest ``acquire`` call.", via="_retry")

    def _acquire_op(
        self, blocking: bool, timeout: float | None, try_once: Callable[[], Any]
    ) -> Op[bool]:
        """``try_once``: one non-blocking acquire of the wrapped lock, through the breaker."""
        end = self._retry.end(timeout)
        attempt = 0
        self._retry.attempts = 0
        while True:
            error: BackendUnavailable | None = None
            self._retry.attempts += 1
            try:
                ok = yield Invoke(try_once)
            except CircuitOpen:
                raise
            except BackendUnavailable as exc:
                ok, error = False, exc
            if ok:
                return self._acquired(True)
            pause = self._retry.pause_after_miss(attempt, end, blocking, error)
            if pause is None:
                return False
            yield Sleep(pause)
            attempt += 1


class RobustLock(_Robust, DelegatingLock[Lock]):
    """Wrap ``lock`` so that ``acquire`` retries with backoff through an optional breaker.

    ``acquire(timeout=None)`` tries for ``deadline`` seconds (``None`` = forever); an
    explicit ``timeout`` replaces it for that call.  Each try is a non-blocking acquire of
    the wrapped lock, so wrap polling locks (Redis, database); a FIFO lock (FairLock,
    ZooKeeper) would lose its queue place between tries.  When the time is up ``acquire``
    returns ``False`` if the last try found the lock busy and re-raises the error if the
    backend failed.  An open ``breaker`` makes ``acquire``, ``extend``, ``locked`` and
    ``owned`` raise :class:`CircuitOpen` at once.  ``release`` always goes to the server
    (skipping it would leave others waiting for the lease) and is not counted.
    """

    def __init__(self, lock: Lock, **options: Unpack[RetryOptions]) -> None:
        super().__init__(lock)
        self._retry = _Retrying(**options)

    def _call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._retry.breaker is None:
            return fn(*args, **kwargs)
        return self._retry.breaker.call(fn, *args, **kwargs)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        try_once = functools.partial(self._call, self.wrapped.acquire, blocking=False)
        return run(self._acquire_op(blocking, timeout, try_once))

    def extend(self, seconds: float) -> None:
        self._call(self.wrapped.extend, seconds)

    def locked(self) -> bool:
        return self._call(self.wrapped.locked)

    def owned(self) -> bool:
        return self._call(self.wrapped.owned)


class AsyncRobustLock(_Robust, AsyncDelegatingLock[AsyncLock]):
    """The asyncio flavour of :class:`RobustLock`."""

    def __init__(self, lock: AsyncLock, **options: Unpack[RetryOptions]) -> None:
        super().__init__(lock)
        self._retry = _Retrying(**options)

    async def _call(
        self, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if self._retry.breaker is None:
            return await fn(*args, **kwargs)
        return await self._retry.breaker.call_async(fn, *args, **kwargs)

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        try_once = functools.partial(self._call, self.wrapped.acquire, blocking=False)
        return await run_async(self._acquire_op(blocking, timeout, try_once))

    async def extend(self, seconds: float) -> None:
        await self._call(self.wrapped.extend, seconds)

    async def locked(self) -> bool:
        return await self._call(self.wrapped.locked)

    async def owned(self) -> bool:
        return await self._call(self.wrapped.owned)
