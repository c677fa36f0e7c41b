"""One app process of benchmarks/e2e_latency.py, run under ``lockscope instrument``.

``python _e2e_worker.py CFG_JSON``; CFG: ``redis`` (URL), ``zk`` (hosts).  Commands on stdin,
one JSON object a line; answers on stdout, one JSON object a line:

``{"op": "hold", "lock": L}``
    take lock L (``L = {"system": "redis"|"zk"|"zk_read"|"zk_write", "name": ...}``),
    answer ``{"event": "holding"}``.
``{"op": "wait", "lock": L, "delay": s, "timeout": s}``
    after ``delay`` seconds, answer ``{"event": "waiting", "t": time.time()}`` and block on
    L for at most ``timeout`` seconds (the ring's deadlock), then release everything held
    and answer ``{"event": "done"}``.
``{"op": "release"}``
    release everything held, answer ``{"event": "released"}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

import redis
from kazoo.client import KazooClient


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.redis = redis.Redis.from_url(cfg["redis"]) if cfg.get("redis") else None
        self.zk: KazooClient | None = None
        if cfg.get("zk"):
            self.zk = KazooClient(hosts=cfg["zk"], timeout=10)
            self.zk.start(timeout=30)
        self.held: list[Any] = []

    def lock(self, spec: dict[str, Any]) -> Any:
        system, name = spec["system"], spec["name"]
        if system == "redis":
            assert self.redis is not None
            return self.redis.lock(name, timeout=120)
        assert self.zk is not None
        path = "/bench/" + name.replace(":", "_")
        if system == "zk":
            return self.zk.Lock(path)
        if system == "zk_read":
            return self.zk.ReadLock(path)
        return self.zk.WriteLock(path)

    def acquire(self, lock: Any, timeout: float | None) -> bool:
        try:
            if isinstance(lock, redis.lock.Lock):
                return bool(lock.acquire(blocking_timeout=timeout))
            return bool(lock.acquire(timeout=timeout))
        except Exception:  # kazoo raises LockTimeout
            return False

    def release_all(self) -> None:
        for lock in reversed(self.held):
            with contextlib.suppress(Exception):  # a lease that ran out: fine here
                lock.release()
        self.held.clear()

    def run(self) -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "hold":
                lock = self.lock(cmd["lock"])
                self.acquire(lock, 30)
                self.held.append(lock)
                say("holding")
            elif op == "wait":
                lock = self.lock(cmd["lock"])
                time.sleep(float(cmd.get("delay", 0)))
                say("waiting", t=time.time())
                got = self.acquire(lock, float(cmd.get("timeout", 3)))
                if got:
                    self.held.append(lock)
                self.release_all()
                say("done", acquired=got)
            elif op == "release":
                self.release_all()
                say("released")


if __name__ == "__main__":
    threading.current_thread().name = "bench-main"
    Worker(json.loads(sys.argv[1])).run()
