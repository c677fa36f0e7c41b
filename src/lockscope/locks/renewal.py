"""Keep a lease lock held for as long as its owner works: a watchdog that calls ``extend``.

A lease (``ttl``) makes a crashed holder's lock come free by itself, but a job that runs
longer than the lease loses the lock half way.  :class:`AutoRenewingLock` renews the lease
every ``interval`` (default ``ttl / 3``) while the lock is held::

    lock = AutoRenewingLock(RedisLock("report", client=r, ttl=30), on_lost=alert)
    with lock:
        build_report()              # may take far longer than 30 s
        if lock.lost:               # optional: check before an irreversible step
            raise SystemExit("lost the lock")

The watchdog stops when the lock is released, after ``max_renewals`` renewals, or when the
thread (asyncio: the task) that acquired the lock has ended: a holder that died without
releasing must not keep the lock forever (Redisson's watchdog did, redisson#2455 and
friends).  The lease then runs out and others can take the lock.

When a renewal fails the lock is **lost**: ``lost`` becomes true, ``on_lost(error)`` is
called once and the next ``release``/``extend`` raises :class:`~lockscope.errors.LockLost`.
A renewal refused by the server (the lease had already run out, someone else holds the
lock) is a loss at once; a backend error is retried until the last confirmed lease has run
out, then it is a loss.  A renewal that runs later than ``ttl / 2`` after the previous good
one is logged as a warning: the watchdog is starved (overloaded host, stop-the-world pause,
blocked event loop) and the lease is at risk.

Design: the sync flavour uses one timer thread for all locks in the process, handing due
renewals to a small worker pool so that one slow server delays only its own locks.  The
asyncio flavour runs one task per held lock on the caller's event loop (tasks are cheap).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

from lockscope.errors import BackendUnavailable, LockError, LockLost, LockNotOwned
from lockscope.locks._delegate import AsyncDelegatingLock, DelegatingLock
from lockscope.locks._renewal_timer import schedule
from lockscope.locks._sansio import Invoke, Op, run, run_async
from lockscope.locks.base import AsyncLock, Lock, validate_ttl

__all__ = ["AsyncAutoRenewingLock", "AutoRenewingLock", "OnLost"]

log = logging.getLogger(__name__)

OnLost = Callable[[LockLost], object]
"""``on_lost(error)``; may return an awaitable for :class:`AsyncAutoRenewingLock`."""


class RenewalOptions(TypedDict, total=False):
    """The watchdog's keyword arguments (both flavours; see :class:`AutoRenewingLock`)."""

    interval: float | None
    max_renewals: int | None
    on_lost: OnLost | None


# Retrying a failed renewal faster than this only adds load to a struggling server.
_MIN_RETRY = 0.02


def _lease_of(lock: Lock | AsyncLock) -> float:
    if lock.ttl is None:
        raise ValueError(f"{lock!r} has no lease (ttl is None): there is nothing to renew")
    return lock.ttl


def _interval(lease: float, interval: float | None) -> float:
    if interval is None:
        return lease / 3
    seconds = validate_ttl(interval, "interval")
    if seconds >= lease:
        raise ValueError(f"interval ({seconds}s) must be shorter than the lease ({lease}s)")
    return seconds


def _max_renewals(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_renewals must be a non-negative int or None, got {value!r}")
    return value


def _check_extension_cap(lock: Lock | AsyncLock, max_renewals: int | None) -> None:
    # A lock that caps its own extensions (Redlock's max_extensions, 3 by default) would
    # refuse the watchdog's renewal past the cap, and the hold would be declared lost in
    # the middle of the work. Refuse the combination now, not minutes into a job.
    cap = getattr(lock, "max_extensions", None)
    if cap is None or (max_renewals is not None and max_renewals <= cap):
        return
    wanted = "unlimited renewals" if max_renewals is None else f"max_renewals={max_renewals}"
    raise ValueError(
        f"{lock!r} allows only {cap} extensions per hold (max_extensions={cap}), but the "
        f"watchdog is to renew it with {wanted}: the lock would be lost after {cap} "
        f"renewals. Create the lock with max_extensions=None (the watchdog's max_renewals "
        f"then bounds a hold) or pass max_renewals <= {cap}"
    )


class _Hold:
    """One acquisition being renewed; replaced on every acquire so stale timers do nothing."""

    __slots__ = ("count", "last_good", "owner", "stopped")

    def __init__(self, owner: object, acquired_at: float) -> None:
        self.owner = owner
        self.last_good = acquired_at  # monotonic time the current lease began, at the latest
        self.count = 0
        self.stopped = False


class _LossReporter:
    """State shared by both flavours: the lost flag and the once-only callback."""

    def __init__(self, lock_name: str, on_lost: OnLost | None) -> None:
        self._name = lock_name
        self.on_lost = on_lost
        self.error: LockLost | None = None

    def lost_error(self, cause: BaseException | None, why: str) -> LockLost:
        error = LockLost(f"lock {self._name!r} lost: {why}")
        error.__cause__ = cause
        return error

    def mark(self, error: LockLost) -> bool:
        """Record the loss; True the first time (the caller then runs the callback)."""
        if self.error is not None:
            return False
        self.error = error
        log.warning("%s", error)
        return True


class _Renewing:
    """Settings, state and renewal decisions shared by both flavours (no I/O, no waiting)."""

    name: str
    # How a late renewal is explained: what starves the watchdog in this flavour.
    _starved_by = "the watchdog is starved"

    def _init_renewal(
        self,
        lock: Lock | AsyncLock,
        *,
        interval: float | None = None,
        max_renewals: int | None = None,
        on_lost: OnLost | None = None,
    ) -> None:
        self.lease = _lease_of(lock)
        self.interval = _interval(self.lease, interval)
        self.max_renewals = _max_renewals(max_renewals)
        _check_extension_cap(lock, self.max_renewals)
        self._loss = _LossReporter(self.name, on_lost)
        self._hold: _Hold | None = None
        self.renewals = 0
        """Renewals that succeeded during the current (or last) hold."""
        self.late_renewals = 0
        """Renewals that ran later than ``ttl / 2`` after the previous good one."""

    @property
    def on_lost(self) -> OnLost | None:
        return self._loss.on_lost

    @property
    def lost(self) -> bool:
        """True once the current (or last) hold is known to be lost."""
        return self._loss.error is not None

    @property
    def renewing(self) -> bool:
        """Whether the watchdog is still renewing the current hold."""
        hold = self._hold
        return hold is not None and not hold.stopped

    def _renewals_done(self, hold: _Hold) -> bool:
        if self.max_renewals is not None and hold.count >= self.max_renewals:
            hold.stopped = True
            log.info("lock %r: %d renewals done, renewal stopped", self.name, hold.count)
            return True
        return False

    def _check_late(self, hold: _Hold, now: float) -> None:
        gap = now - hold.last_good
        if gap > self.lease / 2:
            self.late_renewals += 1
            log.warning(
                "lock %r: renewal ran %.3fs after the last good one (more than ttl/2 = %.3gs); "
                "%s and the lease is at risk",
                self.name,
                gap,
                self.lease / 2,
                self._starved_by,
            )

    def _retry_at(self, hold: _Hold, error: Exception) -> float | None:
        """When to retry a renewal that failed with ``error``; ``None``: the lease ran out."""
        lease_end = hold.last_good + self.lease
        now = time.monotonic()
        if now >= lease_end:
            return None
        log.warning("lock %r: renewal failed (%s), retrying", self.name, error)
        retry = min(self.interval, max(_MIN_RETRY, (lease_end - now) / 2))
        return min(now + retry, lease_end)

    def _renewed(self, hold: _Hold, started: float) -> float:
        """Record a renewal sent at ``started``; return when the next one is due."""
        hold.count += 1
        hold.last_good = started
        self.renewals = hold.count
        return started + self.interval

    def _renewal_op(
        self, hold: _Hold, gone: str | None, extend: Callable[[float], Any]
    ) -> Op[float | LockLost | None]:
        """One renewal, for both flavours: when the next one is due, the loss, or ``None``
        when renewing stops. ``gone`` names the acquiring thread or task if it ended."""
        if gone is not None:
            hold.stopped = True
            log.warning(
                "%s ended holding lock %r without releasing it: renewal stopped, "
                "the lease runs out within %.3gs",
                gone,
                self.name,
                self.lease,
            )
            return None
        if self._renewals_done(hold):
            return None
        started = time.monotonic()
        self._check_late(hold, started)
        try:
            yield Invoke(extend, (self.lease,))
        except LockNotOwned as exc:
            lost = self._loss.lost_error(exc, "renewal found it no longer held")
        except (BackendUnavailable, LockError, OSError) as exc:
            retry_at = self._retry_at(hold, exc)
            if retry_at is not None:
                return retry_at
            lost = self._loss.lost_error(exc, "renewal failed until the lease ran out")
        else:
            return self._renewed(hold, started)
        hold.stopped = True
        return lost

    def _extend_op(self, seconds: float, extend: Callable[[float], Any]) -> Op[LockLost | None]:
        """The owner's own ``extend``, for both flavours: the loss it revealed, if any."""
        if self._loss.error is not None:
            raise self._loss.error
        started = time.monotonic()
        try:
            yield Invoke(extend, (seconds,))
        except LockNotOwned as exc:
            if self._hold is None:
                raise
            return self._loss.lost_error(exc, "extend found it no longer held")
        self._extended(started, seconds)
        return None

    def _extended(self, started: float, seconds: float) -> None:
        if self._hold is not None:
            # The server replaced the lease: it now ends at started + seconds.
            self._hold.last_good = started + seconds - self.lease


class AutoRenewingLock(_Renewing, DelegatingLock[Lock]):
    """Wrap ``lock`` so that its lease is renewed while it is held.

    ``interval``: seconds between renewals (default ``lock.ttl / 3``); each renewal calls
    ``lock.extend(lock.ttl)``.  ``max_renewals``: stop renewing after this many (``None`` =
    no limit); the lease then runs out ``ttl`` later.  ``on_lost(error)`` is called once,
    from the watchdog thread, when the lock is lost; exceptions it raises are logged.

    The lock has the common surface of its wrapped lock (same name, system, fencing token).
    Renewals stop when the thread that acquired the lock ends: acquire and work in the same
    thread.
    """

    def __init__(self, lock: Lock, **options: Unpack[RenewalOptions]) -> None:
        super().__init__(lock)
        self._init_renewal(lock, **options)
        # Serialises renewals with the owner's extend/release: a renewal racing a release
        # would otherwise report a false loss, and backend lock objects need not be
        # thread-safe.
        self._mutex = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        ok = self.wrapped.acquire(blocking=blocking, timeout=timeout)
        if ok:
            hold = _Hold(threading.current_thread(), time.monotonic())
            with self._mutex:
                if self._hold is not None:
                    self._hold.stopped = True
                self._hold = hold
                self._loss.error = None
                self.renewals = 0
            self._schedule(hold, hold.last_good + self.interval)
        return self._acquired(ok)

    def release(self) -> None:
        with self._mutex:
            hold, self._hold = self._hold, None
            if hold is not None:
                hold.stopped = True
            error = self._loss.error
        if hold is not None and error is not None:
            raise error
        self.wrapped.release()

    def extend(self, seconds: float) -> None:
        with self._mutex:
            lost = run(self._extend_op(seconds, self.wrapped.extend))
        if lost is not None:
            self._report(lost)
            raise lost

    def _schedule(self, hold: _Hold, when: float) -> None:
        schedule(when, lambda: self._renew(hold))

    def _renew(self, hold: _Hold) -> None:
        with self._mutex:
            if hold.stopped or hold is not self._hold:
                return
            owner = hold.owner
            assert isinstance(owner, threading.Thread)
            gone = None if owner.is_alive() else f"thread {owner.name!r}"
            outcome = run(self._renewal_op(hold, gone, self.wrapped.extend))
        if isinstance(outcome, float):
            self._schedule(hold, outcome)
        elif outcome is not None:
            self._report(outcome)

    def _report(self, error: LockLost) -> None:
        if self._loss.mark(error) and self._loss.on_lost is not None:
            try:
                self._loss.on_lost(error)
            except Exception:
                log.exception("on_lost callback of lock %r failed", self.name)


class AsyncAutoRenewingLock(_Renewing, AsyncDelegatingLock[AsyncLock]):
    """The asyncio flavour of :class:`AutoRenewingLock`.

    The watchdog is a task on the event loop of the acquiring task; it stops when that
    task is done.  ``on_lost`` may be a plain function or a coroutine function.  A renewal
    that runs late here means the event loop was blocked (by sync code in some task).
    """

    _starved_by = "the event loop was blocked"

    def __init__(self, lock: AsyncLock, **options: Unpack[RenewalOptions]) -> None:
        super().__init__(lock)
        self._init_renewal(lock, **options)
        self._mutex = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        ok = await self.wrapped.acquire(blocking=blocking, timeout=timeout)
        if ok:
            hold = _Hold(asyncio.current_task(), time.monotonic())
            async with self._mutex:
                self._stop_watchdog()
                self._hold = hold
                self._loss.error = None
                self.renewals = 0
                self._task = asyncio.create_task(
                    self._watch(hold), name=f"lockscope-renew {self.name}"
                )
        return self._acquired(ok)

    def _stop_watchdog(self) -> None:
        # Called with the mutex held, so the watchdog is sleeping or queued on the mutex,
        # never inside extend(): cancelling cannot cut a server round-trip in half.
        if self._hold is not None:
            self._hold.stopped = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def release(self) -> None:
        async with self._mutex:
            hold = self._hold
            self._stop_watchdog()
            self._hold = None
            error = self._loss.error
        if hold is not None and error is not None:
            raise error
        await self.wrapped.release()

    async def extend(self, seconds: float) -> None:
        async with self._mutex:
            lost = await run_async(self._extend_op(seconds, self.wrapped.extend))
        if lost is not None:
            await self._report(lost)
            raise lost

    async def _watch(self, hold: _Hold) -> None:
        # Absolute due times: the task may first run late (a blocked loop), and that delay
        # must count against the lease, not be added on top of it.
        due = hold.last_good + self.interval
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            async with self._mutex:
                if hold.stopped or hold is not self._hold:
                    return
                owner = hold.owner
                gone = None
                if isinstance(owner, asyncio.Task) and owner.done():
                    gone = f"task {owner.get_name()!r}"
                outcome = await run_async(self._renewal_op(hold, gone, self.wrapped.extend))
            if not isinstance(outcome, float):
                if outcome is not None:
                    await self._report(outcome)
                return
            due = outcome

    async def _report(self, error: LockLost) -> None:
        if self._loss.mark(error) and self._loss.on_lost is not None:
            try:
                result = self._loss.on_lost(error)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_lost callback of lock %r failed", self.name)
