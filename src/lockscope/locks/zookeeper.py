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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    CancelledError,
    ConnectionLoss,
    KazooException,
    LockTimeout,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.recipe.lock import Lock as KazooLock
from kazoo.recipe.lock import ReadLock as KazooReadLock
from kazoo.recipe.lock import Semaphore as KazooSemaphore
from kazoo.recipe.lock import WriteLock as KazooWriteLock

from lockscope.errors import BackendUnavailable, LockError, LockLost, LockNotOwned
from lockscope.events import zookeeper_namespace
from lockscope.locks.base import AsyncLock, Lock, LockMode, validate_timeout, validate_ttl

__all__ = [
    "AsyncZooKeeperLock",
    "AsyncZooKeeperReadLock",
    "AsyncZooKeeperSemaphore",
    "AsyncZooKeeperWriteLock",
    "ZooKeeperHolder",
    "ZooKeeperLock",
    "ZooKeeperReadLock",
    "ZooKeeperSemaphore",
    "ZooKeeperWriteLock",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_PATH = "/lockscope"
"""Relative lock names live under this znode (``"orders"`` -> ``/lockscope/orders``)."""

# Every contender node of kazoo's lock recipes ends in one of these plus 10 digits.
_CONTENDER_RE = re.compile(r"(?:__lock__|__rlock__)(-?\d{10})$")

_SEQUENCE_RE = re.compile(r"(-?\d{10})$")

Callback = Callable[..., object]


def sequence_of(node: str | None) -> int | None:
    """Return the sequence number of a kazoo contender node name (``...__lock__0000000042``)."""
    if not node:
        return None
    match = _SEQUENCE_RE.search(node)
    return int(match.group(1)) if match else None


def _default_identifier() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lock_path(name: str, base_path: str) -> str:
    path = name if name.startswith("/") else f"{base_path.rstrip('/')}/{name}"
    if path != "/":
        path = path.rstrip("/")
    if path == "/" or "//" in path:
        raise ValueError(f"not a usable lock path: {path!r}")
    return path


class _Connection:
    """A kazoo client given by the caller, or one this lock owns (started on first use)."""

    def __init__(
        self,
        client_or_hosts: KazooClient | str,
        session_timeout: float,
        connect_timeout: float,
    ) -> None:
        if isinstance(client_or_hosts, str):
            self.client: Any = KazooClient(hosts=client_or_hosts, timeout=session_timeout)
            self.owned = True
        else:
            self.client = client_or_hosts
            self.owned = False
        self._connect_timeout = connect_timeout
        self._started = not self.owned
        self._start_lock = threading.Lock()

    @property
    def namespace(self) -> str:
        """The ensemble (sorted ``host:port`` list) plus the chroot: where the locks live."""
        return zookeeper_namespace(self.client.hosts, self.client.chroot)

    def ensure_started(self) -> None:
        with self._start_lock:
            if self._started:
                return
            try:
                self.client.start(timeout=self._connect_timeout)
            except (KazooTimeoutError, KazooException) as exc:
                raise BackendUnavailable(
                    f"cannot connect to ZooKeeper at {self.namespace}: {exc}"
                ) from exc
            self._started = True

    def session_id(self) -> int | None:
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    def close(self) -> None:
        if self.owned and self._started:
            self._started = False
            try:
                self.client.stop()
            finally:
                self.client.close()


_CANCEL_GRACE = 1.0
"""Seconds a cancelled kazoo acquire gets to delete its node before it is abandoned."""


class _Abandoned(Exception):
    """The recipe did not return in time; it finishes and cleans up in the background."""


class _CancelHandle:
    """Lets another thread (a timer, an asyncio task) interrupt one acquire attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requested = False
        self._hook: Callable[[], None] | None = None

    def cancel(self) -> None:
        with self._lock:
            self.requested = True
            hook = self._hook
        if hook is not None:
            hook()

    def set_hook(self, hook: Callable[[], None] | None) -> bool:
        """Install the hook; ``False`` if cancellation was already requested."""
        with self._lock:
            if self.requested and hook is not None:
                return False
            self._hook = hook
            return True


@dataclasses.dataclass(frozen=True)
class ZooKeeperHolder:
    """Who is first in a lock's queue, as :meth:`ZooKeeperLock.holder` reports it."""

    owner: str
    """The node name (what :attr:`ZooKeeperLock.owner` is for that holder)."""
    fencing_token: int | None
    """The node's sequence number."""
    ttl: None = None
    """ZooKeeper holds have no lease."""


class _ZooKeeperPrimitive(Lock):
    """What the four sync ZooKeeper locks share; subclasses name the kazoo recipe."""

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
        path = _lock_path(name, base_path)
        super().__init__(path, ttl=None, blocking_timeout=blocking_timeout)
        self.path = path
        """The lock's znode; also its ``name`` (the identity the shim and agent use)."""
        self.identifier = identifier if identifier is not None else _default_identifier()
        self.on_lost = on_lost
        self.on_uncertain = on_uncertain
        self.lost = False
        """Set when the session that held the lock was lost (ZooKeeper deleted its node)."""
        self.uncertain = False
        """Set while the connection is SUSPENDED during a hold: it may or may not be valid."""
        self._conn = _Connection(
            client, validate_ttl(session_timeout, "session_timeout"), connect_timeout
        )
        self._mutex = threading.Lock()  # state shared with kazoo's connection thread
        self._held = False
        self._acquiring = False
        self._lost_count = 0
        self._listening = False
        self._pending: list[list[tuple[str, str]]] = []  # leftover nodes to sweep
        self._abandoned = 0  # attempts stuck on an unreachable server, finishing in background
        self._operation_timeout = validate_ttl(operation_timeout, "operation_timeout")
        self._recipe: Any = None
        self._assured_path = False
        self._cancel: _CancelHandle | None = None

    # -- what subclasses provide -----------------------------------------------------------
    def _new_recipe(self) -> Any:
        raise NotImplementedError

    def _recipe_acquire(self, recipe: Any, blocking: bool, timeout: float | None) -> bool:
        return bool(recipe.acquire(blocking=blocking, timeout=timeout))

    def _cancel_recipe(self, recipe: Any) -> None:
        recipe.cancel()

    def _attempt_nodes(self, recipe: Any) -> list[tuple[str, str]]:
        """(parent, name prefix) of every node this attempt may have created."""
        return [(recipe.path, recipe.prefix)]

    def _held_node(self) -> str | None:
        node = None if self._recipe is None else self._recipe.node
        return None if node is None else f"{self.path}/{node}"

    def _token_after_acquire(self, recipe: Any) -> int | None:
        """Fencing token of a fresh hold; ``None`` if the hold vanished already."""
        return sequence_of(recipe.node)

    # -- public surface ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The :class:`kazoo.client.KazooClient` in use."""
        return self._conn.client

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
        return self._identifiers(self.path, self._contender_nodes())

    def _identifiers(self, parent: str, nodes: list[str]) -> list[str]:
        # Ask for all nodes' data at once: one round trip of latency, not one per node.
        requests = [functools.partial(self.client.get_async, f"{parent}/{n}") for n in nodes]
        pending = [(request, request()) for request in requests]
        found = []
        for request, sent in pending:
            try:
                data, _stat = self._wait(request, "contenders", sent=sent)
            except NoNodeError:
                continue  # left while we looked
            found.append((data or b"").decode("utf-8", errors="replace"))
        return found

    def _wait(
        self,
        request: Callable[[], Any],
        what: str,
        *,
        expiry_passes: bool = False,
        sent: Any = None,
        on_retry: Callable[[], None] | None = None,
    ) -> Any:
        """Run a kazoo async call, retried after a connection loss, for at most
        ``operation_timeout`` seconds in all.

        kazoo's sync calls wait for an unreachable server indefinitely; lockscope's calls
        raise :class:`~lockscope.errors.BackendUnavailable` instead. ``NoNodeError``
        (and with ``expiry_passes``, ``SessionExpiredError``: the session's nodes are
        gone) pass through for the caller to interpret. ``sent`` is the result of a call
        of ``request`` already made; ``on_retry`` runs before each retry.
        """
        deadline = time.monotonic() + self._operation_timeout
        result = request() if sent is None else sent
        while True:
            try:
                return result.get(timeout=max(0.0, deadline - time.monotonic()))
            except NoNodeError:
                raise
            except SessionExpiredError:
                if expiry_passes:
                    raise
                raise BackendUnavailable(
                    f"ZooKeeper {what} of {self.path}: session expired"
                ) from None
            except ConnectionLoss as exc:
                # The reply was lost with the connection; kazoo reconnects and queues a
                # new request until then. Callers only retry what is safe to repeat.
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(f"ZooKeeper {what} of {self.path}: {exc!r}") from exc
                if on_retry is not None:
                    on_retry()
                result = request()
            except (KazooException, KazooTimeoutError) as exc:
                raise BackendUnavailable(f"ZooKeeper {what} of {self.path}: {exc!r}") from exc

    def _contender_nodes(self) -> list[str]:
        try:
            children = self._wait(
                functools.partial(self.client.get_children_async, self.path), "listing"
            )
        except NoNodeError:
            return []
        nodes = [child for child in children if _CONTENDER_RE.search(child)]
        return sorted(nodes, key=lambda child: sequence_of(child) or 0)

    def holder_sequence(self) -> int | None:
        """Sequence number of the first node in the queue (the holder, for exclusive locks)."""
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
        return self._acquire(blocking, validate_timeout(timeout), _CancelHandle())

    def _acquire(self, blocking: bool, timeout: float | None, handle: _CancelHandle) -> bool:
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

    def _acquire_loop(self, blocking: bool, timeout: float | None, handle: _CancelHandle) -> bool:
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
            except _Abandoned:
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

    def _run_recipe(
        self,
        recipe: Any,
        blocking: bool,
        timeout: float | None,
        deadline: float | None,
        handle: _CancelHandle,
    ) -> bool:
        """Run kazoo's acquire, returning by ``deadline`` (plus a grace) whatever the server.

        kazoo restarts its timeout whenever the predecessor changes, and its calls wait
        for an unreachable server indefinitely (its cleanup too). With a deadline the
        recipe runs on a thread of its own: at the deadline it is cancelled, and if it is
        stuck it is abandoned to finish (and clean up) in the background.
        """
        if deadline is None:
            try:
                return self._recipe_acquire(recipe, blocking, timeout)
            finally:
                handle.set_hook(None)
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(self._recipe_acquire(recipe, blocking, timeout))
            except BaseException as exc:
                future.set_exception(exc)

        _start_in_context(run)
        try:
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                handle.cancel()
            try:
                return future.result(timeout=_CANCEL_GRACE)
            except concurrent.futures.TimeoutError:
                pass
        except BaseException:
            if future.done():
                raise
            handle.cancel()
            self._abandon(recipe, future)
            raise
        self._abandon(recipe, future)
        raise _Abandoned

    def _abandon(self, recipe: Any, future: concurrent.futures.Future[bool]) -> None:
        with self._mutex:
            self._abandoned += 1

        def finish(done: concurrent.futures.Future[bool]) -> None:
            try:
                if done.exception() is None and done.result():
                    with contextlib.suppress(KazooException):
                        recipe.release()
            finally:
                self._discard(recipe)
                with self._mutex:
                    self._abandoned -= 1
                self._update_listener()

        future.add_done_callback(finish)

    def _confirm(self, recipe: Any, lost_before: int) -> int | None:
        with self._mutex:
            session_changed = self._lost_count != lost_before
        if not session_changed:
            return self._token_after_acquire(recipe)
        node = self._node_of(recipe)
        try:
            stat = (
                None
                if node is None
                else self._wait(functools.partial(self.client.exists_async, node), "check")
            )
        except BackendUnavailable:
            return None
        if stat is None or stat.ephemeralOwner != self._conn.session_id():
            return None
        return self._token_after_acquire(recipe)

    def _node_of(self, recipe: Any) -> str | None:
        return None if recipe.node is None else f"{recipe.path}/{recipe.node}"

    def _discard(self, recipe: Any) -> None:
        """Make sure no node of this attempt outlives it (now, or at the next reconnect)."""
        if self._recipe is recipe:
            self._recipe = None
        targets = self._attempt_nodes(recipe)
        if not self._sweep(targets):
            with self._mutex:
                self._pending.append(targets)
            self._update_listener()

    def _sweep(self, targets: list[tuple[str, str]]) -> bool:
        if not self.client.connected:
            return False
        # Async calls with a timeout: kazoo's sync calls wait for a lost server forever.
        wait = self._operation_timeout
        try:
            for parent, prefix in targets:
                try:
                    names = self.client.get_children_async(parent).get(timeout=wait)
                except NoNodeError:
                    continue
                for child in names:
                    if child.startswith(prefix):
                        with contextlib.suppress(NoNodeError):
                            self.client.delete_async(f"{parent}/{child}").get(timeout=wait)
        except SessionExpiredError:
            return True  # ephemeral nodes ended with the session
        except (KazooException, KazooTimeoutError):
            log.warning("ZooKeeper unreachable: %s leftovers removed on reconnect", self.path)
            return False
        return True

    def _sweep_pending(self) -> None:
        with self._mutex:
            pending, self._pending = self._pending, []
        for targets in pending:
            if not self._sweep(targets):
                with self._mutex:
                    self._pending.append(targets)
        self._update_listener()

    @property
    def pending_cleanups(self) -> int:
        """Failed attempts whose nodes still wait to be removed (the server was unreachable)."""
        with self._mutex:
            return len(self._pending) + self._abandoned

    # -- connection states -----------------------------------------------------------------
    def _update_listener(self) -> None:
        with self._mutex:
            want = self._held or self._acquiring or bool(self._pending) or self._abandoned > 0
            change = want != self._listening
            self._listening = want
        if change:
            if want:
                self.client.add_listener(self._on_state)
            else:
                self.client.remove_listener(self._on_state)

    def _on_state(self, state: str) -> bool:
        # Runs on kazoo's connection thread: never block here, never call ZooKeeper.
        fire: tuple[Callback, tuple[object, ...]] | None = None
        sweep = False
        with self._mutex:
            if state == KazooState.LOST:
                self._lost_count += 1
                if self._held and not self.lost:
                    self.lost = True
                    self.uncertain = False
                    if self.on_lost is not None:
                        fire = (self.on_lost, (self,))
            elif state == KazooState.SUSPENDED:
                if self._held and not self.lost and not self.uncertain:
                    self.uncertain = True
                    if self.on_uncertain is not None:
                        fire = (self.on_uncertain, (self, True))
            elif state == KazooState.CONNECTED:
                if self.uncertain:
                    self.uncertain = False
                    if self.on_uncertain is not None:
                        fire = (self.on_uncertain, (self, False))
                sweep = bool(self._pending)
        if fire is not None:
            self.client.handler.spawn(_call_safely, fire[0], *fire[1])
        if sweep:
            self.client.handler.spawn(self._sweep_pending)
        return False

    def _mark_lost(self) -> None:
        with self._mutex:
            first = self._held and not self.lost
            self.lost = True
            self.uncertain = False
        if first and self.on_lost is not None:
            _call_safely(self.on_lost, self)

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
        node = self._held_node()
        try:
            stat = (
                None
                if node is None
                else self._wait(
                    functools.partial(self.client.exists_async, node), "check", expiry_passes=True
                )
            )
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


def _start_in_context(run: Callable[[], None]) -> None:
    # The caller's contextvars go along (as asyncio.to_thread does), so instrumentation
    # that marks "inside a lockscope lock call" sees kazoo's calls as nested, not as a
    # second lock taken by another thread.
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(run,), name="lockscope-zookeeper-acquire", daemon=True
    )
    thread.start()


def _call_safely(callback: Callback, *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("lockscope ZooKeeper callback %r failed", callback)


class ZooKeeperLock(_ZooKeeperPrimitive):
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


class ZooKeeperSemaphore(_ZooKeeperPrimitive):
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

    def _node_of(self, recipe: Any) -> str | None:
        return str(recipe.create_path)

    def _held_node(self) -> str | None:
        return None if self._recipe is None else str(self._recipe.create_path)

    def _token_after_acquire(self, recipe: Any) -> int | None:
        try:
            stat = self._wait(
                functools.partial(self.client.exists_async, recipe.create_path), "check"
            )
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
        try:
            leases = self._wait(
                functools.partial(self.client.get_children_async, self.path), "listing"
            )
        except NoNodeError:
            return []
        return self._identifiers(self.path, list(leases))

    def holder_sequence(self) -> int | None:
        """Semaphores have many holders and no holder sequence: always ``None``."""
        return None

    def holder(self) -> ZooKeeperHolder | None:
        """Semaphores have many holders: always ``None`` (see :meth:`contenders`)."""
        return None

    def locked(self) -> bool:
        """Whether every lease is taken (an acquire would have to wait), as in asyncio."""
        return len(self.contenders()) >= self.max_leases


# -- asyncio ------------------------------------------------------------------------------
_S = TypeVar("_S", bound=_ZooKeeperPrimitive)


def _in_thread(fn: Callable[[], bool]) -> asyncio.Future[bool]:
    # A thread of its own, not the default executor: five tasks waiting for one lock
    # would otherwise fill the executor and starve the holder's release.
    future: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    _start_in_context(run)
    return asyncio.wrap_future(future)


class _AsyncZooKeeperPrimitive(AsyncLock, Generic[_S]):
    """Runs the sync twin's blocking kazoo calls off the event loop."""

    system: ClassVar[str] = "zookeeper"
    fifo: ClassVar[bool] = True
    max_leases: int | None = None
    """Semaphores only: how many holders at once."""
    _sync_class: ClassVar[type[_ZooKeeperPrimitive]]

    def __init__(
        self,
        client: KazooClient | str,
        name: str,
        *,
        blocking_timeout: float | None = None,
        on_lost: Callback | None = None,
        on_uncertain: Callback | None = None,
        **kw: Any,
    ) -> None:
        self.on_lost = on_lost
        self.on_uncertain = on_uncertain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback_tasks: set[asyncio.Future[Any]] = set()
        sync: Any = self._sync_class(
            client,
            name,
            on_lost=self._relay_lost,
            on_uncertain=self._relay_uncertain,
            **kw,
        )
        self.sync: _S = sync
        """The sync twin doing the work (its accessors are cheap and thread-safe)."""
        super().__init__(sync.path, ttl=None, blocking_timeout=blocking_timeout)
        self.path: str = sync.path
        self.mode = sync.mode
        self.max_leases = sync.max_leases

    # Callbacks arrive on a kazoo thread; run them on the loop that acquired the lock.
    def _relay(self, callback: Callback | None, *args: object) -> None:
        if callback is None:
            return
        loop = self._loop

        def call() -> None:
            result = callback(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callback_tasks.add(task)
                task.add_done_callback(self._callback_tasks.discard)

        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(call)
        else:
            call()

    def _relay_lost(self, _sync: object) -> None:
        self._relay(self.on_lost, self)

    def _relay_uncertain(self, _sync: object, uncertain: bool) -> None:
        self._relay(self.on_uncertain, self, uncertain)

    @property
    def namespace(self) -> str:
        return self.sync.namespace

    @property
    def client(self) -> Any:
        """The :class:`kazoo.client.KazooClient` in use."""
        return self.sync.client

    @property
    def lost(self) -> bool:
        """See :attr:`ZooKeeperLock.lost`."""
        return self.sync.lost

    @property
    def uncertain(self) -> bool:
        """See :attr:`ZooKeeperLock.uncertain`."""
        return self.sync.uncertain

    @property
    def node(self) -> str | None:
        """See :attr:`ZooKeeperLock.node`."""
        return self.sync.node

    @property
    def sequence(self) -> int | None:
        """See :attr:`ZooKeeperLock.sequence`."""
        return self.sync.sequence

    @property
    def pending_cleanups(self) -> int:
        """See :attr:`ZooKeeperLock.pending_cleanups`."""
        return self.sync.pending_cleanups

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; see :meth:`ZooKeeperLock.acquire`.

        Cancelling the awaiting task cancels the wait and removes the contender node
        before the ``CancelledError`` propagates (and gives the lock back if it was
        granted at that instant). If the server does not answer within a second, the
        cancellation propagates anyway and the node is removed when it answers.
        """
        timeout = validate_timeout(timeout)
        self._loop = asyncio.get_running_loop()
        handle = _CancelHandle()
        future = _in_thread(lambda: self.sync._acquire(blocking, timeout, handle))
        try:
            got = await asyncio.shield(future)
        except asyncio.CancelledError:
            handle.cancel()
            try:
                got = await asyncio.wait_for(asyncio.shield(future), _CANCEL_GRACE)
            except (asyncio.CancelledError, TimeoutError):
                # Cancelled again, or the server is unreachable: the acquire thread
                # removes the node when kazoo returns; give back a lock granted meanwhile.
                future.add_done_callback(self._release_if_granted)
                raise asyncio.CancelledError() from None
            except Exception:
                raise asyncio.CancelledError() from None
            if got:
                with contextlib.suppress(LockError):
                    await asyncio.to_thread(self.sync.release)
            raise
        self.fencing_token = self.sync.fencing_token
        return got

    def _release_if_granted(self, future: asyncio.Future[bool]) -> None:
        if not future.cancelled() and future.exception() is None and future.result():
            threading.Thread(target=self.sync.release, daemon=True).start()

    async def _try_acquire(self) -> bool:
        return await self.acquire(blocking=False)

    async def release(self) -> None:
        """See :meth:`ZooKeeperLock.release`."""
        await asyncio.to_thread(self.sync.release)

    async def extend(self, seconds: float) -> None:
        """See :meth:`ZooKeeperLock.extend`."""
        await asyncio.to_thread(self.sync.extend, seconds)

    async def locked(self) -> bool:
        """See :meth:`ZooKeeperLock.locked`."""
        return await asyncio.to_thread(self.sync.locked)

    async def owned(self) -> bool:
        """See :meth:`ZooKeeperLock.owned`."""
        return await asyncio.to_thread(self.sync.owned)

    async def contenders(self) -> list[str]:
        """See :meth:`ZooKeeperLock.contenders`."""
        return await asyncio.to_thread(self.sync.contenders)

    async def holder_sequence(self) -> int | None:
        """See :meth:`ZooKeeperLock.holder_sequence`."""
        return await asyncio.to_thread(self.sync.holder_sequence)

    async def holder(self) -> ZooKeeperHolder | None:
        """See :meth:`ZooKeeperLock.holder`."""
        return await asyncio.to_thread(self.sync.holder)

    @property
    def owner(self) -> str | None:
        """See :attr:`ZooKeeperLock.owner`."""
        return self.sync.owner

    async def close(self) -> None:
        """See :meth:`ZooKeeperLock.close`."""
        await asyncio.to_thread(self.sync.close)


class AsyncZooKeeperLock(_AsyncZooKeeperPrimitive[ZooKeeperLock]):
    """The asyncio flavour of :class:`ZooKeeperLock` (same arguments)."""

    mode: LockMode = "exclusive"
    _sync_class = ZooKeeperLock


class AsyncZooKeeperReadLock(_AsyncZooKeeperPrimitive[ZooKeeperReadLock]):
    """The asyncio flavour of :class:`ZooKeeperReadLock`."""

    mode: LockMode = "read"
    _sync_class = ZooKeeperReadLock


class AsyncZooKeeperWriteLock(_AsyncZooKeeperPrimitive[ZooKeeperWriteLock]):
    """The asyncio flavour of :class:`ZooKeeperWriteLock`."""

    mode: LockMode = "write"
    _sync_class = ZooKeeperWriteLock


class AsyncZooKeeperSemaphore(_AsyncZooKeeperPrimitive[ZooKeeperSemaphore]):
    """The asyncio flavour of :class:`ZooKeeperSemaphore` (``max_leases`` is required)."""

    mode: LockMode = "semaphore"
    _sync_class = ZooKeeperSemaphore
