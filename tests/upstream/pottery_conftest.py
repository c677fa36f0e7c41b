"""Fixtures pottery's tests expect from the conftest of pottery's repository (not shipped in
its sdist), written here against lockscope's own Redis fixture (``redis_url``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AIORedis


@pytest.fixture
def redis_db() -> int:
    return 0


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=1)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
async def aioredis(redis_url: str) -> AsyncIterator[Any]:
    client = AIORedis.from_url(redis_url, socket_timeout=1)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()
