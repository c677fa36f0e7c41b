"""What :mod:`lockscope.locks.redis` and :mod:`lockscope.locks.redlock` share.

The Lua scripts, key naming, client construction from URLs and the mapping of redis-py
errors onto :class:`~lockscope.errors.BackendUnavailable`.  Private: the public surface is
the lock classes.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from lockscope.errors import BackendUnavailable
from lockscope.locks.base import validate_ttl

__all__ = [
    "ACQUIRE_COUNTING",
    "ACQUIRE_READING_FENCE",
    "DEFAULT_PREFIX",
    "EXTEND",
    "HOLDER",
    "RAISE_FENCE",
    "RELEASE",
    "LockHolder",
    "async_client",
    "backend_errors",
    "client_namespace",
    "decode",
    "lock_keys",
    "new_owner",
    "parse_holder",
    "sync_client",
    "to_ms",
    "validate_prefix",
]

DEFAULT_PREFIX = "lockscope"

# KEYS[1] lock key, KEYS[2] fence counter.  ARGV[1] owner token, ARGV[2] lease in ms.
# The counter is bumped in the same script as the SET, so no acquisition can go without a
# token and no two acquisitions can share one (Redis runs a script atomically).
ACQUIRE_COUNTING = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

# Redlock, phase 1 on each server: take the key and report that server's fence counter.
# -1 = busy.  The counter is not bumped here: the token is chosen over a whole quorum.
ACQUIRE_READING_FENCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return -1
"""

# Redlock, phase 2: fence = max(fence, token), only while we still hold this server's key,
# so the write is ordered before any later holder's SET on the same server.
RAISE_FENCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local token = tonumber(ARGV[2])
  if token > tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('SET', KEYS[2], ARGV[2])
  end
  return 1
end
return 0
"""

# KEYS[1] lock key; ARGV[1] owner.  1 = released, 0 = not ours (expired or someone else's).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] lock key; ARGV[1] owner, ARGV[2] new remaining lease in ms.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lock key, KEYS[2] fence.  {owner, fence, remaining ms} or nil when free; one
# round trip and one atomic view, so the owner and the token always belong together.
HOLDER = """
local owner = redis.call('GET', KEYS[1])
if not owner then
  return nil
end
return {owner, tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('PTTL', KEYS[1])}
"""


class LockHolder(NamedTuple):
    """Who holds a Redis lock right now, as the server sees it."""

    owner: str
    """The holder's random owner token (its lock object's ``owner``)."""
    fencing_token: int
    """The holder's fencing token (for Redlock: the highest counter among its servers)."""
    ttl: float | None
    """Seconds left on the holder's lease (``None`` if the key has no expiry)."""


def new_owner() -> str:
    """A fresh random owner token: 128 bits, so no two acquisitions ever share one."""
    return secrets.token_hex(16)


def lock_keys(prefix: str, name: str) -> tuple[str, str]:
    """The lock key and its fence-counter key.

    Both carry the Redis Cluster hash tag ``{name}``, so they live in the same slot and one
    script may touch both.  (A name that starts with ``}`` yields an empty tag; Redis
    Cluster then hashes the whole key and a cluster refuses the script with CROSSSLOT.)
    """
    return f"{prefix}:{{{name}}}", f"{prefix}:{{{name}}}:fence"


def validate_prefix(prefix: object) -> str:
    """The key prefix: a non-empty str without braces (braces would move the hash tag)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be non-empty and free of braces, got {prefix!r}")
    return prefix


def to_ms(seconds: float, what: str = "ttl") -> int:
    """Seconds -> whole milliseconds for PX/PEXPIRE (rounded up, at least 1)."""
    seconds = validate_ttl(seconds, what)
    return max(1, math.ceil(seconds * 1000))


def _client_kwargs(timeout: float) -> dict[str, Any]:
    # No retries: a retried SET NX after a timeout could find its own key and report
    # "busy", and every retry multiplies the time a caller waits on a dead server.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
    }


def sync_client(url: str, timeout: float) -> redis.Redis:
    """A client for ``url`` whose every call fails within about ``timeout`` seconds."""
    return redis.Redis.from_url(url, **_client_kwargs(timeout))


def async_client(url: str, timeout: float) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`sync_client`."""
    kwargs = _client_kwargs(timeout)
    kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
    return redis.asyncio.Redis.from_url(url, **kwargs)


def client_namespace(client: object) -> str:
    """``host:port/db`` (or ``unix:PATH/db``) of a client; ``cluster:host:port`` for a cluster."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # RedisCluster: name it by the node it was started from
        node = getattr(client, "get_default_node", lambda: None)()
        return f"cluster:{getattr(node, 'host', '?')}:{getattr(node, 'port', '?')}"
    kwargs = getattr(pool, "connection_kwargs", {})
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}/{db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def decode(value: bytes | str) -> str:
    """A reply as str, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def parse_holder(reply: Any) -> LockHolder | None:
    """The HOLDER script's reply as a :class:`LockHolder`."""
    if not reply:
        return None
    owner, fence, pttl = reply
    return LockHolder(decode(owner), int(fence), None if int(pttl) < 0 else int(pttl) / 1000)


@contextmanager
def backend_errors(where: str) -> Iterator[None]:
    """Turn redis-py's errors (refused, timed out, server error) into BackendUnavailable."""
    try:
        yield
    except redis.RedisError as exc:
        raise BackendUnavailable(f"redis at {where}: {exc}") from exc
    except OSError as exc:  # a socket error redis-py did not wrap
        raise BackendUnavailable(f"redis at {where}: {exc}") from exc
