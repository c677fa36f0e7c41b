"""A short-lived instrumented process (a cron job, a CLI): takes a redis-py lock ``count``
times and exits, well within its first heartbeat; with ``leave_ttl`` it then takes one
more lock with that TTL and exits holding it.  Run under ``lockscope instrument`` as
``python short_lived_worker.py JSON``."""

from __future__ import annotations

import json
import sys

import redis


def main() -> None:
    cfg = json.loads(sys.argv[1])
    client = redis.Redis.from_url(cfg["url"])
    lock = client.lock(cfg["name"], timeout=10)
    for _ in range(int(cfg["count"])):
        assert lock.acquire(blocking_timeout=30)
        lock.release()
    if cfg.get("leave_ttl"):
        left = client.lock(cfg["leave_name"], timeout=float(cfg["leave_ttl"]))
        assert left.acquire(blocking_timeout=30)
        # Exits holding it: the key outlives the process until its TTL runs out.


if __name__ == "__main__":
    main()
