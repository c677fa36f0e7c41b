"""What the thread-backed locks share: threads that carry the caller's context, a cancel
handle another thread can trigger, and the asyncio twins' one cancel-safe acquire.

The ZooKeeper locks, the database lock and leader election do blocking I/O; their asyncio
flavours run the sync twin's calls on a thread and wait for them on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lockscope._forward import Forward
from lockscope.errors import LockError

__all__ = [
    "CancelHandle",
    "Forward",
    "SyncTwin",
    "acquire_cancel_safe",
    "in_thread",
    "start_in_context",
]

_T = TypeVar("_T")
_S = TypeVar("_S")

GIVE_BACK_GRACE = 1.0
"""Seconds a cancelled task waits for its in-flight attempt before giving back later."""


def start_in_context(run: Callable[[], None], name: str) -> None:
    """Run ``run`` on a new daemon thread, in a copy of the caller's context.

    The caller's contextvars go along (as ``asyncio.to_thread`` does), so instrumentation
    that marks "inside a lockscope lock call" sees the backend's calls as nested, not as
    a second lock taken by another thread.
    """
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name=name, daemon=True).start()


def in_thread(fn: Callable[[], _T], name: str) -> asyncio.Future[_T]:
    """Run ``fn`` on a thread of its own and return an asyncio future of its result.

    A thread of its own, not the default executor: five tasks waiting for one lock would
    otherwise fill the executor and starve the holder's release.
    """
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    start_in_context(run, name)
    return asyncio.wrap_future(future)


class CancelHandle:
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


def _quietly(give_back: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        # Expired, lost or unreachable: the lease or session then ends by itself.
        with contextlib.suppress(LockError):
            give_back()

    return run


def _give_back_if_granted(
    future: asyncio.Future[bool], give_back: Callable[[], None], name: str
) -> None:
    if not future.cancelled() and future.exception() is None and future.result():
        start_in_context(_quietly(give_back), name)


async def acquire_cancel_safe(
    attempt: asyncio.Future[bool],
    give_back: Callable[[], None],
    *,
    interrupt: Callable[[], None] | None = None,
    grace: float = GIVE_BACK_GRACE,
    name: str = "lockscope-give-back",
) -> bool:
    """Await a blocking acquire ``attempt`` running on a thread; cancellation-safe.

    If the awaiting task is cancelled, the attempt is interrupted (``interrupt``), given
    up to ``grace`` seconds to end, and a lock it turns out to have taken is given back
    (``give_back``, the sync twin's release; ``LockError`` from it is ignored): awaited
    before the ``CancelledError`` propagates when the attempt ended within the grace,
    otherwise on a thread of its own (in the task's context) as soon as it ends. The
    ``CancelledError`` always propagates.
    """
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        if interrupt is not None:
            interrupt()
        if grace > 0:
            try:
                got = await asyncio.wait_for(asyncio.shield(attempt), grace)
            except (asyncio.CancelledError, TimeoutError):
                pass  # cancelled again, or the server is unreachable: give back later
            except Exception:
                raise asyncio.CancelledError() from None  # the attempt failed: nothing held
            else:
                if got:
                    await in_thread(_quietly(give_back), name)
                raise
        attempt.add_done_callback(
            functools.partial(_give_back_if_granted, give_back=give_back, name=name)
        )
        raise


class SyncTwin(Generic[_S]):
    """Base of the asyncio flavours whose sync twin does the blocking work on threads
    (the ZooKeeper locks, the database lock, leader election).

    The one shape of these twins: the sync object is the public attribute ``sync``; each
    blocking call runs on a worker thread (:meth:`_in_thread`); an acquire is awaited
    through :func:`acquire_cancel_safe`; ``aclose()`` closes (``close()`` is its
    deprecated old name).
    """

    sync: _S
    """The sync twin doing the work (its plain accessors are cheap and thread-safe)."""

    @property
    def _sync(self) -> _S:
        # The name AsyncDatabaseLock used for ``sync`` before the twins were aligned.
        return self.sync

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(fn, *args)

    async def aclose(self) -> None:
        """Close the sync twin (for backends that own a client: stop it)."""
        close = getattr(self.sync, "close", None)
        if close is not None:
            await self._in_thread(close)

    async def close(self) -> None:
        """Deprecated alias of :meth:`aclose` (the asyncio spelling, as in redis-py)."""
        warnings.warn(
            f"{type(self).__name__}.close() is deprecated: use aclose()",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.aclose()
