"""A warning, once per server, when Redis may evict lock keys during their lease.

A lock key has a TTL (its lease). Under ``maxmemory`` with any policy but ``noeviction``
Redis may delete it before the lease ends (``volatile-*`` policies pick among keys with a
TTL, so lock keys are exactly their candidates; ``allkeys-*`` may also take the fence
counter, and tokens would then restart). A second client can then take a lock that is
still held. lockscope cannot prevent that from the client, so it says so, once.

The check is one ``CONFIG GET maxmemory*`` on a lock's first call to a server (normally
its first acquire), once per server and process. A server that refuses ``CONFIG``
(managed services, ACLs) is not an error: the lock works as before and the refusal is
logged at debug level.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

__all__ = ["check_eviction", "check_eviction_async", "eviction_warning"]

log = logging.getLogger("lockscope.locks")

_checked: set[str] = set()
_checked_lock = threading.Lock()

SAFE_POLICY = "noeviction"


def _first_time(namespace: str) -> bool:
    with _checked_lock:
        if namespace in _checked:
            return False
        _checked.add(namespace)
        return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def eviction_warning(reply: Any, namespace: str) -> str | None:
    """The warning for a ``CONFIG GET maxmemory*`` reply, or ``None`` if keys are safe."""
    config = {_text(k): _text(v) for k, v in dict(reply or {}).items()}
    policy = config.get("maxmemory-policy", SAFE_POLICY)
    try:
        maxmemory = int(config.get("maxmemory", "0"))
    except ValueError:
        maxmemory = 0
    if policy == SAFE_POLICY or maxmemory == 0:
        return None  # without a memory limit nothing is ever evicted
    return (
        f"redis at {namespace} has maxmemory-policy {policy} (maxmemory {maxmemory} bytes): "
        "it can evict a lock's key during its lease, and another client then takes a lock "
        "that is still held; set maxmemory-policy noeviction on servers that hold locks "
        "(see docs/locks.md)"
    )


def _report(reply: Any, namespace: str) -> None:
    message = eviction_warning(reply, namespace)
    if message is not None:
        log.warning("%s", message)


def _not_answered(namespace: str, exc: BaseException) -> None:
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        with _checked_lock:  # unreachable now: ask again on a later acquire
            _checked.discard(namespace)
    log.debug("redis at %s: CONFIG GET maxmemory* not answered (%s); not checked", namespace, exc)


def check_eviction(client: Any, namespace: str) -> None:
    """Warn (once per server) if ``client``'s server can evict lock keys; never raises."""
    if not _first_time(namespace):
        return
    try:
        reply = client.config_get("maxmemory*")
    except Exception as exc:  # refused, not permitted, unreachable: the lock goes on
        _not_answered(namespace, exc)
        return
    _report(reply, namespace)


async def check_eviction_async(client: Any, namespace: str) -> None:
    """The asyncio twin of :func:`check_eviction`."""
    if not _first_time(namespace):
        return
    try:
        reply = await client.config_get("maxmemory*")
    except Exception as exc:
        _not_answered(namespace, exc)
        return
    _report(reply, namespace)
