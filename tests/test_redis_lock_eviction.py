"""Redis locks warn, once per server, when the server may evict lock keys during a lease.

Against real redis-servers: one set to ``maxmemory-policy volatile-lru`` with a memory
limit (the policy under which a lock key was evicted mid-lease and a second client took
the lock), the session's default servers (``noeviction``) and a user whom an ACL denies
``CONFIG``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import redis

from lockscope.locks import _redis_eviction
from lockscope.locks.fair import FairLock
from lockscope.locks.redis import AsyncRedisLock, RedisLock
from lockscope.locks.redlock import AsyncRedlock, Redlock
from lockscope.testing.redis_server import RedisServer

LOGGER = "lockscope.locks"


@pytest.fixture(scope="module")
def evicting_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory", str(64 * 1024 * 1024))
        client.config_set("maxmemory-policy", "volatile-lru")
        client.close()
        yield server


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test is a new process as far as the once-per-server check is concerned.
    monkeypatch.setattr(_redis_eviction, "_checked", set())


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def name() -> str:
    return f"evict-{uuid.uuid4().hex[:8]}"


def test_volatile_lru_server_warns_once_and_the_lock_still_works(
    evicting_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    first = RedisLock(name(), evicting_server.url, ttl=5)
    second = FairLock(name(), evicting_server.url, ttl=5)
    for lock in (first, first, second):
        assert lock.acquire(timeout=5)
        lock.release()
    (message,) = warnings_of(caplog)  # once per server, not per lock or acquire
    assert f"127.0.0.1:{evicting_server.port}/0" in message
    assert "maxmemory-policy volatile-lru" in message
    assert "noeviction" in message
    first.close()
    second.close()


def test_noeviction_server_does_not_warn(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    lock = RedisLock(name(), redis_url, ttl=5)
    assert lock.acquire(timeout=5)
    lock.release()
    lock.close()
    assert redis.Redis.from_url(redis_url).config_get("maxmemory-policy") == {
        "maxmemory-policy": "noeviction"
    }
    assert warnings_of(caplog) == []


async def test_async_lock_warns_too(
    evicting_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    lock = AsyncRedisLock(name(), evicting_server.url, ttl=5)
    assert await lock.acquire(timeout=5)
    await lock.release()
    assert await lock.acquire(timeout=5)
    await lock.release()
    await lock.aclose()
    assert len(warnings_of(caplog)) == 1


def test_redlock_warns_for_the_evicting_server_only(
    evicting_server: RedisServer,
    redis_servers: list[RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    urls = [evicting_server.url, redis_servers[0].url, redis_servers[1].url]
    lock = Redlock(name(), urls, ttl=5)
    assert lock.acquire(timeout=5)
    lock.release()
    assert lock.acquire(timeout=5)
    lock.release()
    lock.close()
    (message,) = warnings_of(caplog)
    assert f":{evicting_server.port}/0" in message
    for other in redis_servers[:2]:
        assert f":{other.port}/" not in message


async def test_async_redlock_warns_for_the_evicting_server_only(
    evicting_server: RedisServer,
    redis_servers: list[RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    urls = [redis_servers[0].url, evicting_server.url, redis_servers[1].url]
    lock = AsyncRedlock(name(), urls, ttl=5)
    assert await lock.acquire(timeout=5)
    await lock.release()
    await lock.aclose()
    (message,) = warnings_of(caplog)
    assert f":{evicting_server.port}/0" in message


def test_config_get_denied_is_not_an_error(
    evicting_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed services and ACLs often refuse CONFIG: the lock must work as before."""
    admin = redis.Redis.from_url(evicting_server.url)
    admin.acl_setuser(
        "locker", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-config"]
    )
    admin.close()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    url = f"redis://locker:secret@127.0.0.1:{evicting_server.port}/0"
    lock = RedisLock(name(), url, ttl=5)
    assert lock.acquire(timeout=5)
    assert lock.owned()
    lock.release()
    lock.close()
    assert warnings_of(caplog) == []
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("CONFIG GET maxmemory* not answered" in m for m in debug), debug


def test_warning_text_per_policy() -> None:
    ns = "10.0.0.1:6379/0"
    assert _redis_eviction.eviction_warning({"maxmemory-policy": "noeviction"}, ns) is None
    limit = {"maxmemory": "1000"}
    assert _redis_eviction.eviction_warning({**limit, "maxmemory-policy": "noeviction"}, ns) is None
    # Without a memory limit nothing is evicted, whatever the policy says.
    assert _redis_eviction.eviction_warning({"maxmemory-policy": "allkeys-lru"}, ns) is None
    for policy in ("volatile-lru", "volatile-ttl", "allkeys-lfu", "allkeys-random"):
        found = _redis_eviction.eviction_warning(
            {b"maxmemory": b"1000", b"maxmemory-policy": policy.encode()}, ns
        )
        assert found is not None
        assert policy in found
        assert ns in found
