"""A separate process that uses a RedisLock or Redlock, for tests/test_redis_lock.py and
tests/test_redlock.py.  Run as ``python redis_lock_worker.py JSON``.

Modes:

``count``
    ``iterations`` times: take the lock, read a counter key, pause briefly (so that an
    unguarded read-modify-write would lose updates), write counter + 1 and append the
    fencing token to a list key, release.
``hold``
    take the lock with ``ttl``, print ``{"token", "owner"}``, wait for a line on stdin
    (the test pauses this process meanwhile and lets the lease run out), then try
    ``extend`` and ``release`` and print what each raised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import redis

from lockscope.errors import LockNotOwned
from lockscope.locks.base import Lock
from lockscope.locks.redis import RedisLock
from lockscope.locks.redlock import Redlock


def make_lock(cfg: dict[str, object]) -> Lock:
    urls = cfg["urls"]
    assert isinstance(urls, list)
    name = str(cfg["name"])
    ttl = float(cfg.get("ttl", 10.0))  # type: ignore[arg-type]
    if cfg["kind"] == "redis":
        return RedisLock(name, urls[0], ttl=ttl, retry_interval=0.005, blocking_timeout=60)
    # A generous per-server timeout: a loaded CI machine must not turn into "server down".
    return Redlock(name, urls, ttl=ttl, retry_interval=0.005, blocking_timeout=60, server_timeout=2)


def count(cfg: dict[str, object], lock: Lock) -> None:
    data = redis.Redis.from_url(str(cfg["data_url"]))
    counter, tokens = str(cfg["counter"]), str(cfg["tokens"])
    for _ in range(int(cfg["iterations"])):  # type: ignore[call-overload]
        with lock:
            value = int(data.get(counter) or 0)
            time.sleep(0.002)  # widen the race window, not synchronisation
            data.set(counter, value + 1)
            data.rpush(tokens, lock.fencing_token or 0)


def hold(lock: Lock) -> None:
    if not lock.acquire(timeout=30):
        print(json.dumps({"error": "not acquired"}), flush=True)
        return
    owner = getattr(lock, "owner", None)
    print(json.dumps({"token": lock.fencing_token, "owner": owner}), flush=True)
    sys.stdin.readline()
    results = {}
    for op in ("extend", "release"):
        try:
            if op == "extend":
                lock.extend(5)
            else:
                lock.release()
            results[op] = "ok"
        except LockNotOwned as exc:
            results[op] = type(exc).__name__
    print(json.dumps(results), flush=True)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    lock = make_lock(cfg)
    if cfg["mode"] == "count":
        count(cfg, lock)
    else:
        hold(lock)


# -- used by the tests, in the test process ------------------------------------------------


def spawn(cfg: dict[str, object]) -> subprocess.Popen[str]:
    """Start a worker process with ``cfg``."""
    return subprocess.Popen(
        [sys.executable, __file__, json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run_counting(
    kind: str, urls: list[str], data_url: str, processes: int, iterations: int
) -> tuple[int, list[int]]:
    """Run ``processes`` counting workers on one lock; return (counter, tokens in order)."""
    tag = uuid.uuid4().hex
    cfg: dict[str, object] = {
        "mode": "count",
        "kind": kind,
        "urls": urls,
        "name": f"count-{tag}",
        "data_url": data_url,
        "counter": f"counter-{tag}",
        "tokens": f"tokens-{tag}",
        "iterations": iterations,
    }
    workers = [spawn(cfg) for _ in range(processes)]
    for worker in workers:
        worker.communicate(timeout=100)
        assert worker.returncode == 0
    data = redis.Redis.from_url(data_url)
    counter = int(data.get(f"counter-{tag}") or 0)
    tokens = [int(t) for t in data.lrange(f"tokens-{tag}", 0, -1)]
    return counter, tokens


class Holder:
    """A ``hold`` worker: takes the lock, then waits for :meth:`finish`."""

    def __init__(self, kind: str, urls: list[str], name: str, ttl: float) -> None:
        self.process = spawn({"mode": "hold", "kind": kind, "urls": urls, "name": name, "ttl": ttl})
        assert self.process.stdout is not None
        reply = json.loads(self.process.stdout.readline())
        assert "token" in reply, reply
        self.token: int = reply["token"]
        self.owner: str = reply["owner"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self) -> dict[str, str]:
        """Let the worker try extend and release; return what each raised."""
        out, _ = self.process.communicate("go\n", timeout=30)
        assert self.process.returncode == 0
        return dict(json.loads(out.strip().splitlines()[-1]))

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
