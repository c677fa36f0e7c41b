"""Connection pools as semaphores (SQLAlchemy QueuePool sync and async, psycopg_pool sync
and async) against a real PostgreSQL, Redis and an in-process agent, with the shim in this
process: pool starvation through a Redis lock is a deadlock, so is a thread asking for a
second connection of a pool of one; a busy pool used in one order is not."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.agent import InProcessAgent
from reach_helpers import Api, unique, until

WAIT = 8.0
"""How long the starved waiters wait (pool timeout, lock timeout): the deadlock is found
well before; then both give up and the test ends."""


@pytest.fixture
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as a:
        yield a


@pytest.fixture
def shim(agent: InProcessAgent) -> Iterator[runtime.Shim]:
    config = ShimConfig(endpoint=agent.otlp_url, report_after=0.2, heartbeat=0.5,
                        metrics_export="none", service_name="pools")  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument(flush_timeout=0.5)


def pool_name(api: Api, prefix: str = "") -> Callable[[], str | None]:
    def find() -> str | None:
        locks = api.get("/api/v1/locks")["locks"]
        names = [lk["name"] for lk in locks if lk.get("system") == "pool"]
        return next((n for n in names if n.startswith(prefix)), None)

    return find


def run_threads(*targets: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    return errors


def starvation(api: Api, redis_url: str, checkout: Callable[[], Any],
               checkin: Callable[[Any], None]) -> dict[str, Any]:  # fmt: skip
    """T1 holds the pool's only connection and waits for a Redis lock T2 holds; T2 waits
    for a connection.  Returns the deadlock the agent found."""
    key = unique("starve")
    client = redis.Redis.from_url(redis_url)
    t1_has_conn, t2_has_lock = threading.Event(), threading.Event()
    found: dict[str, Any] = {}

    def t1() -> None:
        conn = checkout()
        t1_has_conn.set()
        t2_has_lock.wait(WAIT)
        lock = client.lock(key, timeout=60)
        if lock.acquire(blocking_timeout=WAIT):
            lock.release()
        checkin(conn)

    def t2() -> None:
        lock = client.lock(key, timeout=60)
        lock.acquire()
        t2_has_lock.set()
        t1_has_conn.wait(WAIT)
        try:
            conn = checkout()  # starves: the pool's one connection is T1's
        except Exception:
            conn = None
        if conn is not None:
            checkin(conn)
        lock.release()

    def watch() -> None:
        name = until(pool_name(api), timeout=WAIT)
        found.update(until(lambda: api.deadlock_on({name, key}), timeout=WAIT))

    errors = run_threads(t1, t2, watch)
    client.close()
    assert not errors, errors
    return found


def test_sqlalchemy_pool_starvation_through_a_redis_lock_is_a_deadlock(
    shim: runtime.Shim, agent: InProcessAgent, postgres_server: Any, redis_url: str
) -> None:
    import sqlalchemy

    url = postgres_server.url.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=WAIT)
    try:
        found = starvation(Api(agent.http_url), redis_url, engine.connect, lambda c: c.close())
    finally:
        engine.dispose()
    assert len(found["participants"]) == 2
    pool = next(n for n in found["locks"] if n.startswith("postgresql+psycopg://"))
    assert {p["waits_for"] for p in found["participants"]} == set(found["locks"])
    holds = {p["waits_for"]: set(p["holds"]) for p in found["participants"]}
    assert pool in next(h for w, h in holds.items() if w != pool)  # T1 holds the connection


def test_psycopg_pool_starvation_through_a_redis_lock_is_a_deadlock(
    shim: runtime.Shim, agent: InProcessAgent, postgres_server: Any, redis_url: str
) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(postgres_server.dsn, min_size=1, max_size=1, timeout=WAIT,
                        name=unique("pool")) as pool:  # fmt: skip
        found = starvation(Api(agent.http_url), redis_url, pool.getconn, pool.putconn)
    assert {p["waits_for"] for p in found["participants"]} == set(found["locks"])
    assert pool.name in found["locks"]


def test_a_thread_asking_a_pool_of_one_for_a_second_connection_deadlocks_itself(
    shim: runtime.Shim, agent: InProcessAgent, postgres_server: Any
) -> None:
    import sqlalchemy

    url = postgres_server.url.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=WAIT)
    api = Api(agent.http_url)
    found: dict[str, Any] = {}

    def greedy() -> None:
        with engine.connect(), pytest.raises(sqlalchemy.exc.TimeoutError):
            engine.connect()

    def watch() -> None:
        name = until(pool_name(api), timeout=WAIT)
        found.update(until(lambda: api.deadlock_on({name}), timeout=WAIT))

    try:
        assert run_threads(greedy, watch) == []
    finally:
        engine.dispose()
    (only,) = found["participants"]
    assert only["waits_for"] in only["holds"]


def test_async_pools_starve_through_a_redis_asyncio_lock(
    shim: runtime.Shim, agent: InProcessAgent, postgres_server: Any, redis_url: str
) -> None:
    """The same ring with tasks: SQLAlchemy's async engine (AsyncAdaptedQueuePool) and
    psycopg_pool's AsyncConnectionPool; the actors are the tasks."""
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.ext.asyncio import create_async_engine

    api = Api(agent.http_url)

    async def ring(
        prefix: str, checkout: Callable[[], Any], checkin: Callable[[Any], Any]
    ) -> dict[str, Any]:
        key = unique("astarve")
        client = redis.asyncio.Redis.from_url(redis_url)
        has_conn, has_lock = asyncio.Event(), asyncio.Event()

        async def t1() -> None:
            conn = await checkout()
            has_conn.set()
            await has_lock.wait()
            lock = client.lock(key, timeout=60, sleep=0.05)
            if await lock.acquire(blocking_timeout=WAIT):
                await lock.release()
            await checkin(conn)

        async def t2() -> None:
            lock = client.lock(key, timeout=60)
            await lock.acquire()
            has_lock.set()
            await has_conn.wait()
            try:
                conn = await checkout()
            except Exception:
                conn = None
            if conn is not None:
                await checkin(conn)
            await lock.release()

        tasks = [asyncio.create_task(t1()), asyncio.create_task(t2())]
        name = await asyncio.to_thread(until, pool_name(api, prefix), WAIT)
        found = await asyncio.to_thread(until, lambda: api.deadlock_on({name, key}), WAIT)
        await asyncio.gather(*tasks)
        await client.aclose()
        return dict(found)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        url = postgres_server.url.replace("postgresql://", "postgresql+psycopg://")
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=WAIT)

        async def close(conn: Any) -> None:
            await conn.close()

        try:
            first = await ring("postgresql+psycopg://", engine.connect, close)
        finally:
            await engine.dispose()
        name = unique("apool")
        async with AsyncConnectionPool(postgres_server.dsn, min_size=1, max_size=1,
                                       timeout=WAIT, open=False, name=name) as pool:  # fmt: skip
            second = await ring(name, pool.getconn, pool.putconn)
        return first, second

    for found in asyncio.run(main()):
        assert len(found["participants"]) == 2
        assert {p["waits_for"] for p in found["participants"]} == set(found["locks"])
        assert all("Task" in p["actor"] for p in found["participants"])


def test_a_busy_pool_without_a_cycle_is_no_deadlock(
    shim: runtime.Shim, agent: InProcessAgent, postgres_server: Any, redis_url: str
) -> None:
    """Six threads share a pool of two and a Redis lock, always lock first, then pool:
    long waits for both, never a cycle."""
    import sqlalchemy

    url = postgres_server.url.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=2, max_overflow=0, pool_timeout=30)
    client = redis.Redis.from_url(redis_url)
    key = unique("busy")
    api = Api(agent.http_url)
    seen: list[bool] = []

    def worker(i: int) -> Callable[[], None]:
        def run() -> None:
            for n in range(6):
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("select pg_sleep(0.25)"))
                if (i + n) % 3 == 0:
                    with client.lock(key, timeout=30), engine.connect() as conn:
                        conn.execute(sqlalchemy.text("select 1"))

        return run

    def watch() -> None:
        name = until(pool_name(api), timeout=WAIT)
        seen.append(bool(until(lambda: (api.lock(name) or {}).get("waiters"), timeout=30)))

    try:
        assert run_threads(*(worker(i) for i in range(6)), watch) == []
    finally:
        engine.dispose()
        client.close()
    assert seen == [True]
    assert api.findings("deadlocks") == []
