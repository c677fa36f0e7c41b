"""The asyncio flavours of the locks, under the same names as :mod:`lockscope.locks`.

``from lockscope.locks.aio import RedisLock`` gives the class whose methods are coroutines;
each is defined beside its sync twin (``lockscope.locks.redis.AsyncRedisLock``).
"""

from __future__ import annotations

import importlib
from typing import Any

from lockscope.locks.base import AsyncLock

# public name -> (module, class defined there)
_LAZY = {
    "RedisLock": ("redis", "AsyncRedisLock"),
    "Redlock": ("redlock", "AsyncRedlock"),
    "DatabaseLock": ("database", "AsyncDatabaseLock"),
    "ZooKeeperLock": ("zookeeper", "AsyncZooKeeperLock"),
    "ZooKeeperReadLock": ("zookeeper", "AsyncZooKeeperReadLock"),
    "ZooKeeperWriteLock": ("zookeeper", "AsyncZooKeeperWriteLock"),
    "ZooKeeperSemaphore": ("zookeeper", "AsyncZooKeeperSemaphore"),
    "LeaderElection": ("election", "AsyncLeaderElection"),
    "AutoRenewingLock": ("renewal", "AsyncAutoRenewingLock"),
    "FairLock": ("fair", "AsyncFairLock"),
    "RobustLock": ("retry", "AsyncRobustLock"),
    "acquire_all": ("multi", "acquire_all_async"),
}

__all__ = ["AsyncLock", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"lockscope.locks.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
