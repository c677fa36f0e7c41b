"""The lock mechanisms: every backend offers the common surface of :mod:`lockscope.locks.base`.

Backends import their client library only when used, so ``pip install lockscope[redis]``
is enough for the Redis locks.  The asyncio flavours have the same names in
:mod:`lockscope.locks.aio` (as redis-py has ``redis.lock`` and ``redis.asyncio.lock``).
"""

from __future__ import annotations

import importlib
from typing import Any

from lockscope.locks.base import AsyncLock, Lock

# public name -> module that defines it; imported on first use.
_LAZY = {
    "RedisLock": "redis",
    "Redlock": "redlock",
    "DatabaseLock": "database",
    "ZooKeeperLock": "zookeeper",
    "ZooKeeperReadLock": "zookeeper",
    "ZooKeeperWriteLock": "zookeeper",
    "ZooKeeperSemaphore": "zookeeper",
    "LeaderElection": "election",
    "AutoRenewingLock": "renewal",
    "FairLock": "fair",
    "RobustLock": "retry",
    "CircuitBreaker": "retry",
    "CircuitOpen": "retry",
    "acquire_all": "multi",
}

__all__ = ["AsyncLock", "Lock", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
