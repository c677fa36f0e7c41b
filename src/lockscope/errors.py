"""The exceptions every lockscope lock raises, whatever its backend."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "LockError", "LockLost", "LockNotAcquired", "LockNotOwned"]


class LockError(Exception):
    """Base class of every error a lockscope lock raises."""


class LockNotAcquired(LockError):
    """The lock could not be acquired in time (raised by the context managers)."""


class LockNotOwned(LockError):
    """The caller does not hold the lock (never acquired, released, or the lease expired)."""


class LockLost(LockNotOwned):
    """The lock was held and is known to be lost: lease expired, session lost, renewal failed.

    A subclass of :class:`LockNotOwned`, so code that handles "not owned" also handles it.
    """


class BackendUnavailable(LockError):
    """The lock server could not be reached or answered with an error within its timeout.

    Contention is never reported this way: a lock that is busy makes ``acquire`` return
    ``False``.  Circuit breakers count only this error.
    """
