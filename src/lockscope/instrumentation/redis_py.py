"""Target: redis-py's ``Lock`` (``redis.lock.Lock`` and ``redis.asyncio.lock.Lock``).

Wrapped: ``acquire``, ``release``, ``extend``, ``reacquire``; ``locked``/``owned`` are left
alone (they only read).  Identity: system ``redis``, namespace ``host:port/db`` of the
client's pool, name = the key.  The owner id is the lock's token (the key's value); a long
wait looks up the holder's token with one ``GET`` on the reporter's probe thread (sync
clients only).  ``LockNotOwnedError`` on release or extend means the lock was lost.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import operations, plain
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import LockInfo, Wait
from lockscope.naming import DEFAULT_TEMPLATER

__all__ = ["instrument"]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def redis_namespace(client: Any) -> str:
    """``host:port/db`` (or ``unix:path/db``) of a redis-py client, ``cluster`` for clusters."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return "cluster" if client is not None else ""
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}/{db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def redis_key_info(namespace: str, key: str, ttl: float | None, adapter: Adapter) -> LockInfo:
    """A Redis key as a lock, named as every Redis-based target names it (system ``redis``,
    the default template), so one key is one lock whichever library takes it."""
    return LockInfo("redis", namespace, key, DEFAULT_TEMPLATER(key), ttl=ttl, adapter=adapter)


class RedisAdapter(Adapter):
    """redis-py ``Lock`` objects (sync or asyncio)."""

    def __init__(self, lost_errors: tuple[type[BaseException], ...], sync: bool) -> None:
        self.lost_errors = lost_errors
        self.sync = sync

    def shared(self, instance: Any) -> bool:
        return not getattr(instance, "thread_local", True) or not self.sync

    def info(self, instance: Any) -> LockInfo | None:
        name = _text(instance.name) or ""
        timeout = instance.timeout
        ttl = float(timeout) if timeout is not None else None
        return redis_key_info(redis_namespace(instance.redis), name, ttl, self)

    def blocking(self, instance: Any, args: Any, kwargs: Any) -> bool:
        # sync: acquire(sleep, blocking, ...); asyncio: acquire(blocking, ...)
        index = 1 if self.sync else 0
        blocking = kwargs.get("blocking", args[index] if len(args) > index else None)
        if blocking is None:
            blocking = instance.blocking
        return bool(blocking)

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        # The owner stays bytes here (decoded only if the hold is reported).
        return None, getattr(instance.local, "token", None), instance.timeout

    def is_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, self.lost_errors)

    def extension(self, instance: Any, args: Any, kwargs: Any) -> tuple[float | None, bool]:
        seconds = kwargs.get("additional_time", args[0] if args else None)
        replace = kwargs.get("replace_ttl", args[1] if len(args) > 1 else False)
        value = float(seconds) if isinstance(seconds, int | float) else None
        return value, bool(replace)

    def probe_for(self, wait: Wait) -> Any:
        if not self.sync:
            return None
        return _probe


def _probe(wait: Wait) -> None:
    lock: Any = wait.target
    wait.holder_owner = _text(lock.redis.get(lock.name))


def _reacquire(instance: Any, args: Any, kwargs: Any) -> tuple[float | None, bool]:
    timeout = instance.timeout
    return (float(timeout) if timeout is not None else None), True


# acquire and release (every use of a lock) are plain functions on the class (see
# .plain: no wrapt binding per call); extend and reacquire keep the wrapt wrappers.
_WRAPPERS = {
    True: (plain.plain_acquire, plain.plain_release, operations.extend_wrapper),
    False: (
        plain.plain_async_acquire,
        plain.plain_async_release,
        operations.async_extend_wrapper,
    ),
}


def instrument(patcher: Patcher) -> None:
    """Wrap redis-py's sync and asyncio ``Lock`` when they are imported."""

    def apply(module: Any, sync: bool) -> None:
        from redis.exceptions import LockNotOwnedError

        adapter = RedisAdapter((LockNotOwnedError,), sync=sync)
        acquire, release, extend = _WRAPPERS[sync]
        cls = module.Lock
        patcher.replace(cls, "acquire", acquire(adapter))
        patcher.replace(cls, "release", release(adapter))
        patcher.wrap(cls, "extend", extend(adapter))
        patcher.wrap(cls, "reacquire", extend(adapter, _reacquire))

    patcher.when_imported("redis.lock", lambda module: apply(module, True))
    patcher.when_imported("redis.asyncio.lock", lambda module: apply(module, False))
