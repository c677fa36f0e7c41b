"""An instrumented app for tests/test_db_watch.py, driven line by line on stdin.

``python db_worker.py DRIVER DSN`` instruments itself (as an app would), connects with
DRIVER (psycopg, psycopg2, pymysql, asyncpg, psycopg_async) and runs commands, one per line,
or with one of the other ways those drivers run a statement: ``psycopg_named`` and
``psycopg_async_named`` (SELECTs through a psycopg 3 server-side cursor), ``psycopg2_named``
(through a psycopg2 named cursor), ``psycopg2_dict`` (``connection_factory=
DictConnection``), ``psycopg2_custom`` (the app's own connection subclass choosing
``RealDictCursor``), ``asyncpg_prepared`` (``conn.prepare()`` then ``fetchval`` or
``executemany`` on the statement), ``asyncpg_cursor`` (SELECTs through ``conn.cursor()`` in
a transaction); each answering with ``ok <result>`` or ``error <exception>``; all
commands run in
answering each with ``ok <result>`` or ``error <exception>``; all commands run in
order on one thread (the actor), so a test can send one that blocks and read its answer
later.

Commands: ``sql <statement>``, ``begin``, ``commit``, ``redis_lock <url> <name>``,
``redis_acquire <timeout>``, ``redis_release``, ``pid`` (the backend id), ``rowtype``
(the class of a row the driver returns: the app's choice must hold under the shim).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sys
import threading
from typing import Any

from lockscope.instrumentation import LockscopeInstrumentor

LockscopeInstrumentor().instrument()

import redis  # noqa: E402  (after instrument(), as `lockscope instrument` would)
import redis.asyncio  # noqa: E402

DRIVER, DSN = sys.argv[1], sys.argv[2]
out_lock = threading.Lock()


def say(text: str) -> None:
    with out_lock:
        print(text, flush=True)


class Sync:
    def __init__(self) -> None:
        self.named = 0
        if DRIVER in ("psycopg", "psycopg_named"):
            import psycopg

            self.conn: Any = psycopg.connect(DSN, autocommit=True)
            self.pid = self.conn.info.backend_pid
        elif DRIVER.startswith("psycopg2"):
            import psycopg2
            import psycopg2.extensions
            import psycopg2.extras

            class AppConnection(psycopg2.extensions.connection):  # type: ignore[misc]
                def cursor(self, *args: Any, **kwargs: Any) -> Any:
                    kwargs.setdefault("cursor_factory", psycopg2.extras.RealDictCursor)
                    return super().cursor(*args, **kwargs)

            factory = {
                "psycopg2_dict": psycopg2.extras.DictConnection,
                "psycopg2_custom": AppConnection,
            }.get(DRIVER)
            self.conn = psycopg2.connect(DSN, connection_factory=factory)
            self.conn.autocommit = True
            self.pid = self.conn.info.backend_pid
        else:
            from urllib.parse import urlsplit

            import pymysql

            u = urlsplit(DSN)
            self.conn = pymysql.connect(
                host=u.hostname, port=u.port, user=u.username, password=u.password or "",
                database=u.path.lstrip("/"), autocommit=True,
            )  # fmt: skip
            self.pid = self.conn.thread_id()

    def sql(self, statement: str) -> Any:
        if DRIVER.endswith("_named") and statement.upper().startswith("SELECT"):
            # Outside a transaction (autocommit) a server-side cursor must be WITH HOLD:
            # the server then runs the whole query in execute() (DECLARE).
            idle = self.conn.info.transaction_status == 0
            self.named += 1
            with self.conn.cursor(name=f"worker_{self.named}", withhold=idle) as cur:
                cur.execute(statement)
                return cur.fetchall()
        cur = self.conn.cursor()
        cur.execute(statement)
        try:
            return cur.fetchall()
        except Exception:
            return None

    def begin(self) -> None:
        self.sql("BEGIN")

    def commit(self) -> None:
        self.sql("COMMIT")

    def rowtype(self) -> str:
        cur = self.conn.cursor()
        cur.execute("SELECT 1 AS one")
        return type(cur.fetchone()).__name__


class Async:
    """Every command's coroutine runs inside one long-lived task (the actor), as an asyncio
    app's request handler would run its lock and its statements."""

    def __init__(self) -> None:
        self.named = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        ready: concurrent.futures.Future[asyncio.Queue[Any]] = concurrent.futures.Future()

        async def actor_task() -> None:
            jobs: asyncio.Queue[Any] = asyncio.Queue()
            ready.set_result(jobs)
            while True:
                make, done = await jobs.get()
                try:
                    done.set_result(await make())
                except Exception as exc:
                    done.set_exception(exc)

        self._task = asyncio.run_coroutine_threadsafe(actor_task(), self.loop)
        self.jobs = ready.result()
        self.conn: Any = self.run(self._connect)

    async def _connect(self) -> Any:
        if DRIVER.startswith("asyncpg"):
            import asyncpg

            conn = await asyncpg.connect(DSN)
            self.pid = conn.get_server_pid()
            return conn
        import psycopg

        conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
        self.pid = conn.info.backend_pid
        return conn

    def run(self, make: Any) -> Any:
        """``await make()`` in the actor task; its result."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self.jobs.put_nowait, (make, done))
        return done.result()

    async def _sql(self, statement: str) -> Any:
        word = statement.split()[0].upper()
        if DRIVER == "asyncpg_prepared" and word not in ("BEGIN", "COMMIT", "ROLLBACK"):
            stmt = await self.conn.prepare(statement)
            if word == "SELECT":
                return await stmt.fetchval()
            return await stmt.executemany([()])
        if DRIVER == "asyncpg_cursor" and word == "SELECT":
            if self.conn.is_in_transaction():
                return [tuple(r) async for r in self.conn.cursor(statement)]
            async with self.conn.transaction():  # asyncpg's cursors need one
                return [tuple(r) async for r in self.conn.cursor(statement)]
        if DRIVER.startswith("asyncpg"):
            return await self.conn.fetch(statement)
        if DRIVER == "psycopg_async_named" and word == "SELECT":
            idle = self.conn.info.transaction_status == 0
            self.named += 1
            async with self.conn.cursor(name=f"worker_{self.named}", withhold=idle) as cur:
                await cur.execute(statement)
                return await cur.fetchall()
        cur = await self.conn.execute(statement)
        try:
            return await cur.fetchall()
        except Exception:
            return None

    def sql(self, statement: str) -> Any:
        return self.run(lambda: self._sql(statement))

    def begin(self) -> None:
        self.sql("BEGIN")

    def commit(self) -> None:
        self.sql("COMMIT")

    def rowtype(self) -> str:
        return type(self.run(lambda: self.conn.fetchrow("SELECT 1 AS one"))).__name__


db: Sync | Async = Async() if DRIVER.startswith(("asyncpg", "psycopg_async")) else Sync()
lock: Any = None


def run(line: str) -> Any:
    global lock
    cmd, _, rest = line.partition(" ")
    if cmd == "sql":
        return db.sql(rest)
    if cmd == "begin":
        return db.begin()
    if cmd == "commit":
        return db.commit()
    if cmd == "pid":
        return db.pid
    if cmd == "rowtype":
        return db.rowtype()
    if cmd == "redis_lock":
        url, name = rest.split()
        if isinstance(db, Async):  # redis.asyncio's lock, taken by the actor task
            lock = redis.asyncio.Redis.from_url(url).lock(name, timeout=60)
        else:
            lock = redis.Redis.from_url(url).lock(name, timeout=60)
        return None
    if cmd == "redis_acquire":
        if isinstance(db, Async):
            return db.run(lambda: lock.acquire(blocking_timeout=float(rest or 30)))
        return lock.acquire(blocking_timeout=float(rest or 30))
    if cmd == "redis_release":
        if isinstance(db, Async):
            return db.run(lock.release)
        return lock.release()
    raise ValueError(f"unknown command {cmd!r}")


def answer(line: str) -> None:
    try:
        say(f"ok {run(line)!r}")
    except Exception as exc:
        say(f"error {type(exc).__name__}: {' '.join(str(exc).split())}")  # one line


# Every command runs on one actor thread, in order (so the thread that holds a lock is the
# one that then blocks in a statement); stdin is read on the main thread.
commands: queue.Queue[str] = queue.Queue()


def actor() -> None:
    while True:
        answer(commands.get())


threading.Thread(target=actor, name="actor", daemon=True).start()
say("ready")
for raw in sys.stdin:
    if raw.strip():
        commands.put(raw.strip())
