"""ZooKeeper locks: kazoo's ``Lock``, ``ReadLock``, ``WriteLock`` and ``Semaphore`` recipes
behind the common lockscope surface, sync and asyncio.

The recipes themselves are kazoo's and unchanged (ephemeral sequential contender nodes,
each waiter watching only its predecessor, so waiters are served in arrival order). The
adapters add what the recipes leave to the caller:

* a **fencing token**: the contender node's sequence number, which ZooKeeper makes
  strictly increasing per lock path (for the semaphore, whose lease nodes are not
  sequential, the lease node's creation zxid);
* **lost-lock signalling** from kazoo's connection states: ``SUSPENDED`` makes the hold
  ``uncertain`` (it may still be valid; cleared when the session reconnects), ``LOST``
  makes it ``lost``: the flag is set, ``on_lost`` is called and the next ``extend()`` or
  ``release()`` raises :class:`~lockscope.errors.LockLost`;
* **no orphaned contender nodes**: a timed-out, cancelled or failed acquire removes its
  node, and when the server cannot be reached for that, it is removed as soon as the
  session reconnects (an orphan would otherwise block the lock for the life of the
  session);
* a timeout that bounds the whole wait (kazoo restarts its timeout at every
  predecessor change) and a ``cancel()`` that works from any thread.

ZooKeeper has no lease: ``ttl`` is ``None`` and ``extend(seconds)`` only checks that the
hold is still valid on the server.

The package's modules, one concern each: ``_connection`` (client ownership and lock
paths), ``_calls`` (server calls bounded by ``operation_timeout``), ``_sweep`` (orphaned
nodes), ``_deadline`` (the acquire deadline and abandoned attempts), ``_listener``
(connection states), ``_primitive`` (what the sync locks share), ``_locks`` and
``_semaphore`` (the four recipes), ``_aio`` (the asyncio twins).
"""

from __future__ import annotations

from lockscope.locks.zookeeper._aio import (
    AsyncZooKeeperLock,
    AsyncZooKeeperReadLock,
    AsyncZooKeeperSemaphore,
    AsyncZooKeeperWriteLock,
)
from lockscope.locks.zookeeper._calls import sequence_of
from lockscope.locks.zookeeper._connection import DEFAULT_BASE_PATH
from lockscope.locks.zookeeper._locks import ZooKeeperLock, ZooKeeperReadLock, ZooKeeperWriteLock
from lockscope.locks.zookeeper._primitive import ZooKeeperHolder
from lockscope.locks.zookeeper._semaphore import ZooKeeperSemaphore

__all__ = [
    "DEFAULT_BASE_PATH",
    "AsyncZooKeeperLock",
    "AsyncZooKeeperReadLock",
    "AsyncZooKeeperSemaphore",
    "AsyncZooKeeperWriteLock",
    "ZooKeeperHolder",
    "ZooKeeperLock",
    "ZooKeeperReadLock",
    "ZooKeeperSemaphore",
    "ZooKeeperWriteLock",
    "sequence_of",
]
