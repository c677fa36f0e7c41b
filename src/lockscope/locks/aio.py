"""The asyncio flavours of the locks, under the same names as :mod:`lockscope.locks`.

``from lockscope.locks.aio import RedisLock`` gives the class whose methods are coroutines;
each is defined beside its sync twin (``lockscope.locks.redis.AsyncRedisLock``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lockscope.locks import _LAZY as _SYNC_LAZY
from lockscope.locks.base import AsyncLock

if TYPE_CHECKING:
    # The real classes for type checkers; imported lazily at run time (``__getattr__``).
    from lockscope.locks.database import AsyncDatabaseLock as DatabaseLock
    from lockscope.locks.election import AsyncLeaderElection as LeaderElection
    from lockscope.locks.fair import AsyncFairLock as FairLock
    from lockscope.locks.multi import acquire_all_async as acquire_all
    from lockscope.locks.redis import AsyncRedisLock as RedisLock
    from lockscope.locks.redlock import AsyncRedlock as Redlock
    from lockscope.locks.renewal import AsyncAutoRenewingLock as AutoRenewingLock
    from lockscope.locks.retry import AsyncRobustLock as RobustLock
    from lockscope.locks.zookeeper import AsyncZooKeeperLock as ZooKeeperLock
    from lockscope.locks.zookeeper import AsyncZooKeeperReadLock as ZooKeeperReadLock
    from lockscope.locks.zookeeper import AsyncZooKeeperSemaphore as ZooKeeperSemaphore
    from lockscope.locks.zookeeper import AsyncZooKeeperWriteLock as ZooKeeperWriteLock

# public name -> (module, class defined there): each sync name's ``Async`` twin.
_LAZY = {
    name: (module, f"Async{name}")
    for name, module in _SYNC_LAZY.items()
    if name not in ("CircuitBreaker", "CircuitOpen", "acquire_all")  # no twin, or another name
}
_LAZY["acquire_all"] = ("multi", "acquire_all_async")

# Spelled out (not ``[*_LAZY]``) so type checkers know what this module exports.
__all__ = [
    "AsyncLock",
    "AutoRenewingLock",
    "DatabaseLock",
    "FairLock",
    "LeaderElection",
    "RedisLock",
    "Redlock",
    "RobustLock",
    "ZooKeeperLock",
    "ZooKeeperReadLock",
    "ZooKeeperSemaphore",
    "ZooKeeperWriteLock",
    "acquire_all",
]


def __getattr__(name: str) -> Any:  # run time only: the names above are not bound
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"lockscope.locks.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
