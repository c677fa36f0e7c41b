"""The ZooKeeper semaphore: kazoo's ``Semaphore`` and the proxy that lets it be cancelled."""

from __future__ import annotations

from typing import Any

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock as KazooLock
from kazoo.recipe.lock import Semaphore as KazooSemaphore

from lockscope.errors import BackendUnavailable, LockError
from lockscope.locks.base import LockMode
from lockscope.locks.zookeeper._calls import sequence_of
from lockscope.locks.zookeeper._primitive import ZooKeeperHolder, ZooKeeperPrimitive


class _InternalLockRecorder:
    """The client as kazoo's Semaphore sees it, recording the internal lock it creates.

    kazoo's Semaphore serialises lease grabbing with a private ``Lock`` it builds from
    ``client.Lock``; knowing that lock is the only way to cancel a wait on it and to find
    its node if its cleanup failed (an orphan there would block the semaphore for good).
    """

    def __init__(self, client: Any, owner: ZooKeeperSemaphore) -> None:
        self._client = client
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def Lock(self, path: str, identifier: str | None = None) -> Any:
        lock = KazooLock(self._client, path, identifier)
        self._owner._internal_locks.append(lock)
        if self._owner._cancelling:
            lock.cancel()
        return lock


class ZooKeeperSemaphore(ZooKeeperPrimitive):
    """A counting semaphore on ZooKeeper: kazoo's :class:`kazoo.recipe.lock.Semaphore`.

    At most ``max_leases`` holders at once; every user of the path must agree on it (kazoo
    stores it on the path and raises ``ValueError`` on a mismatch). Waiters queue on a
    kazoo lock at ``<path>-__lock__``, so they are served in arrival order.

    The fencing token is the creation zxid (``czxid``) of this holder's lease node: lease
    nodes are not sequential, but zxids are totally ordered across the ensemble, so the
    token strictly increases with every lease granted on the path.
    """

    mode: LockMode = "semaphore"
    max_leases: int

    def __init__(self, client: KazooClient | str, name: str, *, max_leases: int, **kw: Any) -> None:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive int, got {max_leases!r}")
        super().__init__(client, name, **kw)
        self.max_leases = max_leases
        self._internal_locks: list[Any] = []
        self._cancelling = False

    def _new_recipe(self) -> Any:
        self._internal_locks = []
        self._cancelling = False
        recipe = KazooSemaphore(
            _InternalLockRecorder(self.client, self),
            self.path,
            self.identifier,
            max_leases=self.max_leases,
        )
        recipe.assured_path = self._assured_path
        return recipe

    def _recipe_acquire(self, recipe: Any, blocking: bool, timeout: float | None) -> bool:
        try:
            return bool(recipe.acquire(blocking=blocking, timeout=timeout))
        except ValueError as exc:
            raise LockError(str(exc)) from exc
        finally:
            # kazoo's Semaphore adds a session listener per acquire and removes it only on
            # LOST; one recipe per attempt would otherwise leak one listener per acquire.
            self.client.remove_listener(recipe._watch_session)

    def _cancel_recipe(self, recipe: Any) -> None:
        self._cancelling = True
        recipe.cancel()
        for lock in list(self._internal_locks):
            lock.cancel()

    def _attempt_nodes(self, recipe: Any) -> list[tuple[str, str]]:
        lease = recipe.create_path.rsplit("/", 1)[1]
        nodes = [(self.path, lease)]
        nodes += [(lock.path, lock.prefix) for lock in self._internal_locks]
        return nodes

    def _node_path(self, recipe: Any) -> str | None:
        return str(recipe.create_path)

    def _token_after_acquire(self, recipe: Any) -> int | None:
        try:
            stat = self._node_stat(recipe.create_path)
        except BackendUnavailable:
            return None
        return None if stat is None else int(stat.czxid)

    @property
    def node(self) -> str | None:
        """This holder's lease node name while it holds, else ``None``."""
        recipe = self._recipe
        if recipe is None or not recipe.is_acquired:
            return None
        return str(recipe.create_path.rsplit("/", 1)[1])

    @property
    def sequence(self) -> int | None:
        """The queue ticket while waiting for the internal lock, else ``None``."""
        for lock in self._internal_locks:
            if lock.node:
                return sequence_of(lock.node)
        return None

    def contenders(self) -> list[str]:
        """Identifiers of the current lease holders (unordered), as kazoo's
        ``lease_holders()``, with every call bounded by ``operation_timeout``."""
        self._conn.ensure_started()
        return self._identifiers(self._children())

    def holder(self) -> ZooKeeperHolder | None:
        """Semaphores have many holders: always ``None`` (see :meth:`contenders`)."""
        return None

    def locked(self) -> bool:
        """Whether every lease is taken (an acquire would have to wait), as in asyncio."""
        return len(self.contenders()) >= self.max_leases
