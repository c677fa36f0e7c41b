"""Take several locks at once without deadlocking: one global order, all or nothing.

Two workers that take the same two locks in opposite orders can each hold one and wait
for the other forever.  Hierarchical locking removes that cycle: every caller takes locks
in one canonical order.  :func:`acquire_all` does it for you::

    with acquire_all([account(b), account(a)], timeout=5) as held:
        transfer(a, b)

The canonical order is ``(system, namespace, name)`` of each lock, the same identity the
agent uses, so the order is the same in every process whatever order the caller lists the
locks in.  Within ``timeout`` (seconds, shared by all the locks; ``None`` = wait forever)
either every lock is taken, or none stays taken: the ones already held are released in
reverse order and :class:`~lockscope.errors.LockNotAcquired` is raised.  On leaving the
block the locks are released in reverse order; every release is attempted even if one
fails, and the first failure is raised afterwards.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from lockscope.errors import LockNotAcquired
from lockscope.locks.base import AsyncLock, Lock, validate_timeout

__all__ = ["acquire_all", "acquire_all_async", "canonical_order"]

log = logging.getLogger(__name__)

_AnyLock = TypeVar("_AnyLock", Lock, AsyncLock)


def canonical_order(locks: Iterable[_AnyLock]) -> list[_AnyLock]:
    """``locks`` sorted by ``(system, namespace, name)``; ``ValueError`` on a duplicate.

    A duplicate would make the caller wait for itself (the locks are not reentrant).
    """
    ordered = sorted(locks, key=_identity)
    for first, second in itertools.pairwise(ordered):
        if _identity(first) == _identity(second):
            raise ValueError(f"lock {first.name!r} is listed twice")
    return ordered


def _identity(lock: Lock | AsyncLock) -> tuple[str, str, str]:
    return (lock.system, lock.namespace, lock.name)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _first_error(errors: Sequence[BaseException]) -> BaseException | None:
    for extra in errors[1:]:
        log.error("releasing a lock failed as well: %r", extra)
    return errors[0] if errors else None


def _release_all(held: Sequence[Lock]) -> BaseException | None:
    errors: list[BaseException] = []
    for lock in reversed(held):
        try:
            lock.release()
        except Exception as exc:
            errors.append(exc)
    return _first_error(errors)


async def _release_all_async(held: Sequence[AsyncLock]) -> BaseException | None:
    errors: list[BaseException] = []
    for lock in reversed(held):
        try:
            await lock.release()
        except Exception as exc:
            errors.append(exc)
    return _first_error(errors)


@contextmanager
def acquire_all(locks: Iterable[Lock], timeout: float | None = None) -> Iterator[list[Lock]]:
    """Hold every lock in ``locks`` for the ``with`` block; see the module docs.

    Yields the locks in the order they were taken.  Backend errors
    (:class:`~lockscope.errors.BackendUnavailable`) propagate after the locks taken so far
    are released.
    """
    ordered = canonical_order(locks)
    deadline = _deadline(timeout)
    held: list[Lock] = []
    try:
        for lock in ordered:
            if not lock.acquire(blocking=True, timeout=_remaining(deadline)):
                raise LockNotAcquired(
                    f"{lock.name!r} not acquired within {timeout}s; "
                    f"released the {len(held)} lock(s) already taken"
                )
            held.append(lock)
    except BaseException:
        _release_all(held)
        raise
    try:
        yield list(held)
    except BaseException as exc:
        error = _release_all(held)
        if error is not None:  # keep the body's exception primary
            exc.add_note(f"releasing the locks afterwards failed too: {error!r}")
        raise
    error = _release_all(held)
    if error is not None:
        raise error


@asynccontextmanager
async def acquire_all_async(
    locks: Iterable[AsyncLock], timeout: float | None = None
) -> AsyncIterator[list[AsyncLock]]:
    """The asyncio flavour of :func:`acquire_all` (``async with acquire_all_async(...)``)."""
    ordered = canonical_order(locks)
    deadline = _deadline(timeout)
    held: list[AsyncLock] = []
    try:
        for lock in ordered:
            if not await lock.acquire(blocking=True, timeout=_remaining(deadline)):
                raise LockNotAcquired(
                    f"{lock.name!r} not acquired within {timeout}s; "
                    f"released the {len(held)} lock(s) already taken"
                )
            held.append(lock)
    except BaseException:
        await _release_all_async(held)
        raise
    try:
        yield list(held)
    except BaseException as exc:
        error = await _release_all_async(held)
        if error is not None:  # keep the body's exception primary
            exc.add_note(f"releasing the locks afterwards failed too: {error!r}")
        raise
    error = await _release_all_async(held)
    if error is not None:
        raise error


def _deadline(timeout: float | None) -> float | None:
    seconds = validate_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds
