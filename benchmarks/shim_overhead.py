"""Shim overhead: ns per acquire+release, bare vs instrumented, in one run.

    .venv/bin/python benchmarks/shim_overhead.py [--rounds 7] [--quick]

Starts a real redis-server and ZooKeeper (lockscope.testing), then measures, alternating
the configurations round by round so drift on a shared machine hits all of them alike:

* redis-py ``Lock`` acquire+release: bare; with the shim and an SDK TracerProvider whose
  sampler drops everything ("unsampled"); with every span recorded (ALWAYS_ON, batch span
  processor, discarding exporter); with opentelemetry-instrumentation-redis instead
  (ALWAYS_ON, same processor) -- the generic alternative;
* kazoo ``Lock`` acquire+release: bare and with the shim (unsampled);
* ``threading.Lock`` acquire+release: bare and with the opt-in threading shim;
* a redis-py ``Lock`` whose server calls are no-ops ("no-server"): the shim's own cost in
  ns, with no tracer, unsampled and with all spans.

For each configuration it prints, per round, the ratio of its wall time to bare's wall time
in the same round (so drift between rounds cancels out) and reports the median and the
minimum of those per-round ratios, plus the best and median wall time per operation.  It
also prints the client thread's CPU time per operation (``time.thread_time_ns``).

The stable figure is the shim's own CPU: the "no-server" rows (server calls no-ops) minus
no-server bare, per acquire+release.  "est." = 1 + that added CPU / bare redis acquire+release
wall time (median of the rounds): the ratio where nothing else competes for the CPU.
Threading: ns added.  Targets: <= 1.03 unsampled, <= 1.10 all spans, kazoo <= 1.03,
threading <= +1000 ns.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.lock
from kazoo.client import KazooClient
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

from lockscope.instrumentation import LockscopeInstrumentor
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing import RedisServer, ZooKeeperServer
from lockscope.testing.otlp_sink import OtlpSink


class _Discard(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(sampled: bool) -> TracerProvider:
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ParentBased(ALWAYS_OFF))
    provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=65536))
    return provider


def _per_op(fn: Callable[[], None], n: int) -> tuple[float, float]:
    gc.collect()
    cpu = time.thread_time_ns()
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    wall = time.perf_counter_ns() - start
    return wall / n, (time.thread_time_ns() - cpu) / n


class Bench:
    """One named configuration: set-up, the measured operation, tear-down."""

    def __init__(self, name: str, enter: Callable[[], Callable[[], None]],
                 leave: Callable[[], None], n: int) -> None:  # fmt: skip
        self.name = name
        self.enter = enter
        self.leave = leave
        self.n = n
        self.samples: list[float] = []
        self.cpu: list[float] = []
        self.ratios: list[float] = []
        """Per round: wall time / the group's bare wall time in the same round."""

    def run_once(self) -> None:
        op = self.enter()
        try:
            for _ in range(max(10, self.n // 20)):  # warm-up
                op()
            wall, cpu = _per_op(op, self.n)
            self.samples.append(wall)
            self.cpu.append(cpu)
        finally:
            self.leave()

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def best_cpu(self) -> float:
        return min(self.cpu)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer operations per round")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0

    with RedisServer() as server, ZooKeeperServer() as zk_server, OtlpSink() as sink:
        client = redis.Redis.from_url(server.url)
        zk = KazooClient(hosts=zk_server.hosts, timeout=10)
        zk.start(timeout=30)
        instrumentor = LockscopeInstrumentor()
        config = ShimConfig(endpoint=sink.endpoint, metrics_export="agent")
        unsampled, sampled = _provider(False), _provider(True)

        def redis_op() -> Callable[[], None]:
            lock = client.lock("bench:redis", timeout=30)

            def op() -> None:
                lock.acquire()
                lock.release()

            return op

        class _Offline(redis.lock.Lock):
            """A redis-py Lock whose server round trips are no-ops: the shim's own cost."""

            def do_acquire(self, token: Any) -> bool:
                return True

            def do_release(self, expected_token: Any) -> None:
                return None

        def offline_op() -> Callable[[], None]:
            lock = _Offline(client, "bench:offline", timeout=30)

            def op() -> None:
                lock.acquire()
                lock.release()

            return op

        def kazoo_op() -> Callable[[], None]:
            lock = zk.Lock("/bench/kazoo", "bench")

            def op() -> None:
                lock.acquire()
                lock.release()

            return op

        def thread_op() -> Callable[[], None]:
            lock = threading.Lock()  # created here, after instrumenting: app code

            def op() -> None:
                lock.acquire()
                lock.release()

            return op

        def shim(make: Callable[[], Callable[[], None]], **kwargs: Any) -> Callable[[], Any]:
            def enter() -> Callable[[], None]:
                instrumentor.instrument(config=config, **kwargs)
                return make()

            return enter

        def otel_redis() -> Callable[[], None]:
            RedisInstrumentor().instrument(tracer_provider=sampled)
            return redis_op()

        def uninstrument() -> None:
            instrumentor.uninstrument(flush_timeout=0.5)

        nothing: Callable[[], None] = lambda: None  # noqa: E731
        n_redis, n_zk, n_thread = int(3000 * scale), int(300 * scale), int(300_000 * scale)
        redis_benches = [
            Bench("redis bare", redis_op, nothing, n_redis),
            Bench("redis shim, unsampled", shim(redis_op, tracer_provider=unsampled),
                  uninstrument, n_redis),
            Bench("redis shim, all spans", shim(redis_op, tracer_provider=sampled),
                  uninstrument, n_redis),
            Bench("redis otel-instrumentation-redis", otel_redis,
                  RedisInstrumentor().uninstrument, n_redis),
        ]  # fmt: skip
        offline_benches = [
            Bench("no-server bare", offline_op, nothing, n_redis * 5),
            Bench("no-server shim, no tracer", shim(offline_op), uninstrument, n_redis * 5),
            Bench("no-server shim, unsampled", shim(offline_op, tracer_provider=unsampled),
                  uninstrument, n_redis * 5),
            Bench("no-server shim, all spans", shim(offline_op, tracer_provider=sampled),
                  uninstrument, n_redis * 5),
        ]  # fmt: skip
        kazoo_benches = [
            Bench("kazoo bare", kazoo_op, nothing, n_zk),
            Bench("kazoo shim, unsampled", shim(kazoo_op, tracer_provider=unsampled),
                  uninstrument, n_zk),
        ]  # fmt: skip
        thread_benches = [
            Bench("threading bare", thread_op, nothing, n_thread),
            Bench("threading shim", shim(thread_op, threading=True), uninstrument, n_thread),
        ]
        for round_no in range(args.rounds):
            for group in (redis_benches, offline_benches, kazoo_benches, thread_benches):
                order = group if round_no % 2 == 0 else list(reversed(group))
                for bench in order:
                    bench.run_once()
                for bench in group:
                    bench.ratios.append(bench.samples[-1] / group[0].samples[-1])
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)

        print()
        header = (f"{'configuration':34} {'best ns/op':>11} {'median':>11} {'ratio med':>9} "
                  f"{'ratio min':>9} {'cpu ns/op':>10}  target")  # fmt: skip
        print(header)
        targets = {
            "redis shim, unsampled": "<= 1.03",
            "redis shim, all spans": "<= 1.10",
            "redis otel-instrumentation-redis": "(reference)",
            "kazoo shim, unsampled": "<= 1.03",
            "threading shim": "<= +1000 ns",
        }
        for group in (redis_benches, offline_benches, kazoo_benches, thread_benches):
            bare = group[0]
            for bench in group:
                if bench is bare:
                    med = low = ""
                elif bench.name.startswith(("threading", "no-server")):
                    med = f"+{bench.median - bare.median:.0f}"
                    low = f"+{bench.best - bare.best:.0f}"
                else:
                    med = f"{statistics.median(bench.ratios):.3f}"
                    low = f"{min(bench.ratios):.3f}"
                print(f"{bench.name:34} {bench.best:11.0f} {bench.median:11.0f} {med:>9} "
                      f"{low:>9} {bench.median_cpu:10.0f}  "
                      f"{targets.get(bench.name, '')}")  # fmt: skip

        # The stable figure: the shim's own CPU (no server) against bare's wall time.
        bare_wall = redis_benches[0].median
        print()
        print(f"shim's own CPU per acquire+release (no-server, median of {args.rounds} rounds) "
              f"against bare redis-py acquire+release ({bare_wall:.0f} ns, median):")  # fmt: skip
        offline_bare = offline_benches[0].median_cpu
        for bench, target in zip(offline_benches[1:], ("", "<= 1.03", "<= 1.10"), strict=True):
            added = bench.median_cpu - offline_bare
            print(f"  {bench.name:32} +{added:8.0f} ns   est. {1 + added / bare_wall:.3f}  "
                  f"{target}")  # fmt: skip
        zk.stop()
        zk.close()
        client.close()
        sampled.shutdown()
        unsampled.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
