"""Target: lockscope's own locks (:mod:`lockscope.locks` and :mod:`lockscope.locks.aio`).

Every class in the lazy export maps that implements the common surface
(:class:`~lockscope.locks.base.Lock` / :class:`~lockscope.locks.base.AsyncLock`) gets
``acquire``, ``release`` and ``extend`` wrapped, through the surface alone: identity from
``system``, ``namespace``, ``name``; ``mode``, ``ttl``, ``fifo`` and ``max_leases`` where
present; ``fencing_token`` and ``owner`` after an acquire; ``holder()`` (when it is a plain
method) for a long wait's holder.  ``LockNotOwned`` (and ``LockLost``) on release or extend
means the lock was lost.

Locks that wrap another lock (``AutoRenewingLock``, ``RobustLock``) are recorded once, as
the outer lock: calls they make on the inner lock pass through, and the renewal thread's
``extend`` of the inner lock updates the outer hold (same identity).
"""

from __future__ import annotations

import inspect
from typing import Any

from lockscope.instrumentation import operations, plain
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import LockInfo, Wait
from lockscope.naming import DEFAULT_TEMPLATER

__all__ = ["instrument"]


class LockscopeAdapter(Adapter):
    """Any lock with lockscope's common surface."""

    def __init__(self, sync: bool) -> None:
        from lockscope.errors import LockNotOwned

        self.lost_error = LockNotOwned
        self.sync = sync

    def info(self, instance: Any) -> LockInfo | None:
        name = str(instance.name)
        max_leases = getattr(instance, "max_leases", None)
        ttl = getattr(instance, "ttl", None)
        return LockInfo(
            str(instance.system),
            str(instance.namespace),
            name,
            DEFAULT_TEMPLATER(name),
            mode=str(getattr(instance, "mode", "exclusive")),
            fifo=bool(getattr(instance, "fifo", False)),
            reentrant=bool(getattr(instance, "reentrant", False)),
            max_leases=max_leases if isinstance(max_leases, int) else None,
            ttl=float(ttl) if isinstance(ttl, int | float) else None,
            adapter=self,
        )

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        token = getattr(instance, "fencing_token", None)
        owner = getattr(instance, "owner", None)
        ttl = getattr(instance, "ttl", None)
        return (
            token if isinstance(token, int) else None,
            None if owner is None else str(owner),
            float(ttl) if isinstance(ttl, int | float) else None,
        )

    def is_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, self.lost_error)

    def probe_for(self, wait: Wait) -> Any:
        holder = getattr(wait.target, "holder", None)
        if holder is None or not callable(holder) or inspect.iscoroutinefunction(holder):
            return None
        return _probe


def _probe(wait: Wait) -> None:
    found = wait.target.holder()  # type: ignore[attr-defined]
    if found is None:
        return

    def get(key: str) -> Any:
        if isinstance(found, dict):
            return found.get(key)
        return getattr(found, key, None)

    token = get("fencing_token")
    if token is None:
        token = get("token")
    if isinstance(token, int) and not isinstance(token, bool):
        wait.holder_token = token
    owner = get("owner")
    if owner is not None:
        wait.holder_owner = str(owner)


def _classes(module: Any) -> list[type]:
    from lockscope.locks import _LAZY as SYNC
    from lockscope.locks import aio
    from lockscope.locks.base import AsyncLock, Lock

    short = module.__name__.rpartition(".")[2]
    names = {n for n, m in SYNC.items() if m == short}
    names |= {cls for m, cls in aio._LAZY.values() if m == short}
    found = []
    for name in names:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, Lock | AsyncLock):
            found.append(cls)
    # Base classes first: a subclass that inherits a wrapped method keeps that wrapper.
    return sorted(found, key=lambda c: len(c.__mro__))


def instrument(patcher: Patcher) -> None:
    """Wrap lockscope's lock classes as their modules are imported."""
    from lockscope.locks import _LAZY as SYNC
    from lockscope.locks import aio
    from lockscope.locks.base import AsyncLock

    sync_adapter = LockscopeAdapter(sync=True)
    async_adapter = LockscopeAdapter(sync=False)

    def apply(module: Any) -> None:
        for cls in _classes(module):
            if issubclass(cls, AsyncLock):
                # Plain functions with the guard built in (a lock that delegates to another
                # is recorded once, as the outer one), as for redis-py's Lock.
                a = async_adapter
                patcher.replace(cls, "acquire", plain.plain_async_acquire(a, guarded=True))
                patcher.replace(cls, "release", plain.plain_async_release(a, guarded=True))
                patcher.wrap(cls, "extend", operations.async_extend_wrapper(a))
            else:
                s = sync_adapter
                patcher.replace(cls, "acquire", plain.plain_acquire(s, guarded=True))
                patcher.replace(cls, "release", plain.plain_release(s, guarded=True))
                patcher.wrap(cls, "extend", operations.guarded(operations.extend_wrapper(s)))

    modules = set(SYNC.values()) | {m for m, _ in aio._LAZY.values()}
    for name in sorted(modules):
        patcher.when_imported(f"lockscope.locks.{name}", apply)
