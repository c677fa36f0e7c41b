"""Target: ``python-redis-lock`` (``redis_lock.Lock``, with its auto-renewal thread,
``reset`` and ``reset_all``).

Patched: ``acquire`` and ``release`` (plain functions on the class); wrapped: ``extend``,
``reset`` and ``redis_lock.reset_all``.
Identity as redis-py's target: system ``redis``, namespace ``host:port/db`` of the
client, name the Redis key the library uses (``lock:<name>``), so a redis-py waiter on
that key and a python-redis-lock holder of it meet on one lock.  The owner is the lock's
``id`` (the key's value); the lease is ``expire`` (none without it: such a lock outlives
a crashed holder, which the agent reports as orphaned).  The renewal thread's
``extend`` calls move the hold's expiry.  ``NotAcquired`` from ``release``/``extend``
means the lock was lost.  ``reset`` ends this process's holds of the key (the caller's as
released, others' as lost); ``reset_all`` ends every python-redis-lock hold on that
server as lost.  The lock is not tied to a thread: any thread may release it.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import operations, plain, runtime
from lockscope.instrumentation._holdref import deref, ref_of, via_ref
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import Hold, LockInfo, Wait
from lockscope.instrumentation.redis_py import redis_key_info, redis_namespace

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"python-redis-lock": ">=4.0,<5"}
"""Tested with 4.0.1 (its own test suite runs with the shim on in CI)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


class RedisLockAdapter(Adapter):
    by_key = False

    def __init__(self, not_acquired: type[BaseException]) -> None:
        self.not_acquired = not_acquired

    # The operations see the lock's HoldRef (the registry must not keep a lock alive: its
    # renewal thread stops when the lock is collected); ``deref`` gives the lock.
    def info(self, instance: Any) -> LockInfo | None:
        instance = deref(instance)
        if instance is None:
            return None
        name = _text(instance._name)
        expire = instance._expire
        ttl = float(expire) if expire else None
        return redis_key_info(redis_namespace(instance._client), name, ttl, self)

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        instance = deref(instance)
        expire = instance._expire
        return None, _text(instance._id), float(expire) if expire else None

    def is_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, self.not_acquired)

    def extension(self, instance: Any, args: Any, kwargs: Any) -> tuple[float | None, bool]:
        expire = kwargs.get("expire", args[0] if args else None) or deref(instance)._expire
        return (float(expire) if expire else None), True

    def probe_for(self, wait: Wait) -> Any:
        return _probe


def _probe(wait: Wait) -> None:
    lock: Any = deref(wait.target)
    if lock is None:
        return
    owner = lock._client.get(lock._name)
    if owner is not None:
        wait.holder_owner = _text(owner)


def _end_holds(predicate: Any, mine: Any) -> None:
    shim = runtime.current
    if shim is None:
        return
    for hold in shim.recorder.holds_matching(predicate):
        shim.recorder.end_hold(hold, "released" if hold.target is mine else "lost")


def _reset(adapter: RedisLockAdapter) -> operations.Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        if operations.fast_enabled():
            try:
                ref = ref_of(instance)
                info = operations.lock_info(adapter, ref)
                if info is not None:
                    key = info.key
                    _end_holds(lambda h: h.info.key == key, ref)
            except Exception:
                operations.failed()
        return result

    return wrapper


def _reset_all(adapter: RedisLockAdapter) -> operations.Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        if operations.fast_enabled():
            try:
                client = kwargs.get("redis_client", args[0] if args else None)
                namespace = redis_namespace(client)

                def ours(h: Hold) -> bool:
                    return h.info.adapter is adapter and h.info.namespace == namespace

                _end_holds(ours, None)
            except Exception:
                operations.failed()
        return result

    return wrapper


def instrument(patcher: Patcher) -> None:
    """Wrap ``redis_lock.Lock`` when ``redis_lock`` is imported."""

    def apply(module: Any) -> None:
        adapter = RedisLockAdapter(module.NotAcquired)
        cls = module.Lock
        # acquire and release: plain functions on the class (fewer calls than a wrapt
        # proxy), the records naming the lock's HoldRef as via_ref does.
        patcher.replace(cls, "acquire", plain.plain_acquire(adapter, refer=True))
        patcher.replace(cls, "release", plain.plain_release(adapter, refer=True))
        patcher.wrap(cls, "extend", via_ref(operations.extend_wrapper(adapter)))
        patcher.wrap(cls, "reset", _reset(adapter))
        patcher.wrap(module, "reset_all", _reset_all(adapter))

    patcher.when_imported("redis_lock", apply)
