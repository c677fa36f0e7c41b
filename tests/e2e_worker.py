"""An ordinary app process for tests/test_e2e_detection.py, run under the shim.

Started as ``python e2e_worker.py`` (it instruments itself first, as an app would, with
``LockscopeInstrumentor().instrument(threading=True)``) or as ``lockscope instrument
--threading -- python e2e_worker.py`` with ``E2E_SELF_INSTRUMENT=0``.  The shim reads its
endpoint, heartbeat and reporting threshold from the environment the test gives it.

The test drives it with one JSON command per line on stdin; each command runs on the
thread of its ``actor`` (created on first use), so one process can hold a lock on one
thread while another thread waits.  Replies are JSON lines on stdout carrying the
command's ``id``:

``{"op": "acquire", "kind": K, "name": N, "key": H, "timeout": T, "ttl": L, ...}``
    ``waiting`` (with ``t``: wall time just before the acquire call), then ``acquired``,
    ``timeout``, ``cancelled`` or ``error``.  ``K`` is ``redis`` (redis-py ``Lock``),
    ``rlock`` (lockscope ``RedisLock``), ``kazoo`` / ``kazoo_read`` / ``kazoo_write``
    (kazoo recipes), ``zk`` (lockscope ``ZooKeeperLock``), ``db`` (lockscope
    ``DatabaseLock``) or ``thread`` (a ``threading.Lock`` of this module, one per name).
    The lock object is kept under the handle ``H`` (a new object per command).
``{"op": "release", "key": H}``
    ``released``, ``lost`` or ``error``.
``{"op": "cancel", "key": H}`` (runs on the command thread)
    cancels a blocked kazoo acquire (kazoo's ``Lock.cancel``): the acquire gives up.
``{"op": "contend", "kind": K, "names": [...], "threads": n, "iterations": m, ...}``
    (``K`` may be ``mixed``: kazoo for names starting with ``/``, else redis-py)
    ``n`` threads each take all ``names`` in the given order ``m`` times (every
    ``long_every``-th hold lasts ``long_hold`` seconds), releasing in reverse; ``done``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if os.environ.get("E2E_SELF_INSTRUMENT", "1") == "1":
    from lockscope.instrumentation import LockscopeInstrumentor

    LockscopeInstrumentor().instrument(threading=True)

import redis  # after the shim: the library is used once it is in place

_clients: dict[str, Any] = {}
_handles: dict[str, Any] = {}
_thread_locks: dict[str, Any] = {}


def say(cid: Any, event: str, **fields: Any) -> None:
    """One reply line (a single write: lines from several threads never interleave)."""
    line = json.dumps({"id": cid, "event": event, "pid": os.getpid(), **fields}) + "\n"
    os.write(1, line.encode())


def redis_client(url: str) -> Any:
    key = "redis:" + url
    if key not in _clients:
        _clients[key] = redis.Redis.from_url(url)
    return _clients[key]


def kazoo_client(hosts: str) -> Any:
    key = "zk:" + hosts
    if key not in _clients:
        from kazoo.client import KazooClient

        client = KazooClient(hosts=hosts, timeout=float(os.environ.get("E2E_ZK_SESSION", "4")))
        client.start(timeout=30)
        _clients[key] = client
    return _clients[key]


def make_lock(cmd: dict[str, Any]) -> tuple[Any, Callable[[], bool]]:
    """The lock object of ``cmd`` and a function doing its (possibly timed) acquire."""
    kind, name = cmd["kind"], cmd["name"]
    timeout = cmd.get("timeout")
    ttl = float(cmd.get("ttl", 60))
    if kind == "redis":
        lock = redis_client(cmd["url"]).lock(name, timeout=ttl)
        return lock, lambda: bool(lock.acquire(blocking_timeout=timeout))
    if kind == "rlock":
        from lockscope.locks.redis import RedisLock

        lock = RedisLock(name, redis_client(cmd["url"]), ttl=ttl)
        return lock, lambda: lock.acquire(timeout=timeout)
    if kind in ("kazoo", "kazoo_read", "kazoo_write"):
        client = kazoo_client(cmd["hosts"])
        factory = {"kazoo": client.Lock, "kazoo_read": client.ReadLock}.get(kind, client.WriteLock)
        lock = factory(name, f"e2e-{os.getpid()}")
        return lock, lambda: bool(lock.acquire(timeout=timeout))
    if kind == "zk":
        from lockscope.locks.zookeeper import ZooKeeperLock

        lock = ZooKeeperLock(kazoo_client(cmd["hosts"]), name)
        return lock, lambda: lock.acquire(timeout=timeout)
    if kind == "db":
        from lockscope.locks.database import DatabaseLock

        lock = DatabaseLock(name, cmd["url"], ttl=ttl)
        return lock, lambda: lock.acquire(timeout=timeout)
    if kind == "thread":
        if name not in _thread_locks:
            _thread_locks[name] = threading.Lock()  # app code: the shim traces it
        lock = _thread_locks[name]
        return lock, lambda: lock.acquire(timeout=-1 if timeout is None else timeout)
    raise ValueError(f"unknown kind {kind!r}")


def acquire(cmd: dict[str, Any]) -> None:
    cid = cmd["id"]
    lock, do_acquire = make_lock(cmd)
    _handles[cmd["key"]] = lock
    say(cid, "waiting", t=time.time())
    try:
        got = do_acquire()
    except Exception as exc:
        outcome = {"LockTimeout": "timeout", "CancelledError": "cancelled"}.get(
            type(exc).__name__, "error"
        )
        say(cid, outcome, error=repr(exc), t=time.time())
        return
    say(cid, "acquired" if got else "timeout", t=time.time())


def release(cmd: dict[str, Any]) -> None:
    lock = _handles.pop(cmd["key"])
    try:
        lock.release()
    except Exception as exc:
        lost = "NotOwned" in type(exc).__name__ or "Lost" in type(exc).__name__
        say(cmd["id"], "lost" if lost else "error", error=repr(exc))
        return
    say(cmd["id"], "released")


def contend(cmd: dict[str, Any]) -> None:
    """Heavy contention in one consistent lock order: never a deadlock."""
    long_every, long_hold = int(cmd.get("long_every", 5)), float(cmd.get("long_hold", 0.3))
    counts = {"ops": 0, "timeouts": 0}

    def loop(t: int) -> None:
        for i in range(int(cmd["iterations"])):
            taken = []
            for name in cmd["names"]:
                kind = cmd["kind"]
                if kind == "mixed":  # ZooKeeper paths and Redis keys in one order
                    kind = "kazoo" if name.startswith("/") else "redis"
                lock, do_acquire = make_lock({**cmd, "kind": kind, "name": name, "timeout": 60})
                if do_acquire():
                    taken.append(lock)
                else:
                    counts["timeouts"] += 1
            if (i + t) % long_every == 0:
                time.sleep(long_hold)  # the app's work while holding: waits get reported
            for lock in reversed(taken):
                lock.release()
            counts["ops"] += 1

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(int(cmd["threads"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    say(cmd["id"], "done", **counts)


OPS: dict[str, Callable[[dict[str, Any]], None]] = {
    "acquire": acquire,
    "release": release,
    "contend": contend,
}


def actor_loop(inbox: queue.Queue[dict[str, Any]]) -> None:
    while True:
        cmd = inbox.get()
        try:
            OPS[cmd["op"]](cmd)
        except Exception as exc:
            say(cmd.get("id"), "error", error=repr(exc))


def main() -> None:
    actors: dict[str, queue.Queue[dict[str, Any]]] = {}
    say(None, "ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        if cmd["op"] == "cancel":
            _handles[cmd["key"]].cancel()
            continue
        inbox = actors.get(cmd["actor"])
        if inbox is None:
            inbox = actors[cmd["actor"]] = queue.Queue()
            threading.Thread(
                target=actor_loop, args=(inbox,), name=f"actor-{cmd['actor']}", daemon=True
            ).start()
        inbox.put(cmd)
    os._exit(0)  # blocked acquires must not keep the process alive


if __name__ == "__main__":
    main()
