"""The lock mechanisms: every backend offers the common surface of :mod:`lockscope.locks.base`.

Backends import their client library only when used, so ``pip install lockscope[redis]``
is enough for the Redis locks.  The asyncio flavours have the same names in
:mod:`lockscope.locks.aio` (as redis-py has ``redis.lock`` and ``redis.asyncio.lock``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lockscope.locks.base import AsyncLock, Lock

if TYPE_CHECKING:
    # Type checkers see the real classes (a user's ``mypy --strict`` checks their
    # arguments); at run time ``__getattr__`` below imports each backend on first use, so
    # a missing optional client library only matters to whoever uses that backend.
    from lockscope.locks.database import DatabaseLock as DatabaseLock
    from lockscope.locks.election import LeaderElection as LeaderElection
    from lockscope.locks.fair import FairLock as FairLock
    from lockscope.locks.multi import acquire_all as acquire_all
    from lockscope.locks.redis import RedisLock as RedisLock
    from lockscope.locks.redlock import Redlock as Redlock
    from lockscope.locks.renewal import AutoRenewingLock as AutoRenewingLock
    from lockscope.locks.retry import CircuitBreaker as CircuitBreaker
    from lockscope.locks.retry import CircuitOpen as CircuitOpen
    from lockscope.locks.retry import RobustLock as RobustLock
    from lockscope.locks.zookeeper import ZooKeeperLock as ZooKeeperLock
    from lockscope.locks.zookeeper import ZooKeeperReadLock as ZooKeeperReadLock
    from lockscope.locks.zookeeper import ZooKeeperSemaphore as ZooKeeperSemaphore
    from lockscope.locks.zookeeper import ZooKeeperWriteLock as ZooKeeperWriteLock

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


def __getattr__(name: str) -> Any:  # run time only: the names above are not bound
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
