"""The exclusive and read/write ZooKeeper locks: kazoo's ``Lock``, ``WriteLock``, ``ReadLock``."""

from __future__ import annotations

from typing import Any, ClassVar

from kazoo.recipe.lock import Lock as KazooLock
from kazoo.recipe.lock import ReadLock as KazooReadLock
from kazoo.recipe.lock import WriteLock as KazooWriteLock

from lockscope.locks.base import LockMode
from lockscope.locks.zookeeper._primitive import ZooKeeperPrimitive


class ZooKeeperLock(ZooKeeperPrimitive):
    """An exclusive, FIFO lock on ZooKeeper: kazoo's :class:`kazoo.recipe.lock.Lock`.

    ``client`` is a started :class:`kazoo.client.KazooClient` (shared by many locks) or a
    hosts string (``"127.0.0.1:2181/chroot"``), in which case this lock owns a client,
    starts it on first use and stops it in :meth:`close`. ``name`` is a znode path, or a
    name relative to ``base_path``. ``on_lost(lock)`` is called when the session holding
    the lock is lost; ``on_uncertain(lock, uncertain)`` when the connection is suspended
    during a hold (``True``) and when it recovers with the session intact (``False``).
    Callbacks run on their own thread.
    """

    mode: LockMode = "exclusive"
    _kazoo_class: ClassVar[type[Any]] = KazooLock

    def _new_recipe(self) -> Any:
        recipe = self._kazoo_class(self.client, self.path, self.identifier)
        # Skip the ensure_path round trip once the parent is known to exist.
        recipe.assured_path = self._assured_path
        return recipe


class ZooKeeperWriteLock(ZooKeeperLock):
    """The writer side of kazoo's read/write lock: excludes readers and writers.

    Shares its path with :class:`ZooKeeperReadLock`; readers and writers are served in
    arrival order, so a writer is not starved by a stream of readers.
    """

    mode: LockMode = "write"
    _kazoo_class = KazooWriteLock


class ZooKeeperReadLock(ZooKeeperLock):
    """The reader side of kazoo's read/write lock: shared with readers, waits for writers
    queued ahead of it."""

    mode: LockMode = "read"
    _kazoo_class = KazooReadLock
