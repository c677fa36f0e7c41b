"""An app process for tests/test_reach_detection.py: tests/e2e_worker.py (same protocol,
same self-instrumentation) plus the lock kinds of the second round's targets.

Extra ``kind`` values of the ``acquire`` command: ``filelock``, ``softfilelock`` (filelock),
``portalocker``, ``portalocker_rlock``, ``portalocker_sem`` (with ``max`` and ``dir``),
``fasteners``, ``fasteners_read``, ``fasteners_write``, ``redis_lock`` (python-redis-lock;
``expire`` optional: none means no expiry), ``pottery`` (sync Redlock).  A file lock's
``name`` is its path.

``{"op": "executor_ring", "url": U, "hosts": H, "redis_key": R, "zk_path": Z, "via": V}``
    runs an asyncio task that takes the ``redis.asyncio`` lock ``R``, replies ``holding``,
    then waits for the kazoo lock ``Z`` in a worker thread (``V``: ``run_in_executor`` or
    ``to_thread``), replying ``acquired``/``timeout`` (after ``timeout`` seconds); with
    ``"loop": "uvloop"`` the task runs on uvloop's event loop.
``{"op": "async_ring", "kind": K, "first": X, "then": Y, "timeout": T, ...}``
    an asyncio task (named ``ring-task``) takes the asyncio lock ``X`` (``K``:
    ``async_filelock`` for filelock's ``AsyncFileLock``, a path; ``aioredlock`` for
    pottery's ``AIORedlock`` with ``url``, a key), replies ``holding``, then (after the
    command ``{"op": "go", "key": H}`` for its ``key`` ``H``, on another actor) waits for
    ``Y`` of the same kind: ``acquired`` or ``timeout``.
``{"op": "async_contend", "kind": K, "names": [...], "tasks": n, "iterations": m, ...}``
    ``n`` tasks of one event loop each take all ``names`` in the given order ``m`` times
    (every ``long_every``-th hold lasts ``long_hold`` seconds); ``done`` with counts.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import e2e_worker as base

_make_lock = base.make_lock


class _ReadWrite:
    """One side of a fasteners reader-writer lock, with the ``release`` the worker calls."""

    def __init__(self, lock: Any, mode: str) -> None:
        self.lock, self.mode = lock, mode

    def acquire(self, timeout: float | None) -> bool:
        take = self.lock.acquire_read_lock if self.mode == "read" else self.lock.acquire_write_lock
        return bool(take(timeout=timeout))

    def release(self) -> None:
        if self.mode == "read":
            self.lock.release_read_lock()
        else:
            self.lock.release_write_lock()


def _false_on(errors: tuple[type[BaseException], ...], call: Any) -> Any:
    def run() -> bool:
        try:
            return bool(call())
        except errors:
            return False

    return run


def make_lock(cmd: dict[str, Any]) -> tuple[Any, Any]:
    kind, name = cmd["kind"], cmd["name"]
    timeout = cmd.get("timeout")
    wait = -1 if timeout is None else float(timeout)
    if kind in ("filelock", "softfilelock"):
        import filelock

        cls = filelock.FileLock if kind == "filelock" else filelock.SoftFileLock
        lock = cls(name)
        return lock, _false_on((filelock.Timeout,), lambda: lock.acquire(timeout=wait))
    if kind.startswith("portalocker"):
        import portalocker

        if kind == "portalocker_sem":
            porta: portalocker.BoundedSemaphore | portalocker.Lock = portalocker.BoundedSemaphore(
                int(cmd["max"]), name=name, directory=cmd["dir"], timeout=wait
            )
        else:
            porta_cls = portalocker.RLock if kind == "portalocker_rlock" else portalocker.Lock
            porta = porta_cls(name, timeout=wait, fail_when_locked=False)
        return porta, _false_on((portalocker.AlreadyLocked,), porta.acquire)
    if kind == "fasteners":
        import fasteners

        fast = fasteners.InterProcessLock(name)
        return fast, lambda: bool(fast.acquire(timeout=timeout))
    if kind in ("fasteners_read", "fasteners_write"):
        import fasteners

        rw = _ReadWrite(fasteners.InterProcessReaderWriterLock(name), kind.rpartition("_")[2])
        return rw, lambda: rw.acquire(timeout)
    if kind == "redis_lock":
        import redis_lock

        rl = redis_lock.Lock(base.redis_client(cmd["url"]), name, expire=cmd.get("expire"))
        return rl, lambda: bool(rl.acquire(timeout=int(timeout) if timeout else None))
    if kind == "pottery":
        from pottery import Redlock

        ttl = float(cmd.get("ttl", 60))
        client = base.redis_client(cmd["url"])
        redlock = Redlock(key=name, masters={client}, auto_release_time=ttl)
        return redlock, lambda: bool(redlock.acquire(timeout=wait))
    return _make_lock(cmd)


def executor_ring(cmd: dict[str, Any]) -> None:
    import redis.asyncio

    client = base.kazoo_client(cmd["hosts"])
    zk_lock = client.Lock(cmd["zk_path"], f"ring-{os.getpid()}")
    timeout = float(cmd.get("timeout", 20))

    async def task() -> None:
        this = asyncio.current_task()
        assert this is not None
        this.set_name("ring-task")
        r = redis.asyncio.Redis.from_url(cmd["url"])
        lock = r.lock(cmd["redis_key"], timeout=60)
        await lock.acquire()
        base.say(cmd["id"], "holding")
        if cmd["via"] == "to_thread":
            got = await asyncio.to_thread(zk_lock.acquire, True, timeout)
        else:
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(None, zk_lock.acquire, True, timeout)
        base.say(cmd["id"], "acquired" if got else "timeout")
        if got:
            await loop_release(zk_lock)
        await lock.release()
        await r.aclose()

    async def loop_release(lock: Any) -> None:
        await asyncio.to_thread(lock.release)

    factory = None
    if cmd.get("loop") == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(task())
    except Exception as exc:
        base.say(cmd["id"], "timeout" if "Timeout" in type(exc).__name__ else "error",
                 error=repr(exc))  # fmt: skip


class _AsyncLock:
    """An asyncio lock of kind ``async_filelock`` or ``aioredlock`` with one interface."""

    def __init__(self, cmd: dict[str, Any], name: str) -> None:
        self.kind = cmd["kind"]
        if self.kind == "async_filelock":
            import filelock

            self.lock: Any = filelock.AsyncFileLock(name)
            self.errors: tuple[type[BaseException], ...] = (filelock.Timeout,)
        else:
            import redis.asyncio
            from pottery import AIORedlock

            self.client = redis.asyncio.Redis.from_url(cmd["url"])
            self.lock = AIORedlock(key=name, masters={self.client}, auto_release_time=60)
            self.errors = ()

    async def acquire(self, timeout: float) -> bool:
        try:
            return bool(await self.lock.acquire(timeout=timeout))
        except self.errors:
            return False

    async def release(self) -> None:
        await self.lock.release()

    async def close(self) -> None:
        if self.kind == "aioredlock":
            await self.client.aclose()


_go: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}


def go(cmd: dict[str, Any]) -> None:
    loop, event = _go.pop(cmd["key"])
    loop.call_soon_threadsafe(event.set)
    base.say(cmd["id"], "went")


def async_ring(cmd: dict[str, Any]) -> None:
    timeout = float(cmd.get("timeout", 20))

    async def task() -> None:
        this = asyncio.current_task()
        assert this is not None
        this.set_name("ring-task")
        first, then = _AsyncLock(cmd, cmd["first"]), _AsyncLock(cmd, cmd["then"])
        if not await first.acquire(timeout):
            base.say(cmd["id"], "timeout")
            return
        proceed = asyncio.Event()
        _go[cmd["key"]] = (asyncio.get_running_loop(), proceed)
        base.say(cmd["id"], "holding")
        await proceed.wait()
        got = await then.acquire(timeout)
        base.say(cmd["id"], "acquired" if got else "timeout")
        if got:
            await then.release()
        await first.release()
        await first.close()
        await then.close()

    asyncio.run(task())


def async_contend(cmd: dict[str, Any]) -> None:
    """Heavy contention of asyncio tasks in one consistent lock order: never a deadlock."""
    long_every, long_hold = int(cmd.get("long_every", 4)), float(cmd.get("long_hold", 0.3))
    counts = {"ops": 0, "timeouts": 0}

    async def one(t: int) -> None:
        for i in range(int(cmd["iterations"])):
            taken = []
            for name in cmd["names"]:
                lock = _AsyncLock(cmd, name)
                if await lock.acquire(60):
                    taken.append(lock)
                else:
                    counts["timeouts"] += 1
            if (i + t) % long_every == 0:
                await asyncio.sleep(long_hold)  # the app's work while holding
            for lock in reversed(taken):
                await lock.release()
                await lock.close()
            counts["ops"] += 1

    async def main() -> None:
        await asyncio.gather(*(one(t) for t in range(int(cmd["tasks"]))))

    asyncio.run(main())
    base.say(cmd["id"], "done", **counts)


base.make_lock = make_lock
base.OPS["executor_ring"] = executor_ring
base.OPS["async_ring"] = async_ring
base.OPS["go"] = go
base.OPS["async_contend"] = async_contend

if __name__ == "__main__":
    base.main()
