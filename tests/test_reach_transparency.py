"""Transparency of the second round's targets: each scenario runs bare, then instrumented,
against the same real files, Redis and PostgreSQL; what the app observes must be identical
(the libraries' own suites, tests/test_upstream_suites.py, prove the rest)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from lockscope.instrumentation import runtime
from lockscope.testing.otlp_sink import OtlpSink
from test_instrumentation_transparency import Recorder, Transcript, compare


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


def _square(x: int) -> int:  # module level: picklable for a process pool
    return x * x


def _files_scenario(root: Path) -> Callable[[], Transcript]:
    import fasteners
    import filelock
    import portalocker

    def scenario() -> Transcript:
        d = root / "run"  # the same paths in both runs: messages name them
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        t = Recorder()
        lock = filelock.FileLock(str(d / "f.lock"))
        t("acquire", lambda: type(lock.acquire()).__name__)
        t("nested", lambda: type(lock.acquire()).__name__)
        t("counter", lambda: lock.lock_counter)
        other: list[Any] = []

        def from_other_thread() -> None:
            other_lock = filelock.FileLock(str(d / "f.lock"))
            other.append(Recorder()("other", lambda: other_lock.acquire(timeout=0.05)))

        th = threading.Thread(target=from_other_thread)
        th.start()
        th.join()
        t("other thread", lambda: [x[1:3] for x in other[0].lines] if other else None)
        t("release", lock.release)
        t("still", lambda: lock.is_locked)
        t("force", lambda: lock.release(force=True))
        t("unlocked", lambda: lock.is_locked)
        soft = filelock.SoftFileLock(str(d / "s.lock"))
        t("soft", lambda: (type(soft.acquire()).__name__, os.path.exists(d / "s.lock")))
        t("soft busy", lambda: filelock.SoftFileLock(str(d / "s.lock")).acquire(blocking=False))
        t("soft release", soft.release)
        p = portalocker.Lock(str(d / "p.lock"), fail_when_locked=True)
        t("porta", lambda: p.acquire() is p.acquire())
        t(
            "porta busy",
            lambda: portalocker.Lock(str(d / "p.lock"), fail_when_locked=True).acquire(),
        )
        t("porta release", p.release)
        t("porta release again", p.release)
        r = portalocker.RLock(str(d / "r.lock"))
        t("rlock", lambda: (r.acquire() is r.acquire(), r._acquire_count))
        release: Callable[[], object] = r.release  # what it returns is part of the transcript
        t("rlock release", lambda: (release(), release()))
        t("rlock over", r.release)
        sem = portalocker.BoundedSemaphore(1, name="s", directory=str(d), timeout=0.05)
        t("sem", lambda: sem.acquire() is not None)
        t("sem again", sem.acquire)
        sem2 = portalocker.BoundedSemaphore(
            1, name="s", directory=str(d), timeout=0.05, fail_when_locked=False
        )
        t("sem other", sem2.acquire)
        t("sem release", sem.release)
        f = fasteners.InterProcessLock(str(d / "fa.lock"))
        t("fasteners", lambda: (f.acquire(), f.acquire(), f.acquired))
        t("fasteners release", f.release)
        t("fasteners unheld", f.release)
        rw = fasteners.InterProcessReaderWriterLock(str(d / "rw.lock"))
        t("read", lambda: rw.acquire_read_lock())
        t("read release", rw.release_read_lock)
        t("write", lambda: rw.acquire_write_lock(blocking=False))
        t("write release", rw.release_write_lock)

        async def aio() -> Transcript:
            from filelock.asyncio import AsyncSoftFileLock, AsyncUnixFileLock

            a = Recorder()
            lk = AsyncUnixFileLock(str(d / "a.lock"))
            await a.aw("async acquire", lambda: lk.acquire())
            await a.aw("async nested", lambda: lk.acquire())
            await a.aw("async release", lambda: lk.release())
            await a.aw("async force", lambda: lk.release(force=True))
            sf = AsyncSoftFileLock(str(d / "as.lock"))
            async with sf:
                await a.aw("async soft busy", lambda: AsyncSoftFileLock(str(d / "as.lock"))
                           .acquire(blocking=False))  # fmt: skip
            return [(x[0], *(type(v).__name__ if i == 0 and len(x) == 2 else v
                             for i, v in enumerate(x[1:]))) for x in a.lines]  # fmt: skip

        t.lines += asyncio.run(aio())
        return t.lines

    return scenario


def test_file_locks_are_transparent(sink: OtlpSink, tmp_path: Path) -> None:
    compare(sink, _files_scenario(tmp_path))


def _filelock_edges_scenario(root: Path) -> Callable[[], Transcript]:
    import filelock

    def scenario() -> Transcript:
        d = root / "edges"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        t = Recorder()
        lock = filelock.FileLock(str(d / "w.lock"))
        # the deprecated spelling's warning names the caller's line, as bare
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
            lock.acquire(poll_intervall=0.01)
        lock.release()
        t("warning", lambda: [(w.filename == __file__, w.lineno - line) for w in caught
                              if "poll_intervall" in str(w.message)])  # fmt: skip
        # a relative lock path while the working directory is gone: filelock's error
        gone, here = d / "gone", os.getcwd()
        gone.mkdir()
        os.chdir(gone)
        try:
            gone.rmdir()
            t("no cwd", lambda: filelock.FileLock("rel.lock").acquire(timeout=0))
        finally:
            os.chdir(here)
        # a task's lock released by filelock at interpreter exit once its task is gone
        # (the shim's record of the hold must not keep the finished task alive)
        script = (
            "import asyncio, sys, threading\n"
            "from filelock import AsyncSoftFileLock\n"
            "loop = asyncio.new_event_loop()\n"
            "threading.Thread(target=loop.run_forever, daemon=True).start()\n"
            "lock = AsyncSoftFileLock(sys.argv[1], loop=loop, thread_local=False)\n"
            "asyncio.run_coroutine_threadsafe(lock.acquire(), loop).result()\n"
        )
        marker = d / "exit.lock"
        env = dict(os.environ)
        if runtime.current is not None:  # the child runs under the shim too
            env["LOCKSCOPE_ENDPOINT"] = runtime.current.config.endpoint
        cmd = [sys.executable, "-c", script, str(marker)]
        if runtime.current is not None:
            cmd = [sys.executable, "-m", "lockscope", "instrument", "--", *cmd]
        t("exit", lambda: subprocess.run(cmd, env=env, check=True, timeout=60).returncode)
        t("marker gone", marker.exists)
        return t.lines

    return scenario


def test_filelock_edge_cases_are_transparent(sink: OtlpSink, tmp_path: Path) -> None:
    compare(sink, _filelock_edges_scenario(tmp_path))


def _redis_scenario(url: str) -> Callable[[], Transcript]:
    def scenario() -> Transcript:
        import redis
        import redis_lock
        from pottery import Redlock

        r = redis.Redis.from_url(url)
        r.flushdb()
        t = Recorder()
        lk = redis_lock.Lock(r, "t", expire=30, id="me")
        t("acquire", lk.acquire)
        t("again", lk.acquire)
        t("busy", lambda: redis_lock.Lock(r, "t").acquire(blocking=False))
        t("timeout", lambda: redis_lock.Lock(r, "t", expire=30).acquire(timeout=1))
        t("bad", lambda: lk.acquire(blocking=False, timeout=1))
        t("extend", lambda: lk.extend(10))
        t("ttl", lambda: 0 < r.ttl("lock:t") <= 10)
        t("release", lk.release)
        t("release again", lk.release)
        t("extend unheld", lk.extend)
        t("reset", lambda: (redis_lock.Lock(r, "u").acquire(), redis_lock.Lock(r, "u").reset(),
                            r.exists("lock:u")))  # fmt: skip
        t("reset_all", lambda: (redis_lock.Lock(r, "v").acquire(), redis_lock.reset_all(r),
                                r.exists("lock:v")))  # fmt: skip
        p = Redlock(key="p", masters={r}, auto_release_time=5)
        t("pottery", lambda: p.acquire())
        t("pottery busy", lambda: Redlock(key="p", masters={r}).acquire(blocking=False))
        t("pottery timeout", lambda: Redlock(key="p", masters={r}).acquire(timeout=0.3))
        t("pottery extend", p.extend)
        t("pottery release", p.release)
        t("pottery release again", p.release)
        with Redlock(key="q", masters={r}) as q:
            t("pottery cm", lambda: bool(q.locked()))
        t("keys", lambda: sorted(r.keys()))
        r.close()
        # pottery's messages show object addresses: compare the exception types there.
        return [x[:3] if len(x) == 4 and " at 0x" in x[3] else x for x in t.lines]

    return scenario


def test_redis_libraries_are_transparent(sink: OtlpSink, redis_url: str) -> None:
    compare(sink, _redis_scenario(redis_url))


def _pools_scenario(postgres: Any) -> Callable[[], Transcript]:
    def scenario() -> Transcript:
        import sqlalchemy
        from psycopg_pool import ConnectionPool
        from sqlalchemy.pool import QueuePool

        t = Recorder()
        url = postgres.url.replace("postgresql://", "postgresql+psycopg://")
        engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
        conn = engine.connect()
        t("select", lambda: conn.execute(sqlalchemy.text("select 1")).scalar())
        t("second", lambda: engine.connect())
        conn.close()
        t("again", lambda: engine.connect().execute(sqlalchemy.text("select 2")).scalar())
        t("status", lambda: cast(QueuePool, engine.pool).checkedout())  # pool_size: a QueuePool
        engine.dispose()
        with ConnectionPool(postgres.dsn, min_size=1, max_size=1, timeout=0.2) as pool:
            c = pool.getconn()
            t("pg busy", lambda: pool.getconn(timeout=0.1))
            pool.putconn(c)
            with pool.connection() as c2:
                t("pg", lambda: c2.execute("select 3").fetchone())
            t("pg stats", lambda: pool.get_stats()["requests_num"])

        async def aio() -> Any:
            from sqlalchemy.ext.asyncio import create_async_engine

            e = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
            async with e.connect() as ac:
                v = (await ac.execute(sqlalchemy.text("select 4"))).scalar()
                try:
                    await e.connect().start()
                    busy = "none"
                except sqlalchemy.exc.TimeoutError as exc:
                    busy = type(exc).__name__
            await e.dispose()
            return v, busy

        t("async", lambda: asyncio.run(aio()))
        return t.lines

    return scenario


def test_pools_are_transparent(sink: OtlpSink, postgres_server: Any) -> None:
    compare(sink, _pools_scenario(postgres_server))


def _executor_scenario() -> Transcript:
    async def body() -> Transcript:
        t = Recorder()
        loop = asyncio.get_running_loop()
        await t.aw("default", loop.run_in_executor(None, _square, 3))
        await t.aw("to_thread", asyncio.to_thread(_square, 4))
        await t.aw("raises", loop.run_in_executor(None, int, "x"))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            await t.aw("thread pool", loop.run_in_executor(pool, _square, 5))
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            await t.aw("process pool", loop.run_in_executor(pool, _square, 6))
        import anyio.to_thread

        await t.aw("anyio", anyio.to_thread.run_sync(_square, 7))
        t("ident differs", lambda: True)
        return t.lines

    return asyncio.run(body())


def test_executors_are_transparent(sink: OtlpSink, redis_url: str) -> None:
    import redis

    def scenario() -> Transcript:
        lines = _executor_scenario()
        lock = redis.Redis.from_url(redis_url).lock("t:exec", timeout=5)  # something recorded
        lines.append(("lock", lock.acquire(), lock.release()))
        return lines

    compare(sink, scenario)
