"""Lock latency of an instrumented app while its agent misbehaves, vs a healthy agent.

    .venv/bin/python benchmarks/shim_faults.py [--rounds 3] [--seconds 5] [--quick]

Starts a real redis-server and a real ``lockscope agent`` process, and a fault proxy
between the shim and the agent (tests/reliability_helpers.py: FaultProxy).  For each
configuration the app runs, for ``--seconds``:

* the measured loop: a redis-py ``Lock`` acquire+release on its own key, back to back;
* background traffic that keeps the shim's sender busy: four threads taking a shared redis
  lock and holding it 20 ms (so holds and waits pass ``report_after`` = 10 ms and are
  reported), heartbeats every 50 ms.

Configurations (alternated round by round so drift on a shared machine hits all alike):
``healthy`` (proxy forwards to the agent), ``down`` (connection refused), ``black_hole``
(the proxy reads requests and never answers; the shim's HTTP timeout is 1 s), ``slow``
(3 s per request), ``500`` and ``429`` (Retry-After: 1) for the whole phase.

Prints per configuration the median ns/op of the measured loop (median of rounds, and the
best round), the ratio to ``healthy`` (target <= 1.05), the app thread's CPU ns/op
(``time.thread_time_ns``: the cost to the app itself, free of the Redis server's and the
shared machine's noise), the shim's dropped events, failed posts, its event queue at the
end, and the process's RSS growth; then switches the proxy back to healthy and reports
how long the shim took to deliver again (recovery).  On a busy machine wall time is noisy:
use more rounds (``--rounds 9 --seconds 2``) and compare the best rounds and CPU.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing import RedisServer
from reliability_helpers import AgentProcess, FaultProxy, rss_bytes

MODES = ("healthy", "down", "black_hole", "slow", "500", "429")


def _refused_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _configure(proxy: FaultProxy, mode: str) -> str:
    """Set the proxy for ``mode``; returns the endpoint the shim should use."""
    proxy.mode, proxy.retry_after = "pass", None
    if mode == "down":
        return _refused_endpoint()
    if mode == "black_hole":
        proxy.mode = "black_hole"
    elif mode == "slow":
        proxy.mode, proxy.delay = "slow", 3.0
    elif mode in ("500", "429"):
        proxy.mode, proxy.status = "status", int(mode)
        proxy.retry_after = "1" if mode == "429" else None
    return proxy.endpoint


def _background(client: redis.Redis, stop: threading.Event) -> list[threading.Thread]:
    def worker() -> None:
        while not stop.is_set():
            lock = client.lock("faults:shared", timeout=5)
            if lock.acquire(blocking_timeout=1):
                stop.wait(0.02)
                lock.release()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    return threads


def run_mode(client: redis.Redis, proxy: FaultProxy, mode: str, seconds: float) -> dict[str, float]:
    endpoint = _configure(proxy, mode)
    config = ShimConfig(
        endpoint=endpoint,
        report_after=0.01,
        heartbeat=0.05,
        metrics_export="agent",
        metrics_interval=0.5,
        http_timeout=1.0,
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    shim = runtime.current
    assert shim is not None
    stop = threading.Event()
    threads = _background(client, stop)
    gc.collect()
    rss0 = rss_bytes(_pid())
    lock = client.lock(f"faults:own:{mode}", timeout=30)
    samples: list[float] = []
    cpu: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(100):
            lock.acquire()
            lock.release()
        samples.append((time.perf_counter_ns() - start) / 100)
        cpu.append((time.thread_time_ns() - cpu_start) / 100)
    stop.set()
    for thread in threads:
        thread.join(5)
    result = {
        "ns_per_op": statistics.median(samples),
        "cpu_per_op": statistics.median(cpu),
        "dropped": float(shim.recorder.dropped),
        "failed_posts": float(shim.reporter.failed_posts),
        "sent": float(shim.reporter.sent),
        "queued": float(shim.recorder.pending()),
        "rss_growth": float(rss_bytes(_pid()) - rss0),
    }
    proxy.mode = "pass"  # let a black-holed or slow request go before uninstrumenting
    instrumentor.uninstrument(flush_timeout=0.2)
    return result


def _pid() -> int:
    import os

    return os.getpid()


def recovery(client: redis.Redis, proxy: FaultProxy) -> float:
    """Seconds from the agent answering 200 again until the shim delivers events."""
    proxy.mode, proxy.status = "status", 503
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(
        config=ShimConfig(endpoint=proxy.endpoint, report_after=0.01, heartbeat=0.05)
    )
    shim = runtime.current
    assert shim is not None
    deadline = time.monotonic() + 10
    while shim.reporter.failed_posts < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = shim.reporter.sent
    healed = time.monotonic()
    proxy.mode = "pass"
    while shim.reporter.sent == sent and time.monotonic() < healed + 60:
        time.sleep(0.01)
    took = time.monotonic() - healed
    instrumentor.uninstrument(flush_timeout=0.2)
    return took


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per configuration and round")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s each")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 2.0

    agent = AgentProcess().start()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        with RedisServer() as server, FaultProxy(upstream=agent.otlp_url) as proxy:
            client = redis.Redis.from_url(server.url)
            for round_no in range(args.rounds):
                order = MODES if round_no % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    results[mode].append(run_mode(client, proxy, mode, args.seconds))
                print(f"round {round_no + 1}/{args.rounds} done", flush=True)
            took = recovery(client, proxy)
    finally:
        agent.stop()

    healthy = statistics.median(r["ns_per_op"] for r in results["healthy"])
    healthy_cpu = statistics.median(r["cpu_per_op"] for r in results["healthy"])
    print()
    print(
        f"{'agent':12} {'median ns/op':>12} {'ratio':>6} {'best':>10} {'ratio':>6} "
        f"{'cpu ns/op':>9} {'ratio':>6} "
        f"{'dropped':>8} {'failed':>7} {'queued':>7} {'RSS +MiB':>8}  target"
    )
    worst = 0.0
    for mode in MODES:
        rows = results[mode]
        median = statistics.median(r["ns_per_op"] for r in rows)
        best = min(r["ns_per_op"] for r in rows)
        ratio = median / healthy
        if mode != "healthy":
            worst = max(worst, ratio)
        print(
            f"{mode:12} {median:12.0f} {ratio:6.3f} {best:10.0f} "
            f"{best / min(r['ns_per_op'] for r in results['healthy']):6.3f} "
            f"{statistics.median(r['cpu_per_op'] for r in rows):9.0f} "
            f"{statistics.median(r['cpu_per_op'] for r in rows) / healthy_cpu:6.3f} "
            f"{max(r['dropped'] for r in rows):8.0f} {max(r['failed_posts'] for r in rows):7.0f} "
            f"{max(r['queued'] for r in rows):7.0f} "
            f"{max(r['rss_growth'] for r in rows) / 2**20:8.1f}  "
            f"{'' if mode == 'healthy' else '<= 1.05'}"
        )
    print(f"\nworst ratio {worst:.3f} (target <= 1.05)")
    print(f"recovery: delivering again {took:.2f} s after the agent answered 200 again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
