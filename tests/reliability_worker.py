"""An ordinary app process for the reliability tests and the soak, run under the shim:
``python -m lockscope instrument -- python reliability_worker.py MODE JSON``.

Modes (JSON keys in brackets):

``deadlock`` [url, first, second, clock_ahead, step_after]
    take redis lock ``first``, print ``holding``, wait for ``go`` on stdin, then block on
    ``second`` until killed (with a partner doing the opposite order: a deadlock).  With
    ``clock_ahead``, this host's clock runs that many seconds fast from the start and is
    stepped back to the true time ``step_after`` seconds later (an NTP step, a VM
    restore); the shim sees each change at once (it re-reads the clock every 10 s).
``hold`` [url, name, ttl]
    take redis lock ``name`` (lease ``ttl``; null: no lease), print ``holding``, wait for
    ``release`` on stdin, release, print what happened (``released`` or ``lost``).
``order`` [url, first, second]
    take redis lock ``first``, then ``second``, release both, print ``done``, wait on stdin
    (a lock-order pair, sent once).
``zk_hold`` [hosts, path, timeout]
    take a kazoo ``Lock`` (session timeout ``timeout``), print ``holding``; print ``lost``
    as soon as the session is lost; on ``release`` release unless lost, print ``done``.
``skewed`` [url, name, skew, rounds, hold]
    this host's clock is ``skew`` seconds off (``time.time``/``time_ns`` patched before
    the shim starts, which this mode starts itself): wait for ``go``, then ``rounds``
    times take redis lock ``name``, hold it ``hold`` seconds, release; print ``done``.
``soak`` [url, ops, threads, locks, seed, long_every]
    ``threads`` threads doing ``ops`` lock operations in total: take one or two of
    ``locks`` redis locks *in sorted order* (so no deadlock is possible), hold briefly
    (every ``long_every``-th hold lasts 30-80 ms, so waits and holds pass report_after),
    release in reverse order; print a JSON summary (counts, and the locks found lost on
    release); connection errors (server down) are counted and the loop goes on.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

import redis


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _clock_step(ahead: float, step_after: float) -> None:
    """Run the wall clock ``ahead`` seconds fast, then step it back after ``step_after``."""
    from lockscope.instrumentation import runtime

    real_time_ns, real_time = time.time_ns, time.time
    shim = runtime.current
    offset = int(ahead * 1e9)

    def fast_ns() -> int:
        return real_time_ns() + offset

    time.time_ns = fast_ns
    time.time = lambda: fast_ns() / 1e9
    if shim is not None:
        shim.recorder.sync_clock()

    def step_back() -> None:
        time.time_ns, time.time = real_time_ns, real_time
        if shim is not None:
            shim.recorder.sync_clock()
        say("stepped")

    timer = threading.Timer(step_after, step_back)
    timer.daemon = True
    timer.start()


def deadlock(cfg: dict[str, Any]) -> None:
    if cfg.get("clock_ahead"):
        _clock_step(float(cfg["clock_ahead"]), float(cfg.get("step_after", 1.0)))
    client = redis.Redis.from_url(cfg["url"])
    first = client.lock(cfg["first"], timeout=600)
    first.acquire()
    say("holding", lock=cfg["first"])
    sys.stdin.readline()
    client.lock(cfg["second"], timeout=600).acquire(blocking_timeout=600)
    say("acquired", lock=cfg["second"])  # never, while the partner lives


def order(cfg: dict[str, Any]) -> None:
    client = redis.Redis.from_url(cfg["url"])
    with client.lock(cfg["first"], timeout=30), client.lock(cfg["second"], timeout=30):
        pass
    say("done")
    sys.stdin.readline()


def hold(cfg: dict[str, Any]) -> None:
    client = redis.Redis.from_url(cfg["url"], socket_timeout=5)
    ttl = cfg.get("ttl", 60)
    lock = client.lock(cfg["name"], timeout=None if ttl is None else float(ttl))
    lock.acquire()
    say("holding", lock=cfg["name"])
    sys.stdin.readline()
    while True:
        try:
            lock.release()
        except redis.exceptions.LockNotOwnedError:
            say("lost")
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)  # the server is still restarting
            continue
        else:
            say("released")
        return


def zk_hold(cfg: dict[str, Any]) -> None:
    from kazoo.client import KazooClient, KazooState

    client = KazooClient(hosts=cfg["hosts"], timeout=float(cfg.get("timeout", 4)))
    lost = threading.Event()

    def listener(state: Any) -> None:
        if state == KazooState.LOST and not lost.is_set():
            lost.set()
            say("lost")

    client.add_listener(listener)
    client.start(timeout=30)
    lock = client.Lock(cfg["path"], "worker")
    lock.acquire(timeout=60)
    say("holding", path=cfg["path"])
    sys.stdin.readline()
    if not lost.is_set():
        lock.release()
        say("released")
    client.stop()
    say("done")


def skewed(cfg: dict[str, Any]) -> None:
    skew_ns = int(float(cfg["skew"]) * 1e9)
    real_time_ns, real_time = time.time_ns, time.time
    time.time_ns = lambda: real_time_ns() + skew_ns
    time.time = lambda: real_time() + skew_ns / 1e9
    from lockscope.instrumentation import LockscopeInstrumentor

    LockscopeInstrumentor().instrument()
    client = redis.Redis.from_url(cfg["url"])
    say("ready")
    sys.stdin.readline()
    for _ in range(int(cfg.get("rounds", 5))):
        lock = client.lock(cfg["name"], timeout=30)
        lock.acquire(blocking_timeout=60)
        time.sleep(float(cfg.get("hold", 0.3)))  # the app's work while holding
        lock.release()
    say("done")


def soak(cfg: dict[str, Any]) -> None:
    client = redis.Redis.from_url(cfg["url"])
    names = [f"soak:{chr(97 + i)}" for i in range(int(cfg.get("locks", 6)))]
    ops, threads = int(cfg["ops"]), int(cfg.get("threads", 2))
    long_every = int(cfg.get("long_every", 10))
    counts = {"ops": 0, "long_holds": 0, "timeouts": 0, "errors": 0}
    lost: list[str] = []
    counts_lock = threading.Lock()

    def worker(n: int, seed: int) -> None:
        rng = random.Random(seed)
        for i in range(n):
            chosen = sorted(rng.sample(names, rng.choice((1, 1, 2))))
            locks = [client.lock(name, timeout=30) for name in chosen]
            taken = []
            errors = timeouts = 0
            for lock in locks:
                try:
                    if lock.acquire(blocking_timeout=20):
                        taken.append(lock)
                    else:
                        timeouts += 1
                except redis.exceptions.ConnectionError:
                    errors += 1  # the server is down: the app carries on without it
            long_hold = i % long_every == 0
            if long_hold:
                time.sleep(rng.uniform(0.03, 0.08))  # the app's work while holding
            for lock in reversed(taken):
                try:
                    lock.release()
                except redis.exceptions.LockNotOwnedError:
                    with counts_lock:
                        lost.append(str(lock.name))
                except redis.exceptions.ConnectionError:
                    errors += 1
            if errors:
                time.sleep(0.05)
            with counts_lock:
                counts["ops"] += 1
                counts["long_holds"] += long_hold
                counts["timeouts"] += timeouts
                counts["errors"] += errors

    seed = int(cfg.get("seed", 0))
    pool = [
        threading.Thread(target=worker, args=(ops // threads, seed * 100 + t))
        for t in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    say("done", lost=sorted(set(lost)), **counts)


if __name__ == "__main__":
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    modes = {
        "deadlock": deadlock,
        "hold": hold,
        "zk_hold": zk_hold,
        "skewed": skewed,
        "order": order,
    }
    {**modes, "soak": soak}[mode](config)
