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
    ``to_thread``), replying ``acquired``/``timeout`` (after ``timeout`` seconds).
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

    try:
        asyncio.run(task())
    except Exception as exc:
        base.say(cmd["id"], "timeout" if "Timeout" in type(exc).__name__ else "error",
                 error=repr(exc))  # fmt: skip


base.make_lock = make_lock
base.OPS["executor_ring"] = executor_ring

if __name__ == "__main__":
    base.main()
