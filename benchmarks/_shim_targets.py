"""The targets of benchmarks/shim_overhead.py, one row each, and the child process.

To add a row (a file lock, a database driver...): write a ``make_<name>(servers, spans)``
that returns the cycle to time (a function doing one acquire+release, or an ``async``
function for an asyncio target) and add a :class:`Target` to :data:`TARGETS` naming the
servers it needs.  ``spans`` is a :class:`FloorSpans` in the "sdk-floor" configuration (the
OpenTelemetry SDK's own two spans around the bare calls) and ``None`` otherwise; a target
that can have spans should use it, see :func:`make_redis`.

A child process (``shim_overhead.py --child``) sets up one configuration of one target,
warms up, times ``cycles`` cycles and prints one JSON line: wall ns, caller-thread CPU ns
and whole-process CPU ns (every thread: the reporter's work counts) per cycle.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

UNREACHABLE = "http://127.0.0.1:9"
"""The agent endpoint of the instrumented runs: nothing listens (the fail-open path)."""


@dataclass(frozen=True)
class Target:
    """One benchmark row: what to time, with what, how many cycles per process."""

    name: str
    make: Callable[[dict[str, str], FloorSpans | None], Callable[[], Any]]
    cycles: int
    servers: tuple[str, ...] = ()
    configs: tuple[str, ...] = ("bare", "unsampled")
    """Which configurations make sense (see :data:`CONFIGS`)."""
    opt_in: dict[str, bool] = field(default_factory=dict)
    """Keyword arguments for ``instrument()`` (``threading=True``...)."""
    target: str = ""
    """The goal, as printed: ``<= 1.03x``, ``<= +0.6 us``..."""
    diagnostic: bool = False
    bare_per_src: bool = False
    """The bare library is code of this repository (lockscope's own locks): with several
    ``--src`` trees each gets its own bare run, and its ratios are against that."""


CONFIGS = {
    "bare": "the library alone",
    "unsampled": "shim, SDK TracerProvider with ParentBased(ALWAYS_OFF)",
    "spans": "shim, every span recorded (ALWAYS_ON, batch processor, discarding exporter)",
    "sdk-floor": "bare + the SDK's own two spans around the calls (no shim)",
    "otel-redis": "opentelemetry-instrumentation-redis (ALWAYS_ON), no shim",
}
SHIM_CONFIGS = ("unsampled", "spans")
"""Configurations that run lockscope's shim (timed once per source tree compared)."""


class FloorSpans:
    """The two spans the shim makes, with the same attributes, and nothing else: the least
    the OpenTelemetry SDK itself costs for them (the floor of the "spans" configuration)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace

        self.tracer = tracer
        self.attach, self.detach = context.attach, context.detach
        self.set_span = trace.set_span_in_context
        self.attrs = {
            "lock.system": "redis",
            "lock.namespace": "127.0.0.1:6379/0",
            "lock.name": "bench:redis",
            "lock.ttl": 30.0,
        }
        self.acquire_attrs = {
            **self.attrs,
            "code.filepath": __file__,
            "code.lineno": 100,
            "code.function": "op",
        }

    def around(self, acquire: Callable[[], Any], release: Callable[[], Any]) -> None:
        """acquire under a current ``lock.acquire`` span, release under ``lock.hold``."""
        span = self.tracer.start_span("lock.acquire", attributes=self.acquire_attrs)
        token = self.attach(self.set_span(span))
        acquire()
        self.detach(token)
        span.set_attribute("lock.outcome", "acquired")
        span.set_attribute("lock.wait.duration", 0.0)
        span.end()
        hold = self.tracer.start_span("lock.hold", attributes=self.attrs)
        token = self.attach(self.set_span(hold))
        release()
        self.detach(token)
        hold.set_attribute("lock.outcome", "released")
        hold.set_attribute("lock.hold.duration", 0.0)
        hold.end()


def _cycle(lock: Any, spans: FloorSpans | None) -> Callable[[], None]:
    if spans is not None:
        return lambda: spans.around(lock.acquire, lock.release)

    # The methods are looked up on every call, as an app does (``lock.acquire()``): a wrapt
    # wrapper binds per look-up, and that cost is the shim's.
    def op() -> None:
        lock.acquire()
        lock.release()

    return op


def make_redis(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import redis

    client = redis.Redis.from_url(servers["redis"])
    return _cycle(client.lock("bench:redis", timeout=30), spans)


def make_redis_async(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], Any]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(servers["redis"])
    lock = client.lock("bench:redis-async", timeout=30)

    async def op() -> None:
        await lock.acquire()
        await lock.release()

    return op


def make_redis_offline(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import redis
    import redis.lock

    class Offline(redis.lock.Lock):
        """A redis-py Lock whose server round trips are no-ops: CPU of the code alone."""

        def do_acquire(self, token: Any) -> bool:
            return True

        def do_release(self, expected_token: Any) -> None:
            return None

    client = redis.Redis.from_url(servers["redis"])
    return _cycle(Offline(client, "bench:offline", timeout=30), spans)


def make_kazoo(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=servers["zookeeper"], timeout=10)
    zk.start(timeout=30)
    return _cycle(zk.Lock("/bench/kazoo", "bench"), spans)


def make_lockscope_redis(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    from lockscope.locks import RedisLock

    return _cycle(RedisLock("bench:lockscope", servers["redis"], ttl=30), spans)


def make_threading(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    return _cycle(threading.Lock(), None)  # made here, after instrumenting: app code


def make_rlock(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    return _cycle(threading.RLock(), None)


def make_asyncio(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], Any]:
    holder: list[asyncio.Lock] = []

    async def op() -> None:
        if not holder:
            holder.append(asyncio.Lock())  # inside the loop, after instrumenting
        lock = holder[0]
        await lock.acquire()
        lock.release()

    return op


def _lock_file(name: str) -> str:
    import tempfile

    directory = os.environ.get("LOCKSCOPE_BENCH_DIR") or tempfile.mkdtemp(prefix="lockscope-bench")
    return os.path.join(directory, name)


def make_filelock(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import filelock

    return _cycle(filelock.FileLock(_lock_file("filelock.lock")), None)


def make_softfilelock(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import filelock

    return _cycle(filelock.SoftFileLock(_lock_file("soft.lock")), None)


def make_portalocker(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import portalocker

    return _cycle(portalocker.Lock(_lock_file("portalocker.lock")), None)


def make_fasteners(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import fasteners

    return _cycle(fasteners.InterProcessLock(_lock_file("fasteners.lock")), None)


def make_python_redis_lock(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import redis
    import redis_lock

    client = redis.Redis.from_url(servers["redis"])
    return _cycle(redis_lock.Lock(client, "bench:prl", expire=30), None)


def make_pottery(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import redis
    from pottery import Redlock

    client = redis.Redis.from_url(servers["redis"])
    return _cycle(Redlock(key="bench:pottery", masters={client}, auto_release_time=30), None)


def make_sqlalchemy_pool(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    import sqlalchemy

    url = servers["postgres"].replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=2, max_overflow=0)

    def op() -> None:
        engine.connect().close()  # checkout + return (with the pool's reset-on-return)

    return op


def make_psycopg_pool(servers: dict[str, str], spans: FloorSpans | None) -> Callable[[], None]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(servers["postgres_dsn"], min_size=2, max_size=2, open=True)
    pool.wait()

    def op() -> None:
        pool.putconn(pool.getconn())

    return op


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("redis-py Lock", make_redis, 2000, ("redis",),
               ("bare", "unsampled", "spans", "sdk-floor", "otel-redis"),
               target="<= 1.03x, <= +5 us CPU; spans <= floor + 3 us"),
        Target("redis-py asyncio Lock", make_redis_async, 1500, ("redis",),
               target="<= 1.03x"),
        Target("kazoo Lock", make_kazoo, 200, ("zookeeper",), target="<= 1.03x"),
        Target("lockscope RedisLock", make_lockscope_redis, 1500, ("redis",),
               target="<= 1.03x", bare_per_src=True),
        Target("threading.Lock (opt-in)", make_threading, 200_000, (),
               opt_in={"threading": True}, target="<= +0.6 us"),
        Target("threading.RLock (opt-in)", make_rlock, 200_000, (),
               opt_in={"threading": True}),
        Target("asyncio.Lock (opt-in)", make_asyncio, 100_000, (),
               opt_in={"asyncio": True}, target="<= +1 us"),
        Target("filelock FileLock", make_filelock, 20_000, (), target="<= 1.03x"),
        Target("filelock SoftFileLock", make_softfilelock, 5_000, (), target="<= 1.03x"),
        Target("portalocker Lock", make_portalocker, 20_000, (), target="<= 1.03x"),
        Target("fasteners InterProcessLock", make_fasteners, 20_000, (), target="<= 1.03x"),
        Target("python-redis-lock Lock", make_python_redis_lock, 1500, ("redis",),
               target="<= 1.03x"),
        Target("pottery Redlock", make_pottery, 500, ("redis",), target="<= 1.03x"),
        Target("SQLAlchemy QueuePool checkout", make_sqlalchemy_pool, 2000, ("postgres",),
               target="<= 1.05x"),
        Target("psycopg_pool checkout", make_psycopg_pool, 2000, ("postgres",),
               target="<= 1.05x"),
        Target("redis-py Lock, no server (diagnostic)", make_redis_offline, 20_000,
               ("redis",), ("bare", "unsampled", "spans"), diagnostic=True),
    )
}  # fmt: skip


def _provider(sampled: bool) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ParentBased(ALWAYS_OFF))
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=65536))
    return provider


def _timed(op: Callable[[], Any], cycles: int) -> dict[str, float]:
    warm = max(20, cycles // 20)
    if asyncio.iscoroutinefunction(op):

        async def run() -> dict[str, float]:
            for _ in range(warm):
                await op()
            gc.collect()
            cpu, proc, start = time.thread_time_ns(), time.process_time_ns(), time.perf_counter_ns()
            for _ in range(cycles):
                await op()
            wall = time.perf_counter_ns() - start
            return _figures(wall, cpu, proc, cycles)

        return asyncio.run(run())
    for _ in range(warm):
        op()
    gc.collect()
    cpu, proc, start = time.thread_time_ns(), time.process_time_ns(), time.perf_counter_ns()
    for _ in range(cycles):
        op()
    wall = time.perf_counter_ns() - start
    return _figures(wall, cpu, proc, cycles)


def _figures(wall: int, cpu: int, proc: int, cycles: int) -> dict[str, float]:
    return {
        "wall": wall / cycles,
        "cpu": (time.thread_time_ns() - cpu) / cycles,
        "process_cpu": (time.process_time_ns() - proc) / cycles,
    }


def child(target_name: str, config: str, cycles: int, servers: dict[str, str]) -> None:
    """Run one configuration of one target in this process and print its figures."""
    target = TARGETS[target_name]
    spans = None
    provider = None
    if config in ("unsampled", "spans"):
        from lockscope.instrumentation import LockscopeInstrumentor
        from lockscope.instrumentation.config import ShimConfig

        provider = _provider(config == "spans")
        config_ = ShimConfig(endpoint=UNREACHABLE, metrics_export="agent")
        LockscopeInstrumentor().instrument(
            config=config_, tracer_provider=provider, **target.opt_in
        )
    elif config == "sdk-floor":
        provider = _provider(True)
        spans = FloorSpans(provider.get_tracer("bench"))
    elif config == "otel-redis":
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        provider = _provider(True)
        RedisInstrumentor().instrument(tracer_provider=provider)
    op = target.make(servers, spans)
    figures = _timed(op, cycles)
    print(json.dumps(figures), flush=True)
    os._exit(0)  # no exit flush: what is timed is done
