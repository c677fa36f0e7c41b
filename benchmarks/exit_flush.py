"""What a short-lived process's exit costs: the shim's exit flush, timed in the process.

Each round starts a fresh interpreter that instruments itself (``LockscopeInstrumentor``),
takes a redis-py lock ``--locks`` times (optionally leaving one held), then times
``runtime.current.stop()`` - exactly what ``atexit`` runs: the last snapshot, the metrics,
the sender's flush - and prints it.  Agents: ``up`` (a real ``lockscope agent``), ``down``
(nothing listens: connection refused), ``blackhole`` (a socket that accepts and never
answers: the worst case, bounded by the flush timeout).

    .venv/bin/python benchmarks/exit_flush.py --rounds 10
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lockscope.testing.redis_server import RedisServer
from reliability_helpers import AgentProcess

CHILD = """
import json, sys, time
cfg = json.loads(sys.argv[1])
from lockscope.instrumentation import LockscopeInstrumentor
from lockscope.instrumentation import runtime
LockscopeInstrumentor().instrument()
import redis
client = redis.Redis.from_url(cfg["url"])
lock = client.lock("exit-bench", timeout=10)
for _ in range(cfg["locks"]):
    lock.acquire(); lock.release()
if cfg["leave"]:
    client.lock("exit-bench-left", timeout=5).acquire()
t0 = time.perf_counter()
runtime.current.stop()
print(json.dumps({"stop_ms": (time.perf_counter() - t0) * 1e3}))
"""


def _round(endpoint: str, url: str, locks: int, leave: bool) -> float:
    env = {
        "LOCKSCOPE_ENDPOINT": endpoint,
        "LOCKSCOPE_METRICS_EXPORT": "agent",
        "OTEL_SERVICE_NAME": "exit-bench",
        "PATH": "/usr/bin:/bin",
    }
    cfg = json.dumps({"url": url, "locks": locks, "leave": leave})
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cfg], env=env, capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["stop_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--locks", type=int, default=5)
    args = parser.parse_args()
    redis_server = RedisServer()
    redis_server.start()
    agent = AgentProcess().start()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    targets = {
        "up": agent.otlp_url,
        "down": down,
        "blackhole": f"http://127.0.0.1:{hole.getsockname()[1]}",
    }
    try:
        for name, endpoint in targets.items():
            for leave in (False, True):
                times = [
                    _round(endpoint, redis_server.url, args.locks, leave)
                    for _ in range(args.rounds)
                ]
                print(
                    f"agent {name:9} {'holding' if leave else 'released':8} "
                    f"exit flush: median {statistics.median(times):7.1f} ms, "
                    f"max {max(times):7.1f} ms ({args.rounds} rounds)"
                )
    finally:
        agent.stop()
        redis_server.stop()
        hole.close()


if __name__ == "__main__":
    main()
