"""Leader election on ZooKeeper, with callbacks when leadership is gained and lost.

Built on kazoo's lock recipe exactly as kazoo's own ``Election`` is (an election is a lock
whose holder leads), through :class:`~lockscope.locks.zookeeper.ZooKeeperLock`, so it
inherits lost-session detection and orphan-free cancellation. Every candidate creates an
ephemeral sequential node under the election path; the lowest sequence leads, and each
other candidate watches only the node just before its own, so when the leader goes only
its successor wakes up (no herd effect). Candidates of kazoo's ``Election`` on the same
path take part in the same election.

:class:`AsyncLeaderElection` is the asyncio flavour: the same candidate, driven by its
thread, with the callbacks delivered on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

from kazoo.client import KazooClient

from lockscope.errors import BackendUnavailable, LockError
from lockscope.locks._threaded import CancelHandle, Forward, SyncTwin
from lockscope.locks.zookeeper import DEFAULT_BASE_PATH, ZooKeeperLock

__all__ = ["AsyncLeaderElection", "LeaderElection"]

log = logging.getLogger(__name__)

RESIGNED = "resigned"
"""``on_lost`` reason: :meth:`LeaderElection.resign` (or ``close``) was called."""
SESSION_LOST = "session_lost"
"""``on_lost`` reason: the ZooKeeper session ended, so another candidate may lead now."""


class ElectionOptions(TypedDict, total=False):
    """:class:`LeaderElection`'s keyword-only arguments, for the asyncio flavour."""

    base_path: str
    rejoin: bool
    retry_interval: float
    session_timeout: float
    connect_timeout: float


class LeaderElection:
    """One candidate in a leader election at ``path``.

    ``client_or_hosts`` is a started :class:`kazoo.client.KazooClient` or a hosts string
    (the election then owns its client and :meth:`close` stops it). ``identifier`` names
    this candidate in :meth:`contenders` (default ``host:pid``).

    ``on_elected()`` is called when this candidate becomes leader and ``on_lost(reason)``
    when it stops being leader, with ``reason`` :data:`RESIGNED` or :data:`SESSION_LOST`;
    each exactly once per transition, on the election's thread, so a callback may call
    :meth:`resign`. On resignation ``on_lost`` runs (and returns) before the node is
    deleted, so the successor's ``on_elected`` always comes after it. After a lost
    session the candidate queues again on its new session (``rejoin=False`` makes it
    leave instead). An exception raised by a callback is logged and does not end the
    candidacy.
    """

    def __init__(
        self,
        client_or_hosts: KazooClient | str,
        path: str,
        identifier: str | None = None,
        on_elected: Callable[[], object] | None = None,
        on_lost: Callable[[str], object] | None = None,
        *,
        base_path: str = DEFAULT_BASE_PATH,
        rejoin: bool = True,
        retry_interval: float = 1.0,
        session_timeout: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._lock = ZooKeeperLock(
            client_or_hosts,
            path,
            identifier=identifier,
            base_path=base_path,
            on_lost=self._on_session_lost,
            session_timeout=session_timeout,
            connect_timeout=connect_timeout,
        )
        self.path = self._lock.path
        self.identifier = self._lock.identifier
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.rejoin = rejoin
        self.retry_interval = retry_interval
        self.terms = 0
        """How many times this candidate has been elected."""
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._stopping = False
        self._leader = False
        self._running = False
        self._handle: CancelHandle | None = None
        self._thread_id: int | None = None

    # -- state ------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now (as far as it knows: see :attr:`uncertain`)."""
        return self._leader

    @property
    def uncertain(self) -> bool:
        """Leader whose connection is suspended: it may already have lost the lead."""
        return self._leader and self._lock.uncertain

    @property
    def running(self) -> bool:
        """Whether this candidate is in the election (queued or leading)."""
        return self._running

    sequence = Forward[int | None](
        "This candidate's node sequence while it is in the election (lowest leads).", via="_lock"
    )
    node = Forward[str | None](
        "This candidate's node name while it is in the election.", via="_lock"
    )
    client = Forward[Any]("The :class:`kazoo.client.KazooClient` in use.", via="_lock")

    def contenders(self) -> list[str]:
        """Identifiers of all candidates, leader first."""
        return self._lock.contenders()

    def leader(self) -> str | None:
        """The leader's identifier, or ``None`` when there is no candidate."""
        contenders = self.contenders()
        return contenders[0] if contenders else None

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        """Enter the election on a background thread and return at once."""
        self._begin()
        thread = threading.Thread(
            target=self._run, name=f"lockscope-election:{self.path}", daemon=True
        )
        thread.start()

    def run(self) -> None:
        """Enter the election and block until :meth:`resign` (or loss without ``rejoin``)."""
        self._begin()
        self._run()

    def _begin(self) -> None:
        with self._mutex:
            if self._running:
                raise LockError(f"candidate {self.identifier!r} is already running")
            self._running = True
            self._stopping = False
            self._done.clear()

    def resign(self, timeout: float | None = 10.0) -> None:
        """Leave the election: give up the lead (``on_lost("resigned")``) or stop waiting.

        Returns once the node is deleted, so the next candidate can take over, or after
        ``timeout`` seconds; called from a callback it returns at once and the election
        thread finishes the hand-over.
        """
        with self._mutex:
            self._stopping = True
            handle = self._handle
        if handle is not None:
            handle.cancel()
        self._wake.set()
        if threading.get_ident() != self._thread_id:
            self._done.wait(timeout)

    def close(self) -> None:
        """Resign and stop the kazoo client if this election created it."""
        self.resign()
        self._lock.close()

    def _on_session_lost(self, _lock: object) -> None:
        self._wake.set()

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        try:
            while self._contend_once():
                pass
        finally:
            with self._mutex:
                self._running = False
                self._handle = None
            self._thread_id = None
            self._done.set()

    def _contend_once(self) -> bool:
        """Queue, lead, lose; return whether to queue again."""
        with self._mutex:
            if self._stopping:
                return False
            # Created under the mutex that resign() takes, so no cancel is ever missed.
            handle = self._handle = CancelHandle()
        self._wake.clear()
        try:
            elected = self._lock._acquire(True, None, handle)
        except BackendUnavailable as exc:
            log.warning("election %s: %s; queueing again", self.path, exc)
            self._wake.wait(self.retry_interval)
            return True
        if not elected:
            return True  # cancelled: resign() was called, the loop ends
        with self._mutex:
            self._leader = True
            self.terms += 1
        self._call(self.on_elected)
        self._wake.wait()
        with self._mutex:
            self._leader = False
        reason = SESSION_LOST if self._lock.lost else RESIGNED
        if reason == RESIGNED:
            # Tell the leader before its node goes, so two leaders never run at once.
            self._call(self.on_lost, reason)
        try:
            self._lock.release()
        except BackendUnavailable as exc:
            log.warning(
                "election %s: release failed (%s); node removed on reconnect", self.path, exc
            )
        except LockError:
            pass  # lost during the hand-over: the node is gone either way
        if reason == SESSION_LOST:
            self._call(self.on_lost, reason)
        with self._mutex:
            stopping = self._stopping
        return not stopping and reason == SESSION_LOST and self.rejoin

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("election %s: callback %r failed", self.path, callback)

    def __repr__(self) -> str:
        role = "leader" if self._leader else "candidate"
        return f"<LeaderElection {self.path!r} {self.identifier!r} {role}>"


_delivering: contextvars.ContextVar[AsyncLeaderElection | None] = contextvars.ContextVar(
    "lockscope_election_delivering", default=None
)
"""The election whose callback runs in this context (tasks it starts inherit it)."""


class AsyncLeaderElection(SyncTwin[LeaderElection]):
    """The asyncio flavour of :class:`LeaderElection` (same arguments).

    The election runs on its own thread exactly as :class:`LeaderElection` does; the
    callbacks are delivered on the event loop that called :meth:`start`, and may be plain
    functions or coroutine functions (awaited). The election waits for each callback to
    finish before it goes on, so the sync guarantees hold: one call per transition, in
    order, and on resignation ``on_lost`` has returned before the node is deleted. A
    callback may ``await election.resign()`` (it returns at once there and the election
    thread finishes the hand-over), but must not block the loop. ``async with`` starts
    the candidacy and closes it on exit.
    """

    def __init__(
        self,
        client_or_hosts: KazooClient | str,
        path: str,
        identifier: str | None = None,
        on_elected: Callable[[], object] | None = None,
        on_lost: Callable[[str], object] | None = None,
        **options: Unpack[ElectionOptions],
    ) -> None:
        self.on_elected = on_elected
        self.on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sync = LeaderElection(
            client_or_hosts, path, identifier, self._elected, self._lost, **options
        )
        """The :class:`LeaderElection` underneath (its callbacks forward to the loop)."""
        self.path = self.sync.path
        self.identifier = self.sync.identifier

    # -- state (plain attributes of the sync candidate: no I/O) --------------------------------
    is_leader = Forward[bool]("See :attr:`LeaderElection.is_leader`.")
    uncertain = Forward[bool]("See :attr:`LeaderElection.uncertain`.")
    running = Forward[bool]("See :attr:`LeaderElection.running`.")
    terms = Forward[int]("How many times this candidate has been elected.")
    sequence = Forward[int | None]("See :attr:`LeaderElection.sequence`.")
    node = Forward[str | None]("See :attr:`LeaderElection.node`.")
    client = Forward[Any]("The :class:`kazoo.client.KazooClient` in use.")

    async def contenders(self) -> list[str]:
        """See :meth:`LeaderElection.contenders`."""
        return await self._in_thread(self.sync.contenders)

    async def leader(self) -> str | None:
        """See :meth:`LeaderElection.leader`."""
        return await self._in_thread(self.sync.leader)

    # -- running -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Enter the election on a background thread and return at once."""
        self._loop = asyncio.get_running_loop()
        self.sync.start()

    async def resign(self, timeout: float | None = 10.0) -> None:
        """See :meth:`LeaderElection.resign`; from a callback it returns at once."""
        if _delivering.get() is self:
            # The election thread is waiting for this callback: waiting for it would
            # deadlock, so only ask it to stop (as the sync flavour does on its thread).
            self.sync.resign(timeout=0)
            return
        await self._in_thread(self.sync.resign, timeout)

    async def aclose(self) -> None:
        """Resign and stop the kazoo client if this election created it.

        ``await election.close()`` is a deprecated alias."""
        if _delivering.get() is self:
            raise LockError("aclose() cannot run inside the election's callback: resign()")
        await self._in_thread(self.sync.close)

    async def __aenter__(self) -> AsyncLeaderElection:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- callbacks: called on the election thread, run on the loop ----------------------------
    def _elected(self) -> None:
        self._deliver(self.on_elected)

    def _lost(self, reason: str) -> None:
        self._deliver(self.on_lost, reason)

    def _deliver(self, callback: Callable[..., object] | None, *args: object) -> None:
        loop = self._loop
        if callback is None or loop is None:
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(self._run_callback, callback, args, done)
        except RuntimeError:
            log.warning("election %s: event loop closed; %r not called", self.path, callback)
            return
        done.result()

    def _run_callback(
        self,
        callback: Callable[..., object],
        args: tuple[object, ...],
        done: concurrent.futures.Future[None],
    ) -> None:
        token = _delivering.set(self)
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                # Created while _delivering is set, so the task sees it too.
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t: self._finish(callback, t, done))
                return
        except Exception:
            log.exception("election %s: callback %r failed", self.path, callback)
        finally:
            _delivering.reset(token)
        done.set_result(None)

    def _finish(
        self,
        callback: Callable[..., object],
        task: asyncio.Future[Any],
        done: concurrent.futures.Future[None],
    ) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "election %s: callback %r failed",
                self.path,
                callback,
                exc_info=task.exception(),
            )
        done.set_result(None)

    def __repr__(self) -> str:
        role = "leader" if self.is_leader else "candidate"
        return f"<AsyncLeaderElection {self.path!r} {self.identifier!r} {role}>"
