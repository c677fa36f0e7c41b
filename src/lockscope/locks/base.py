"""The common lock surface: one set of names for every backend, sync and asyncio.

Every lockscope lock offers ``acquire(blocking=True, timeout=None) -> bool``, ``release()``,
``extend(seconds)``, ``locked()``, ``owned()``, a ``fencing_token`` and a context manager
that raises :class:`~lockscope.errors.LockNotAcquired` when ``blocking_timeout`` runs out.
The asyncio flavour (:class:`AsyncLock`) has the same names as coroutines.

Backends that acquire by polling (Redis, Redlock, database leases) implement only
``_try_acquire``; the retry loop, with jittered sleeps under a monotonic deadline, lives
here once.
"""

from __future__ import annotations

import abc
import asyncio
import math
import random
import time
from typing import ClassVar, Self

from lockscope.errors import LockNotAcquired

__all__ = [
    "AsyncLock",
    "Lock",
    "LockMode",
    "validate_name",
    "validate_timeout",
    "validate_ttl",
]

LockMode = str
"""``"exclusive"``, ``"read"``, ``"write"`` or ``"semaphore"`` (see docs/events.md)."""

_MAX_NAME_LENGTH = 1024


def validate_name(name: object) -> str:
    """Return ``name`` if it is a usable lock name, else raise ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"lock name must be a str, not {type(name).__name__}")
    if not name or name.isspace():
        raise ValueError("lock name must not be empty")
    if len(name) > _MAX_NAME_LENGTH:
        raise ValueError(f"lock name is longer than {_MAX_NAME_LENGTH} characters")
    return name


def _number(value: object, what: str) -> float:
    # bool is an int subclass, but ``ttl=True`` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def validate_ttl(ttl: object, what: str = "ttl") -> float:
    """Return ``ttl`` as seconds if it is a positive finite number."""
    seconds = _number(ttl, what)
    if seconds <= 0:
        raise ValueError(f"{what} must be positive, got {ttl!r}")
    return seconds


def validate_timeout(timeout: object, what: str = "timeout") -> float | None:
    """Return ``timeout`` as seconds (``None`` = wait forever) if it is not negative."""
    if timeout is None:
        return None
    seconds = _number(timeout, what)
    if seconds < 0:
        raise ValueError(f"{what} must not be negative, got {timeout!r}")
    return seconds


class _LockCommon:
    """Attributes shared by the sync and asyncio flavours."""

    system: ClassVar[str] = "unknown"
    """Backend family, as in the ``lockscope.lock.system`` event attribute."""
    mode: LockMode = "exclusive"

    def __init__(
        self,
        name: str,
        *,
        ttl: float | None,
        blocking_timeout: float | None = None,
        retry_interval: float = 0.05,
    ) -> None:
        self.name = validate_name(name)
        self.ttl = None if ttl is None else validate_ttl(ttl)
        self.blocking_timeout = validate_timeout(blocking_timeout, "blocking_timeout")
        self.retry_interval = validate_ttl(retry_interval, "retry_interval")
        self.fencing_token: int | None = None
        """Token of this object's latest successful acquisition; strictly increasing per name."""

    @property
    def namespace(self) -> str:
        """Where the lock lives (server address, database, path): part of its identity."""
        return ""

    def _sleep_for(self, deadline: float | None) -> float:
        # Full jitter spreads contenders out so they do not retry in lock step.
        pause = random.uniform(self.retry_interval / 2, self.retry_interval * 1.5)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        return pause

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.namespace or '?'}>"


class Lock(_LockCommon, abc.ABC):
    """A blocking lock with the common lockscope surface."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; return ``True`` once held, ``False`` if it stayed busy.

        ``blocking=False`` tries once.  ``timeout`` (seconds, ``None`` = forever) bounds
        the wait.  Backend errors raise :class:`~lockscope.errors.BackendUnavailable`.
        """
        timeout = validate_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_acquire():
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(self._sleep_for(deadline))

    @abc.abstractmethod
    def _try_acquire(self) -> bool:
        """Try once; on success set ``fencing_token`` and return ``True``."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock back; raise :class:`~lockscope.errors.LockNotOwned` if not held."""

    @abc.abstractmethod
    def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now; ``LockNotOwned`` if no longer held."""

    @abc.abstractmethod
    def locked(self) -> bool:
        """Whether anyone holds the lock now."""

    @abc.abstractmethod
    def owned(self) -> bool:
        """Whether this object holds the lock now (asks the server)."""

    def __enter__(self) -> Self:
        if not self.acquire(blocking=True, timeout=self.blocking_timeout):
            raise LockNotAcquired(f"{self.name!r} not acquired in {self.blocking_timeout}s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class AsyncLock(_LockCommon, abc.ABC):
    """The asyncio flavour of :class:`Lock`: the same names, as coroutines."""

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; see :meth:`Lock.acquire`."""
        timeout = validate_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if await self._try_acquire():
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            await asyncio.sleep(self._sleep_for(deadline))

    @abc.abstractmethod
    async def _try_acquire(self) -> bool:
        """Try once; on success set ``fencing_token`` and return ``True``."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Give the lock back; see :meth:`Lock.release`."""

    @abc.abstractmethod
    async def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now; see :meth:`Lock.extend`."""

    @abc.abstractmethod
    async def locked(self) -> bool:
        """Whether anyone holds the lock now."""

    @abc.abstractmethod
    async def owned(self) -> bool:
        """Whether this object holds the lock now."""

    async def __aenter__(self) -> Self:
        if not await self.acquire(blocking=True, timeout=self.blocking_timeout):
            raise LockNotAcquired(f"{self.name!r} not acquired in {self.blocking_timeout}s")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
