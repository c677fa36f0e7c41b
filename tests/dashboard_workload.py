"""An instrumented app for tests/test_dashboards.py: run as
``lockscope instrument -- python dashboard_workload.py REDIS_URL``.

With real Redis locks it produces everything the dashboards show:

- contention: four threads share three redis-py locks (``jobs:N``), some acquires time out;
- errors: acquires against a Redis that is not there (``BackendUnavailable``/ConnectionError);
- a deadlock: two threads take ``orders:1`` and ``payments:9`` in opposite orders and wait
  forever;
- a lock-order inversion: ``cart:N`` then ``stock:N``, later the other way round;
- a mutual-exclusion violation and a lost lock: a lockscope ``RedisLock`` with a short lease
  is held past its lease while a second thread takes it;
- a stale holder: ``reports:daily`` held far longer than the agent's ``max_hold``.

Prints ``ready`` once the deadlock is set up, then runs until stdin closes.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time

import redis

from lockscope.errors import LockError
from lockscope.locks.redis import RedisLock

URL = sys.argv[1]
client = redis.Redis.from_url(URL)
stop = threading.Event()


def contention(i: int) -> None:
    rnd = random.Random(i)
    while not stop.is_set():
        lock = client.lock(f"jobs:{rnd.randrange(3)}", timeout=5, sleep=0.005)
        if lock.acquire(blocking_timeout=0.25):
            time.sleep(rnd.uniform(0.01, 0.15))
            lock.release()


def errors() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    while not stop.is_set():
        with contextlib.suppress(redis.RedisError):
            dead.lock("payments:{id}-gateway", timeout=5).acquire(blocking_timeout=0.1)
        time.sleep(0.05)


def inversion() -> None:
    """cart then stock, later stock then cart: no deadlock (one thread), but the order
    graph has a cycle."""
    for first, second in (("cart:1", "stock:1"), ("stock:2", "cart:2")):
        with client.lock(first, timeout=5), client.lock(second, timeout=5):
            time.sleep(0.01)


both_hold = threading.Barrier(2)


def deadlocked(first: str, second: str) -> None:
    held = client.lock(first, timeout=600)
    held.acquire()
    both_hold.wait()
    client.lock(second, timeout=600).acquire()  # never returns: the other holds it


def violation() -> None:
    first = RedisLock("ledger", URL, ttl=0.4, blocking_timeout=5)
    first.acquire()
    time.sleep(1.5)  # well past the lease: the second thread holds it meanwhile
    with contextlib.suppress(LockError):  # the lock was lost, as intended
        first.release()


def second_holder() -> None:
    time.sleep(0.6)
    second = RedisLock("ledger", URL, ttl=10, blocking_timeout=5)
    second.acquire()
    time.sleep(1.5)
    second.release()


def stale() -> None:
    lock = client.lock("reports:daily", timeout=600)
    lock.acquire()
    stop.wait()


def main() -> None:
    threads = [threading.Thread(target=contention, args=(i,), daemon=True) for i in range(4)]
    threads += [
        threading.Thread(target=errors, daemon=True),
        threading.Thread(target=inversion, daemon=True),
        threading.Thread(target=deadlocked, args=("orders:1", "payments:9"), daemon=True),
        threading.Thread(target=deadlocked, args=("payments:9", "orders:1"), daemon=True),
        threading.Thread(target=violation, daemon=True),
        threading.Thread(target=second_holder, daemon=True),
        threading.Thread(target=stale, daemon=True),
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()


if __name__ == "__main__":
    main()
