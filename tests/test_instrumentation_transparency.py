"""Transparency: each scenario runs bare and then instrumented, against the same real
servers; return values, exceptions and the servers' state must be identical."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from kazoo.client import KazooClient
from kazoo.exceptions import CancelledError as KazooCancelled

from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.otlp_sink import OtlpSink

Transcript = list[Any]


class Recorder:
    """Collects what a scenario observes, exceptions as (type, message)."""

    def __init__(self) -> None:
        self.lines: Transcript = []

    def __call__(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except Exception as exc:
            self.lines.append((label, "raised", type(exc).__name__, str(exc)))
            return None
        self.lines.append((label, value))
        return value

    async def aw(self, label: str, coro: Any) -> Any:
        """Await ``coro`` (or ``coro()``, for calls that may raise before awaiting)."""
        try:
            value = await (coro() if callable(coro) else coro)
        except (Exception, asyncio.CancelledError) as exc:
            self.lines.append((label, "raised", type(exc).__name__, str(exc)))
            return None
        self.lines.append((label, value))
        return value


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


def compare(sink: OtlpSink, scenario: Callable[[], Transcript], **opts: Any) -> None:
    """Run ``scenario`` bare, then instrumented; they must agree, and the shim must have
    recorded acquisitions (so the comparison is not bare against bare)."""
    bare = scenario()
    config = ShimConfig(endpoint=sink.endpoint, report_after=0.05, heartbeat=0.2,
                        metrics_export="none")  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config, **opts)
    try:
        shim = runtime.current
        assert shim is not None
        instrumented = scenario()
        shim.recorder.fold_light()  # in-process locks count their own, folded on ticks
        recorded = sum(shim.recorder.stats.snapshot()[1].values())
        errors = shim.recorder.errors
    finally:
        instrumentor.uninstrument()
    assert instrumented == bare
    assert recorded > 0
    assert errors == 0


# -- redis-py ---------------------------------------------------------------------------
def _redis_scenario(url: str) -> Callable[[], Transcript]:
    def scenario() -> Transcript:
        r = redis.Redis.from_url(url)
        r.flushdb()
        t = Recorder()
        lock = r.lock("t:a", timeout=30)
        t("acquire", lock.acquire)
        t("owned", lock.owned)
        t("locked", lock.locked)
        t("value is token", lambda: r.get("t:a") == lock.local.token)
        other = r.lock("t:a", timeout=30)
        t("busy", lambda: other.acquire(blocking=False))
        t("timeout", lambda: other.acquire(blocking_timeout=0.05, sleep=0.01))
        t("extend add", lambda: lock.extend(10))
        t("ttl after add", lambda: 35 <= r.pttl("t:a") / 1000 <= 40)
        t("extend replace", lambda: lock.extend(5, replace_ttl=True))
        t("ttl after replace", lambda: r.pttl("t:a") <= 5000)
        t("reacquire", lock.reacquire)
        # Thread-local token: another thread does not own this object's hold.
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(Recorder()("x", lock.release)))
        thread.start()
        thread.join()
        t("other thread release", lambda: seen)
        t("release", lock.release)
        t("release again", lock.release)
        t("extend unheld", lambda: lock.extend(1))
        t("reacquire unheld", lock.reacquire)
        lost = r.lock("t:lost", timeout=30)
        t("acquire lost", lost.acquire)
        r.set("t:lost", "someone-else")
        t("extend lost", lambda: lost.extend(1))
        t("reacquire lost", lost.reacquire)
        t("release lost", lost.release)
        with r.lock("t:cm", timeout=30, blocking_timeout=0.1) as held:
            t("cm locked", held.locked)
        t("cm released", lambda: r.exists("t:cm"))
        shared = r.lock("t:shared", timeout=30, thread_local=False)
        t("shared acquire", shared.acquire)
        thread = threading.Thread(target=shared.release)
        thread.start()
        thread.join()
        t("released by other thread", lambda: r.exists("t:shared"))
        t("bad token type", lambda: r.lock("t:b").acquire(token=object()))
        t("keys", lambda: sorted(r.keys()))
        r.close()
        return t.lines

    return scenario


def test_redis_lock_is_transparent(sink: OtlpSink, redis_url: str) -> None:
    compare(sink, _redis_scenario(redis_url))


async def _set_calls(r: redis.asyncio.Redis) -> int:
    """How many SET commands the server has run (redis-py acquires with SET NX PX)."""
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_set", {}).get("calls", 0))


def _async_redis_scenario(url: str) -> Callable[[], Transcript]:
    async def body() -> Transcript:
        r = redis.asyncio.Redis.from_url(url)
        await r.flushdb()
        t = Recorder()
        lock = r.lock("ta:a", timeout=30)
        await t.aw("acquire", lock.acquire())
        other = r.lock("ta:a", timeout=30, sleep=0.01)
        await t.aw("busy", other.acquire(False))
        await t.aw("timeout", other.acquire(blocking_timeout=0.05))
        # A waiter cancelled mid-wait raises CancelledError and leaves the holder's key.
        tries = await _set_calls(r)
        waiter = asyncio.ensure_future(other.acquire())
        async with asyncio.timeout(10):  # until the waiter has tried at least once
            while await _set_calls(r) == tries:  # noqa: ASYNC110 (polling the server)
                await asyncio.sleep(0.005)
        waiter.cancel()
        await t.aw("cancelled", waiter)
        await t.aw("still held", lock.owned())
        await t.aw("extend", lock.extend(5, replace_ttl=True))
        await t.aw("reacquire", lock.reacquire())
        await t.aw("release", lock.release())
        await t.aw("release again", lock.release)
        await t.aw("extend unheld", lambda: lock.extend(1))
        lost = r.lock("ta:lost", timeout=30)
        await t.aw("acquire lost", lost.acquire())
        await r.set("ta:lost", "x")
        await t.aw("extend lost", lost.extend(1))
        await t.aw("release lost", lost.release())
        async with r.lock("ta:cm", timeout=30) as held:
            await t.aw("cm locked", held.locked())
        await t.aw("keys", r.keys())
        await r.aclose()
        t.lines[-1] = (t.lines[-1][0], sorted(t.lines[-1][1]))
        return t.lines

    return lambda: asyncio.run(body())


def test_asyncio_redis_lock_is_transparent(sink: OtlpSink, redis_url: str) -> None:
    compare(sink, _async_redis_scenario(redis_url))


# -- kazoo ------------------------------------------------------------------------------
def _kazoo_scenario(hosts: str) -> Callable[[], Transcript]:
    def scenario() -> Transcript:
        zk = KazooClient(hosts=hosts, timeout=10)
        zk.start(timeout=20)
        zk.delete("/transparency", recursive=True)
        t = Recorder()
        lock = zk.Lock("/transparency/lock", "me")
        t("acquire", lock.acquire)
        other = zk.Lock("/transparency/lock", "other")
        t("busy", lambda: other.acquire(blocking=False))
        t("timeout", lambda: other.acquire(timeout=0.2))
        t("contenders", lock.contenders)
        # cancel() from another thread ends a blocked acquire with CancelledError.
        outcome: list[Any] = []
        waiter = threading.Thread(target=lambda: outcome.append(Recorder()("w", other.acquire)))
        waiter.start()
        deadline = time.monotonic() + 10
        while len(zk.get_children("/transparency/lock")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        other.cancel()
        waiter.join(10)
        t("cancelled", lambda: outcome)
        t("release", lock.release)
        t("release again", lock.release)
        read1 = zk.ReadLock("/transparency/rw", "r1")
        read2 = zk.ReadLock("/transparency/rw", "r2")
        write = zk.WriteLock("/transparency/rw", "w")
        t("read1", read1.acquire)
        t("read2", lambda: read2.acquire(timeout=5))
        t("write busy", lambda: write.acquire(blocking=False))
        t("read release", lambda: (read1.release(), read2.release()))
        t("write", lambda: write.acquire(timeout=5))
        t("write release", write.release)
        sem = zk.Semaphore("/transparency/sem", "s", max_leases=2)
        sem2 = zk.Semaphore("/transparency/sem", "s2", max_leases=2)
        sem3 = zk.Semaphore("/transparency/sem", "s3", max_leases=2)
        t("sem1", sem.acquire)
        t("sem2", sem2.acquire)
        t("sem3 busy", lambda: sem3.acquire(blocking=False))
        t("sem3 timeout", lambda: sem3.acquire(timeout=0.2))
        t("holders", lambda: sorted(sem.lease_holders()))
        t("sem release", lambda: (sem.release(), sem2.release()))
        election = zk.Election("/transparency/election", "leader")
        t("election", lambda: election.run(lambda x: outcome.append(("led", x)), 42))
        t("led", lambda: outcome[-1])
        t("not callable", lambda: election.run(None))
        t("leftover", lambda: sorted(zk.get_children("/transparency/lock")))
        zk.delete("/transparency", recursive=True)
        zk.stop()
        zk.close()
        return t.lines

    return scenario


def test_kazoo_recipes_are_transparent(sink: OtlpSink, zookeeper_server: Any) -> None:
    compare(sink, _kazoo_scenario(zookeeper_server.hosts))


def test_kazoo_cancel_error_type_is_kazoos() -> None:
    # The cancelled outcome above must be kazoo's CancelledError, not asyncio's.
    assert KazooCancelled.__module__ == "kazoo.exceptions"


# -- in-process locks (opt-in) ----------------------------------------------------------
def _threading_scenario() -> Transcript:
    t = Recorder()
    lock = threading.Lock()
    t("acquire", lock.acquire)
    t("locked", lock.locked)
    t("busy", lambda: lock.acquire(False))
    t("timeout", lambda: lock.acquire(True, 0.01))
    t("bad timeout", lambda: lock.acquire(False, 1))
    t("negative timeout", lambda: lock.acquire(True, -5))
    t("release", lock.release)
    t("release unheld", lock.release)
    with lock as entered:
        t("with", lambda: entered)
    rlock = threading.RLock()
    t("r1", rlock.acquire)
    t("r2", rlock.acquire)
    release: Callable[[], object] = rlock.release  # what it returns is part of the transcript
    t("r release", lambda: (release(), release()))
    t("r release unheld", rlock.release)
    cond = threading.Condition(rlock)
    box: list[int] = []

    def producer() -> None:
        with cond:
            box.append(1)
            cond.notify()

    with cond:
        thread = threading.Thread(target=producer)
        thread.start()
        t("cond wait", lambda: cond.wait_for(lambda: box, timeout=10))
    thread.join()
    t("type", lambda: type(lock).__name__ in ("lock", "TracedLock"))
    return t.lines


def test_threading_locks_are_transparent(sink: OtlpSink) -> None:
    compare(sink, _threading_scenario, threading=True)


def _asyncio_scenario() -> Transcript:
    async def body() -> Transcript:
        t = Recorder()
        lock = asyncio.Lock()
        await t.aw("acquire", lock.acquire())
        t("locked", lock.locked)
        waiter = asyncio.ensure_future(lock.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await t.aw("cancelled", waiter)
        t("release", lock.release)
        t("release unheld", lock.release)
        async with lock:
            t("inside", lock.locked)
        return t.lines

    return asyncio.run(body())


def test_asyncio_locks_are_transparent(sink: OtlpSink) -> None:
    compare(sink, _asyncio_scenario, asyncio=True)


def test_uninstrument_restores_every_method(sink: OtlpSink) -> None:
    import kazoo.recipe.lock
    import redis.asyncio.lock
    import redis.lock

    owners = [redis.lock.Lock, redis.asyncio.lock.Lock, kazoo.recipe.lock.Lock,
              kazoo.recipe.lock.Semaphore, kazoo.recipe.lock.ReadLock]  # fmt: skip
    before = [dict(vars(c)) for c in owners]
    lock_factory = threading.Lock
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=ShimConfig(endpoint=sink.endpoint), threading=True)
    assert vars(redis.lock.Lock)["acquire"] is not before[0]["acquire"]
    assert threading.Lock is not lock_factory
    instrumentor.uninstrument()
    assert [dict(vars(c)) for c in owners] == before
    assert threading.Lock is lock_factory
