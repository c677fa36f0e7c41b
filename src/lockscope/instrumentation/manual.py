"""Report any lock to lockscope: the public API for locks the shim has no target for.

The built-in targets (redis-py, kazoo, file locks, pools...) are written with the same
pieces, so a lock reported here has the same semantics and the same cost: an acquire
updates the in-process registry (a few microseconds); only waits and holds that last
``LOCKSCOPE_REPORT_AFTER`` are sent to the agent.  Nothing here raises into your code or
changes what your lock does; with the shim off (not instrumented, ``LOCKSCOPE_DISABLED``,
``suppress_instrumentation()``) every call is a pass-through.

Wrap a lock object that has ``acquire``/``release`` (sync or async)::

    from lockscope.instrumentation.manual import LockSpec, TrackedLock

    printer = TrackedLock(cups_lock, LockSpec("printer-3", system="cups", namespace="print-1:631"))
    with printer:                      # or printer.acquire(timeout=5) / printer.release()
        ...

or report the calls of a lock with another shape yourself::

    spec = LockSpec("orders", system="etcd", namespace="etcd-1:2379", ttl=30)
    with spec.acquiring() as attempt:  # the time spent in the block is the wait
        ok = client.lock("orders", ttl=30).acquire(timeout=5)
        attempt.result(ok)             # False: timed out (no hold); an exception: error
    ...
    spec.released()                    # the current thread's (or task's) hold ends

Identity: ``system`` + ``namespace`` + ``name`` is the lock, fleet-wide: two processes
that name a lock alike (and lockscope's own targets: system ``redis``, namespace
``host:port/db``, name = the key) meet on it in the agent.  ``mode`` is ``exclusive``,
``read``, ``write`` or ``semaphore`` (with ``max_leases``); ``reentrant`` says the holder may
take it again without waiting; ``process_bound`` that the lock is released by the
operating system when the holder's process dies (no orphaned-holder finding then);
``shared`` that any thread may release a hold (not only the one that took it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, TypeVar

from lockscope.instrumentation import operations
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.recorder import Hold, LockInfo

__all__ = ["AsyncTrackedLock", "Attempt", "LockSpec", "TrackedLock", "make_info"]

L = TypeVar("L")
_MODES = ("exclusive", "read", "write", "semaphore")


make_info = LockInfo
"""A LockInfo: ``make_info(system, namespace, name, *, template=None, mode="exclusive",
fifo=False, reentrant=False, max_leases=None, ttl=None, process_bound=False,
adapter=None)`` (the name targets that build their own LockInfo have used)."""


class _SpecAdapter(Adapter):
    by_key = False

    def __init__(self, spec: LockSpec) -> None:
        self.spec = spec

    def shared(self, instance: Any) -> bool:
        return self.spec.shared

    def info(self, instance: Any) -> LockInfo | None:
        return self.spec.info

    def is_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, _Lost)


class _Fields(Adapter):
    """The spec's adapter, plus one acquire's token/owner."""

    def __init__(self, base: Adapter, token: int | None, owner: str | None) -> None:
        self.base, self.token, self.owner = base, token, owner

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        return self.token, self.owner, None


class LockSpec:
    """One lock as lockscope should see it (see the module docstring for the fields)."""

    def __init__(
        self,
        name: str,
        *,
        system: str = "app",
        namespace: str = "",
        mode: str = "exclusive",
        reentrant: bool = False,
        max_leases: int | None = None,
        ttl: float | None = None,
        fifo: bool = False,
        process_bound: bool = False,
        shared: bool = False,
        template: str | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        if mode == "semaphore" and (max_leases is None or max_leases < 1):
            raise ValueError("a semaphore needs max_leases >= 1")
        self.shared = shared
        self.adapter = _SpecAdapter(self)
        self.info = make_info(
            system,
            namespace,
            name,
            template=template,
            mode=mode,
            fifo=fifo,
            reentrant=reentrant,
            max_leases=max_leases,
            ttl=ttl,
            process_bound=process_bound,
            adapter=self.adapter,
        )

    @property
    def key(self) -> str:
        """``system:namespace/name``: the lock's identity in the agent."""
        return self.info.key

    @contextlib.contextmanager
    def acquiring(self, target: object | None = None) -> Iterator[Attempt]:
        """Record the block as a wait for this lock by the current thread or task; a normal
        exit means acquired (unless :meth:`Attempt.result` said otherwise), an exception an
        error (``asyncio.CancelledError``: cancelled).  ``target``: the object whose hold
        this is (default: the spec), passed again to :meth:`released`."""
        attempt = Attempt(self, target, _task())
        try:
            yield attempt
        except BaseException as exc:
            attempt.finish(operations.exc_outcome(self.adapter, exc), exc)
            raise
        attempt.finish(attempt.outcome, None)

    @contextlib.asynccontextmanager
    async def acquiring_async(self, target: object | None = None) -> AsyncIterator[Attempt]:
        """:meth:`acquiring` for ``async with`` (the same, usable where a sync context manager
        cannot be)."""
        with self.acquiring(target) as attempt:
            yield attempt

    def released(self, target: object | None = None, *, lost: bool = False) -> None:
        """The current actor's hold of this lock (by ``target``) ends: released, or
        ``lost`` (taken away: a lease ran out, a session ended)."""
        try:
            if not operations.fast_enabled():
                return
            hold = operations.find_hold(self.adapter, self if target is None else target,
                                        self.info, _task())  # fmt: skip
            if hold is not None:
                exc = _Lost() if lost else None
                _release(self.adapter, hold, exc)
        except Exception:
            operations.failed()


class _Lost(Exception):
    """Stands for "taken away" in :meth:`LockSpec.released` (never raised)."""


def _release(adapter: Adapter, hold: Hold, exc: BaseException | None) -> None:
    operations.released(adapter, hold.target, hold, exc)


def _task() -> Any:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class Attempt:
    """One acquire in progress (see :meth:`LockSpec.acquiring`)."""

    __slots__ = ("_op", "outcome", "owner", "token")

    def __init__(self, spec: LockSpec, target: object | None, task: Any) -> None:
        self.outcome = "acquired"
        self.token: int | None = None
        self.owner: str | None = None
        self._op: Any = None
        try:
            if operations.fast_enabled():
                self._op = operations.start(spec.adapter, spec if target is None else target,
                                            spec.info, task)  # fmt: skip
        except Exception:
            operations.failed()

    def result(self, value: object, *, blocking: bool = True) -> None:
        """The lock call returned ``value``: truthy is acquired, falsy a timeout (``busy``
        when ``blocking`` is false)."""
        self.outcome = "acquired" if value else ("timeout" if blocking else "busy")

    def acquired(self, *, token: int | None = None, owner: str | None = None) -> None:
        """Acquired, with the hold's fencing ``token`` and ``owner`` id where there are."""
        self.outcome, self.token, self.owner = "acquired", token, owner

    def finish(self, outcome: str, exc: BaseException | None) -> None:
        op = self._op
        if op is None:
            return
        self._op = None
        try:
            if self.token is not None or self.owner is not None:
                op.adapter = _Fields(op.adapter, self.token, self.owner)
            op.done(outcome, exc)
        except Exception:
            operations.failed()


class TrackedLock(Generic[L]):
    """``lock`` (anything with ``acquire``/``release``) reported to lockscope as ``spec``.

    ``acquire(*args, **kwargs)`` and ``release(*args, **kwargs)`` call the lock's own with
    the same arguments and return what it returns; a falsy acquire result is a timeout.
    ``with tracked:`` acquires and releases.  Other attributes are the lock's."""

    def __init__(self, lock: L, spec: LockSpec) -> None:
        self.lock = lock
        self.spec = spec

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        with self.spec.acquiring(self.lock) as attempt:
            result = self.lock.acquire(*args, **kwargs)  # type: ignore[attr-defined]
            attempt.result(result, blocking=_blocking(args, kwargs))
        return result

    def release(self, *args: Any, **kwargs: Any) -> Any:
        result = self.lock.release(*args, **kwargs)  # type: ignore[attr-defined]
        self.spec.released(self.lock)
        return result

    def __enter__(self) -> TrackedLock[L]:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lock, name)


class AsyncTrackedLock(Generic[L]):
    """:class:`TrackedLock` for locks whose ``acquire`` (and maybe ``release``) are
    coroutines; ``async with tracked:`` acquires and releases."""

    def __init__(self, lock: L, spec: LockSpec) -> None:
        self.lock = lock
        self.spec = spec

    async def acquire(self, *args: Any, **kwargs: Any) -> Any:
        with self.spec.acquiring(self.lock) as attempt:
            result = await self.lock.acquire(*args, **kwargs)  # type: ignore[attr-defined]
            attempt.result(result, blocking=_blocking(args, kwargs))
        return result

    async def release(self, *args: Any, **kwargs: Any) -> Any:
        result = self.lock.release(*args, **kwargs)  # type: ignore[attr-defined]
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        self.spec.released(self.lock)
        return result

    async def __aenter__(self) -> AsyncTrackedLock[L]:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lock, name)


def _blocking(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    value = kwargs.get("blocking", args[0] if args and isinstance(args[0], bool) else True)
    return bool(value)
