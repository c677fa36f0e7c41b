"""An instrumented app for tests/test_db_watch.py, driven line by line on stdin.

``python db_worker.py DRIVER DSN`` instruments itself (as an app would), connects with
DRIVER (psycopg, psycopg2, pymysql, asyncpg, psycopg_async) and runs commands, one per line,
answering each with ``ok <result>`` or ``error <exception>``; all commands run in
order on one thread (the actor), so a test can send one that blocks and read its answer
later.

Commands: ``sql <statement>``, ``begin``, ``commit``, ``redis_lock <url> <name>``,
``redis_acquire <timeout>``, ``redis_release``, ``pid`` (the backend id).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from typing import Any

from lockscope.instrumentation import LockscopeInstrumentor

LockscopeInstrumentor().instrument()

import redis  # noqa: E402  (after instrument(), as `lockscope instrument` would)

DRIVER, DSN = sys.argv[1], sys.argv[2]
out_lock = threading.Lock()


def say(text: str) -> None:
    with out_lock:
        print(text, flush=True)


class Sync:
    def __init__(self) -> None:
        if DRIVER == "psycopg":
            import psycopg

            self.conn: Any = psycopg.connect(DSN, autocommit=True)
            self.pid = self.conn.info.backend_pid
        elif DRIVER == "psycopg2":
            import psycopg2

            self.conn = psycopg2.connect(DSN)
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


class Async:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.conn: Any = self.run(self._connect())

    async def _connect(self) -> Any:
        if DRIVER == "asyncpg":
            import asyncpg

            conn = await asyncpg.connect(DSN)
            self.pid = conn.get_server_pid()
            return conn
        import psycopg

        conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
        self.pid = conn.info.backend_pid
        return conn

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _sql(self, statement: str) -> Any:
        if DRIVER == "asyncpg":
            return await self.conn.fetch(statement)
        cur = await self.conn.execute(statement)
        try:
            return await cur.fetchall()
        except Exception:
            return None

    def sql(self, statement: str) -> Any:
        return self.run(self._sql(statement))

    def begin(self) -> None:
        self.sql("BEGIN")

    def commit(self) -> None:
        self.sql("COMMIT")


db = Async() if DRIVER in ("asyncpg", "psycopg_async") else Sync()
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
    if cmd == "redis_lock":
        url, name = rest.split()
        lock = redis.Redis.from_url(url).lock(name, timeout=60)
        return None
    if cmd == "redis_acquire":
        return lock.acquire(blocking_timeout=float(rest or 30))
    if cmd == "redis_release":
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
