"""Target: ``pottery``'s ``Redlock`` and ``AIORedlock`` (and ``synchronize``, which uses
``Redlock``).

Patched: ``acquire`` and ``release`` (plain functions on the class) and the name-mangled
aliases the context managers call; ``extend`` (wrapped).  Identity: system ``redis``,
name the Redis key pottery uses (``redlock:<key>``), namespace ``host:port/db`` of the
master, as redis-py's target spells it, so the same key is one lock whichever library
takes it; with several masters the namespace is all of them, sorted and comma-separated
(as lockscope's own Redlock). The owner is the acquisition's uuid (the keys' value), the
lease ``auto_release_time``. ``ReleaseUnlockedLock``/``ExtendUnlockedLock`` mean the
lock was lost.  The release pottery runs inside a failed ``acquire`` (to clean up a
minority of masters) is not a release of a hold.  Any thread (task) may release.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import operations, plain
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import LockInfo
from lockscope.instrumentation.redis_py import redis_key_info, redis_namespace

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"pottery": ">=3.0,<4"}
"""Tested with 3.0.1 (its own lock test suites run with the shim on in CI)."""

_CACHE_LIMIT = 4096


class PotteryAdapter(Adapter):
    by_key = False

    def __init__(self, lost: tuple[type[BaseException], ...]) -> None:
        self.lost = lost
        # Redlock objects have __slots__ and no __dict__: LockInfos are cached here.
        self._infos: dict[tuple[str, frozenset[int]], LockInfo] = {}

    def info(self, instance: Any) -> LockInfo | None:
        key = str(instance.key)
        masters = instance.masters
        cache_key = (key, frozenset(map(id, masters)))
        info = self._infos.get(cache_key)
        if info is None:
            namespace = ",".join(sorted(redis_namespace(m) for m in masters))
            info = redis_key_info(namespace, key, float(instance.auto_release_time), self)
            if len(self._infos) >= _CACHE_LIMIT:
                self._infos.clear()
            self._infos[cache_key] = info
        return info

    def blocking(self, instance: Any, args: Any, kwargs: Any) -> bool:
        return bool(kwargs.get("blocking", True))

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        return None, instance._uuid or None, float(instance.auto_release_time)

    def is_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, self.lost)

    def extension(self, instance: Any, args: Any, kwargs: Any) -> tuple[float | None, bool]:
        return float(instance.auto_release_time), True


_SYNC = (False, operations.extend_wrapper)
_ASYNC = (True, operations.async_extend_wrapper)
"""(asyncio?, extend wrapper factory) of ``Redlock`` and ``AIORedlock``."""


def instrument(patcher: Patcher) -> None:
    """Patch ``Redlock`` and ``AIORedlock`` when their modules are imported."""

    def patch(cls: type, flavour: tuple[bool, Any]) -> None:
        from pottery.exceptions import ExtendUnlockedLock, ReleaseUnlockedLock

        asyncio_, extend = flavour
        adapter = PotteryAdapter((ReleaseUnlockedLock, ExtendUnlockedLock))
        # Plain functions on the class with the nested-lock guard built in (not wrapt
        # proxies around a guard: fewer calls per acquire+release); the guard lets the
        # release pottery runs inside a failed acquire through unrecorded.
        if asyncio_:
            taking = plain.plain_async_acquire(adapter, guarded=True)
            releasing = plain.plain_async_release(adapter, guarded=True)
        else:
            taking = plain.plain_acquire(adapter, guarded=True)
            releasing = plain.plain_release(adapter, guarded=True)
        # pottery's context manager calls the name-mangled private methods directly.
        private = f"_{cls.__name__}__"
        for name in ("acquire", private + "acquire"):
            patcher.replace(cls, name, taking)
        for name in ("release", private + "release"):
            patcher.replace(cls, name, releasing)
        patcher.wrap(cls, "extend", extend(adapter))

    patcher.when_imported("pottery.redlock", lambda module: patch(module.Redlock, _SYNC))
    patcher.when_imported("pottery.aioredlock", lambda module: patch(module.AIORedlock, _ASYNC))
