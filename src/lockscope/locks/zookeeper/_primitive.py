"""The core of the sync ZooKeeper locks: queueing, confirming, releasing, checking a hold."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import warnings
from typing import Any, ClassVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    CancelledError,
    KazooException,
    LockTimeout,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.protocol.states import KazooState

from lockscope._forward import Forward
from lockscope.errors import BackendUnavailable, LockError, LockLost, LockNotOwned
from lockscope.locks._threaded import CancelHandle
from lockscope.locks.base import Lock, validate_timeout, validate_ttl
from lockscope.locks.zookeeper._calls import BoundedCalls, sequence_of
from lockscope.locks.zookeeper._connection import (
    DEFAULT_BASE_PATH,
    Connection,
    default_identifier,
    lock_path,
)
from lockscope.locks.zookeeper._deadline import Abandoned, Deadlines
from lockscope.locks.zookeeper._listener import Callback, StateListener
from lockscope.locks.zookeeper._sweep import Sweeping, Targets


@dataclasses.dataclass(frozen=True)
class ZooKeeperHolder:
    """Who is first in a lock's queue, as :meth:`ZooKeeperLock.holder` reports it."""

    owner: str
    """The node name (what :attr:`ZooKeeperLock.owner` is for that holder)."""
    fencing_token: int | None
    """The node's sequence number."""
    ttl: None = None
    """ZooKeeper holds have no lease."""


class ZooKeeperPrimitive(BoundedCalls, StateListener, Sweeping, Deadlines, Lock):
    """What the four sync ZooKeeper locks share; subclasses name the kazoo recipe.

    The bases each hold one concern: bounded server calls, the connection-state
    listener, sweeping of leftover nodes and the acquire deadline.
    """

    system: ClassVar[str] = "zookeeper"
    fifo: ClassVar[bool] = True
    """Waiters are served in arrival order (the agent then adds queue-order "soft" edges)."""
    max_leases: int | None = None
    """Semaphores only: how many holders at once."""

    def __init__(
        self,
        client: KazooClient | str,
        name: str,
        *,
        identifier: str | None = None,
        base_path: str = DEFAULT_BASE_PATH,
        blocking_timeout: float | None = None,
        on_lost: Callback | None = None,
        on_uncertain: Callback | None = None,
        session_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        operation_timeout: float = 10.0,
    ) -> None:
        path = lock_path(name, base_path)
        super().__init__(path, ttl=None, blocking_timeout=blocking_timeout)
        self.path = path
        """The lock's znode; also its ``name`` (the identity the shim and agent use)."""
        self.identifier = identifier if identifier is not None else default_identifier()
        self.on_lost = on_lost
        self.on_uncertain = on_uncertain
        self.lost = False
        """Set when the session that held the lock was lost (ZooKeeper deleted its node)."""
        self.uncertain = False
        """Set while the connection is SUSPENDED during a hold: it may or may not be valid."""
        self._conn = Connection(
            client, validate_ttl(session_timeout, "session_timeout"), connect_timeout
        )
        self._mutex = threading.Lock()  # state shared with kazoo's connection thread
        self._held = False
        self._acquiring = False
        self._lost_count = 0
        self._listening = False
        self._pending: list[Targets] = []  # leftover nodes to sweep
        self._abandoned = 0  # attempts stuck on an unreachable server, finishing in background
        self._operation_timeout = validate_ttl(operation_timeout, "operation_timeout")
        self._recipe: Any = None
        self._assured_path = False
        self._cancel: CancelHandle | None = None

    # -- what subclasses provide -----------------------------------------------------------
    def _new_recipe(self) -> Any:
        raise NotImplementedError

    def _cancel_recipe(self, recipe: Any) -> None:
        recipe.cancel()

    def _node_path(self, recipe: Any) -> str | None:
        """The full path of ``recipe``'s own node (its contender node), if it has one."""
        return None if recipe.node is None else f"{recipe.path}/{recipe.node}"

    def _held_node(self) -> str | None:
        recipe = self._recipe
        return None if recipe is None else self._node_path(recipe)

    def _token_after_acquire(self, recipe: Any) -> int | None:
        """Fencing token of a fresh hold; ``None`` if the hold vanished already."""
        return sequence_of(recipe.node)

    # -- public surface ----------------------------------------------------------------------
    client = Forward[Any]("The :class:`kazoo.client.KazooClient` in use.", via="_conn")

    @property
    def namespace(self) -> str:
        """The ZooKeeper ensemble (sorted ``host:port`` list) and chroot."""
        return self._conn.namespace

    @property
    def node(self) -> str | None:
        """This object's contender node name while it waits or holds, else ``None``."""
        recipe = self._recipe
        return None if recipe is None else getattr(recipe, "node", None)

    @property
    def sequence(self) -> int | None:
        """Sequence number of :attr:`node`: the queue ticket while waiting."""
        return sequence_of(self.node)

    def contenders(self) -> list[str]:
        """Identifiers of the holders and waiters, in queue order (holder first).

        The same answer as kazoo's ``contenders()``, with every call bounded by
        ``operation_timeout``.
        """
        self._conn.ensure_started()
        return self._identifiers(self._contender_nodes())

    def holder_sequence(self) -> int | None:
        """Deprecated: ``holder().fencing_token`` (the first node's sequence number)."""
        warnings.warn(
            "holder_sequence() is deprecated: use holder().fencing_token",
            DeprecationWarning,
            stacklevel=2,
        )
        found = self.holder()
        return None if found is None else found.fencing_token

    def holder(self) -> ZooKeeperHolder | None:
        """The first node in the queue (the holder of an exclusive or write lock; one of
        the holders of a read lock), or ``None`` when nobody holds or waits."""
        self._conn.ensure_started()
        nodes = self._contender_nodes()
        return ZooKeeperHolder(nodes[0], sequence_of(nodes[0])) if nodes else None

    @property
    def owner(self) -> str | None:
        """This object's node name while it holds: unique per hold, like a Redis owner."""
        with self._mutex:
            held = self._held
        return self.node if held else None

    def cancel(self) -> None:
        """Interrupt a pending ``acquire`` from another thread: it returns ``False``."""
        handle = self._cancel
        if handle is not None:
            handle.cancel()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Queue for the lock; return ``True`` once it is ours, ``False`` on timeout.

        ``timeout`` bounds the whole wait. On any outcome other than success the contender
        node is removed before this returns (or, when the server cannot be reached, as soon
        as the session reconnects). Raises :class:`~lockscope.errors.BackendUnavailable`
        when ZooKeeper cannot be reached, and :class:`~lockscope.errors.LockError` if this
        object already holds the lock (the recipes are not reentrant).
        """
        return self._acquire(blocking, validate_timeout(timeout), CancelHandle())

    def _acquire(self, blocking: bool, timeout: float | None, handle: CancelHandle) -> bool:
        with self._mutex:
            if self._held and not self.lost:
                raise LockError(f"{self.path!r} is already held by this object")
            if self._acquiring:
                raise LockError(f"{self.path!r}: another acquire on this object is running")
            self._held = False
            self.lost = False
            self.uncertain = False
            self._acquiring = True
            self._cancel = handle
        try:
            return self._acquire_loop(blocking, timeout, handle)
        finally:
            with self._mutex:
                self._acquiring = False
                self._cancel = None
            self._update_listener()

    def _acquire_loop(self, blocking: bool, timeout: float | None, handle: CancelHandle) -> bool:
        self._conn.ensure_started()
        if not self.client.connected:
            raise BackendUnavailable(f"ZooKeeper at {self.namespace} is not connected")
        if self.pending_cleanups:
            self._sweep_pending()  # an outage may have ended without a state change
        self._update_listener()
        if not blocking:
            deadline: float | None = time.monotonic() + self._operation_timeout
        elif timeout is not None:
            deadline = time.monotonic() + timeout
        else:
            deadline = None
        while True:
            recipe = self._new_recipe()
            self._recipe = recipe
            if not handle.set_hook(functools.partial(self._cancel_recipe, recipe)):
                self._recipe = None
                return False
            with self._mutex:
                lost_before = self._lost_count
            got = False
            try:
                got = self._run_recipe(recipe, blocking, timeout, deadline, handle)
            except (LockTimeout, CancelledError):
                got = False
            except Abandoned:
                # kazoo is stuck on an unreachable server; it cleans up when it returns.
                if self._recipe is recipe:
                    self._recipe = None
                if not self.client.connected:
                    raise BackendUnavailable(
                        f"ZooKeeper at {self.namespace} did not answer in time"
                    ) from None
                return False
            except KazooException as exc:
                self._discard(recipe)
                raise BackendUnavailable(f"ZooKeeper acquire of {self.path}: {exc}") from exc
            except BaseException:
                # KeyboardInterrupt between create and cleanup: do not leave the node.
                self._discard(recipe)
                raise
            self._assured_path = True
            if not got:
                self._discard(recipe)
                if not self.client.connected:
                    raise BackendUnavailable(f"ZooKeeper at {self.namespace} disconnected")
                return False
            token = self._confirm(recipe, lost_before)
            if token is None:
                # The session was lost between kazoo's last check and now: the node is
                # gone, so queue again (the wait never produced a hold).
                self._discard(recipe)
                if handle.requested:
                    return False
                continue
            with self._mutex:
                self._held = True
                self.lost = False
                self.uncertain = self.client.state == KazooState.SUSPENDED
                self.fencing_token = token
            return True

    def _confirm(self, recipe: Any, lost_before: int) -> int | None:
        with self._mutex:
            session_changed = self._lost_count != lost_before
        if not session_changed:
            return self._token_after_acquire(recipe)
        try:
            stat = self._node_stat(self._node_path(recipe))
        except BackendUnavailable:
            return None
        if stat is None or stat.ephemeralOwner != self._conn.session_id():
            return None
        return self._token_after_acquire(recipe)

    def _check_hold(self) -> None:
        with self._mutex:
            held, lost = self._held, self.lost
        if not held:
            raise LockNotOwned(f"{self.path!r} is not held by this object")
        if lost or not self._node_is_ours():
            self._forget()
            raise LockLost(f"{self.path!r} was lost: the ZooKeeper session ended")

    def _node_is_ours(self) -> bool:
        """Ask the server whether the held node exists in this session; mark lost if not."""
        try:
            stat = self._node_stat(self._held_node(), expiry_passes=True)
        except SessionExpiredError:
            stat = None  # seen before kazoo reported LOST: the node went with the session
        if stat is None or stat.ephemeralOwner != self._conn.session_id():
            self._mark_lost()
            return False
        return True

    def _forget(self) -> None:
        with self._mutex:
            self._held = False
        self._recipe = None
        self._update_listener()

    def release(self) -> None:
        """Delete this object's node, letting the next waiter in.

        Raises :class:`~lockscope.errors.LockLost` if the session that held it was lost
        (someone else may hold it now) and :class:`~lockscope.errors.LockNotOwned` if it
        was not held.
        """
        with self._mutex:
            held, lost = self._held, self.lost
        if not held:
            raise LockNotOwned(f"{self.path!r} is not held by this object")
        recipe = self._recipe
        if lost:
            self._forget()
            raise LockLost(f"{self.path!r} was lost before release: the ZooKeeper session ended")
        node = self._held_node()
        session = self._conn.session_id()
        retried: list[bool] = []
        try:
            self._wait(
                functools.partial(self.client.delete_async, node),
                "release",
                expiry_passes=True,
                on_retry=lambda: retried.append(True),
            )
        except NoNodeError:
            if retried and not self.lost and self._conn.session_id() == session:
                # Our first delete went through before the connection dropped.
                self._forget()
                return
            self._mark_lost()
            self._forget()
            raise LockLost(f"{self.path!r} was lost before release: its node was gone") from None
        except SessionExpiredError:
            self._mark_lost()
            self._forget()
            raise LockLost(f"{self.path!r} was lost before release: its node was gone") from None
        except BackendUnavailable:
            # Not confirmed: delete it (now or on reconnect) whatever happened to the call.
            self._discard(recipe)
            self._forget()
            raise
        self._forget()

    def extend(self, seconds: float) -> None:
        """Check that the hold is still valid; ZooKeeper holds have no lease to extend.

        The hold lasts as long as the session, so ``seconds`` is validated and otherwise
        ignored. Raises :class:`~lockscope.errors.LockLost` when the session was lost or
        the node is gone.
        """
        validate_ttl(seconds, "seconds")
        self._check_hold()

    def owned(self) -> bool:
        """Whether this object's node still exists and belongs to the current session.

        A hold found lost sets :attr:`lost` (and calls ``on_lost``); the next ``release``
        or ``extend`` still raises :class:`~lockscope.errors.LockLost`.
        """
        with self._mutex:
            held, lost = self._held, self.lost
        return held and not lost and self._node_is_ours()

    def locked(self) -> bool:
        """Whether any contender node exists (the first one in the queue holds the lock)."""
        self._conn.ensure_started()
        return bool(self._contender_nodes())

    def _try_acquire(self) -> bool:
        return self.acquire(blocking=False)

    def close(self) -> None:
        """Stop the kazoo client if this lock created it (ending its session)."""
        self._forget()
        self._conn.close()
