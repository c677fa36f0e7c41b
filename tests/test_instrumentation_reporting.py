"""What the shim reports: long waits with the waiter's holds, old holds, releases, extends,
lost locks, lock-order pairs, heartbeats, metrics and spans (real Redis, a real OTLP sink)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import redis

import polling
from lockscope import events
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.otlp_sink import OtlpSink, ReceivedEvent

REPORT_AFTER = 0.2


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


def _instrument(sink: OtlpSink, **kwargs: object) -> Iterator[runtime.Shim]:
    config = ShimConfig(
        endpoint=sink.endpoint,
        report_after=REPORT_AFTER,
        heartbeat=float(kwargs.pop("heartbeat", 0.3)),  # type: ignore[arg-type]
        metrics_export=str(kwargs.pop("metrics_export", "none")),
        metrics_interval=0.2,
        service_name="reporting-test",
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config, **kwargs)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument()


@pytest.fixture
def shim(sink: OtlpSink) -> Iterator[runtime.Shim]:
    yield from _instrument(sink)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def _named(name: str, lock: str) -> Callable[[ReceivedEvent], bool]:
    return lambda e: e.name == name and e.attrs.get(events.ATTR_LOCK_NAME) == lock


def _wait_while_held(client: redis.Redis, held: str, wanted: str, timeout: float) -> bool:
    """A thread holds ``held`` and then waits up to ``timeout`` for ``wanted``."""
    result: list[bool] = []

    def waiter() -> None:
        mine = client.lock(held, timeout=10)
        assert mine.acquire()
        try:
            result.append(client.lock(wanted, timeout=10).acquire(blocking_timeout=timeout))
        finally:
            mine.release()

    thread = threading.Thread(target=waiter, name="waiter")
    thread.start()
    thread.join(30)
    return result[0]


def test_long_wait_is_reported_with_the_waiters_holds(
    shim: runtime.Shim, sink: OtlpSink, client: redis.Redis
) -> None:
    blocker = client.lock("orders:1", timeout=10)
    assert blocker.acquire()
    holder_token = blocker.local.token.decode()
    assert _wait_while_held(client, "users:7", "orders:1", timeout=0.6) is False
    blocker.release()

    start = sink.wait_for(_named(events.EVENT_WAIT_START, "orders:1"))
    held = sink.wait_for(_named(events.EVENT_HOLD_START, "users:7"))
    end = sink.wait_for(_named(events.EVENT_WAIT_END, "orders:1"))
    # Principle 2: the waiter's holds reach the agent no later than its wait.
    events_in_order = sink.snapshot()
    assert events_in_order.index(held) < events_in_order.index(start)
    assert held.attrs[events.ATTR_ACTOR_ID] == start.attrs[events.ATTR_ACTOR_ID]
    assert start.attrs[events.ATTR_ACTOR_NAME] == "waiter"
    assert start.attrs[events.ATTR_LOCK_SYSTEM] == "redis"
    assert start.attrs[events.ATTR_LOCK_TEMPLATE] == "orders:{id}"
    assert start.attrs[events.ATTR_LOCK_NAMESPACE].endswith(
        f":{client.connection_pool.connection_kwargs['port']}/0"
    )
    # The holder's owner id, learned with one GET on the probe thread.
    assert start.attrs[events.ATTR_LOCK_HOLDER_OWNER] == holder_token
    assert start.attrs[events.ATTR_CODE_FUNCTION].endswith("waiter")
    assert end.attrs[events.ATTR_OUTCOME] == "timeout"
    assert end.attrs[events.ATTR_WAIT_DURATION] >= REPORT_AFTER
    # Never reported before it lasted report_after (principle 1).
    assert start.received_ns - start.attrs[events.ATTR_SINCE] >= REPORT_AFTER * 1e9
    assert start.event.process.service == "reporting-test"


def test_long_wait_reaches_the_receiver_while_it_still_waits(
    shim: runtime.Shim, sink: OtlpSink, client: redis.Redis
) -> None:
    # The waiter is reported while blocked (not only when its wait ends), and never
    # before its wait lasted report_after (principle 1). How soon after report_after
    # it arrives is a latency figure: benchmarks/, not a timed assertion here.
    blocker = client.lock("latency", timeout=30)
    assert blocker.acquire()
    acquired = threading.Event()

    def waiter() -> None:
        if client.lock("latency", timeout=10).acquire(blocking_timeout=30):
            acquired.set()

    thread = threading.Thread(target=waiter, name="waiter")
    thread.start()
    try:
        # Received while the blocker still holds the lock, so while the waiter waits.
        start = sink.wait_for(_named(events.EVENT_WAIT_START, "latency"))
    finally:
        blocker.release()
        thread.join(30)
    assert acquired.is_set()
    since: int = start.attrs[events.ATTR_SINCE]
    assert start.received_ns - since >= REPORT_AFTER * 1e9


def test_short_wait_sends_nothing(shim: runtime.Shim, sink: OtlpSink, client: redis.Redis) -> None:
    blocker = client.lock("short", timeout=10)
    assert blocker.acquire()
    assert client.lock("short", timeout=10).acquire(blocking_timeout=0.05) is False
    blocker.release()
    ended = shim.recorder.wall(__import__("time").perf_counter_ns())
    # A heartbeat produced after the wait ended proves the reporter has looked since.
    sink.wait_for(
        lambda e: e.name == events.EVENT_HEARTBEAT and e.event.time_ns > ended + REPORT_AFTER * 1e9
    )
    assert not [e for e in sink.snapshot() if e.attrs.get(events.ATTR_LOCK_NAME) == "short"]


def test_old_hold_release_extend_and_heartbeat(
    shim: runtime.Shim, sink: OtlpSink, client: redis.Redis
) -> None:
    lock = client.lock("lease", timeout=10)
    assert lock.acquire()
    start = sink.wait_for(_named(events.EVENT_HOLD_START, "lease"))
    assert start.attrs[events.ATTR_LOCK_OWNER] == lock.local.token.decode()
    beat = sink.wait_for(
        lambda e: (
            e.name == events.EVENT_HEARTBEAT
            and any(h[events.ATTR_LOCK_NAME] == "lease" for h in e.attrs[events.ATTR_HOLDS])
        )
    )
    assert beat.attrs[events.ATTR_SCHEMA_VERSION] == events.SCHEMA_VERSION
    assert beat.attrs[events.ATTR_DROPPED] == 0
    expires = start.attrs[events.ATTR_LOCK_EXPIRES_AT]
    assert lock.extend(20, replace_ttl=True)
    extended = sink.wait_for(_named(events.EVENT_HOLD_EXTEND, "lease"))
    assert extended.attrs[events.ATTR_LOCK_EXPIRES_AT] > expires + 5e9
    assert lock.reacquire()
    lock.release()
    end = sink.wait_for(_named(events.EVENT_HOLD_END, "lease"))
    assert end.attrs[events.ATTR_OUTCOME] == "released"
    assert end.attrs[events.ATTR_HOLD_DURATION] >= REPORT_AFTER


def test_lost_lock_is_reported(shim: runtime.Shim, sink: OtlpSink, client: redis.Redis) -> None:
    lock = client.lock("fragile", timeout=10)
    assert lock.acquire()
    client.delete("fragile")  # the lease "expired"
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        lock.release()
    lost = sink.wait_for(_named(events.EVENT_LOCK_LOST, "fragile"))
    assert lost.attrs[events.ATTR_OUTCOME] == "lost"
    assert lost.attrs[events.ATTR_SINCE] > 0


def test_lock_order_pair_is_reported_once(
    shim: runtime.Shim, sink: OtlpSink, client: redis.Redis
) -> None:
    for i in range(3):
        with client.lock(f"account:{i}", timeout=10), client.lock(f"ledger:{i}", timeout=10):
            pass
    pair = sink.wait_for(lambda e: e.name == events.EVENT_ORDER_PAIR)
    assert pair.attrs[events.ATTR_ORDER_FIRST] == "account:{id}"
    assert pair.attrs[events.ATTR_ORDER_SECOND] == "ledger:{id}"
    assert pair.attrs[events.ATTR_ORDER_SYSTEM_FIRST] == "redis"
    # Flush: a heartbeat after the loop, then count.
    sink.wait_for(
        lambda e: e.name == events.EVENT_HEARTBEAT and e.event.time_ns > pair.event.time_ns
    )
    assert len(sink.named(events.EVENT_ORDER_PAIR)) == 1


def test_metrics_reach_the_agent_when_the_app_has_no_meter_provider(
    sink: OtlpSink, client: redis.Redis
) -> None:
    for _current in _instrument(sink, metrics_export="agent"):
        for _ in range(3):
            with client.lock("metered:1", timeout=5):
                pass
        assert client.lock("metered:1", timeout=5).acquire(blocking=False)
        assert client.lock("metered:1", timeout=5).acquire(blocking=False) is False

        def seen(s: OtlpSink) -> bool:
            points = list(s.iter_metric_points())
            names = {n for n, _, _ in points}
            return {events.METRIC_ACQUISITIONS, events.METRIC_HOLD_DURATION} <= names

        sink.wait_until(seen, timeout=10)
    counts = {}
    for name, attrs, point in sink.iter_metric_points():
        if name == events.METRIC_ACQUISITIONS:
            counts[attrs[events.ATTR_OUTCOME]] = point.as_int
            assert attrs[events.ATTR_LOCK_TEMPLATE] == "metered:{id}"
    assert counts["acquired"] >= 4
    assert counts["busy"] >= 1


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A span's or a point's attributes (``None`` when it has none: a failure here)."""
    assert attributes is not None
    return dict(attributes)


@pytest.mark.parametrize("sampler", ["default", "ratio"])
def test_spans_nest_redis_commands_and_link_to_the_holder(
    sink: OtlpSink, client: redis.Redis, sampler: str
) -> None:
    """Both span paths: the default sampler surely records (attributes and link given at
    the start), a ratio sampler is asked (they are added once the span records)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider() if sampler == "default" else TracerProvider(TraceIdRatioBased(1.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    RedisInstrumentor().instrument(tracer_provider=provider)
    try:
        for _ in _instrument(sink, tracer_provider=provider):
            holder = client.lock("spanned:1", timeout=10)
            assert holder.acquire()
            assert client.lock("spanned:1", timeout=10).acquire(blocking=False) is False
            holder.release()
    finally:
        RedisInstrumentor().uninstrument()
    spans = exporter.get_finished_spans()
    acquires = [s for s in spans if s.name == events.SPAN_ACQUIRE]
    holds = [s for s in spans if s.name == events.SPAN_HOLD]
    assert len(acquires) == 2
    assert len(holds) == 1
    first, second = acquires
    first_attrs, second_attrs = _attributes(first.attributes), _attributes(second.attributes)
    assert first_attrs[events.ATTR_OUTCOME] == "acquired"
    assert second_attrs[events.ATTR_OUTCOME] == "busy"
    assert first_attrs[events.ATTR_LOCK_NAME] == "spanned:1"
    assert first_attrs[events.ATTR_CODE_FILE].endswith("test_instrumentation_reporting.py")
    assert first_attrs[events.ATTR_CODE_FUNCTION].endswith("link_to_the_holder")
    assert second_attrs[events.ATTR_CODE_LINE] > first_attrs[events.ATTR_CODE_LINE]
    # The redis SET of each acquire is a child of its lock.acquire span.
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == first.context.span_id
    ]
    assert children
    assert all(s.name not in (events.SPAN_ACQUIRE, events.SPAN_HOLD) for s in children)
    # The busy acquire links to the in-process holder's hold span.
    assert [link.context.span_id for link in second.links] == [holds[0].context.span_id]
    assert _attributes(holds[0].attributes)[events.ATTR_OUTCOME] == "released"
    # The release script runs under the hold span.
    assert any(s.parent is not None and s.parent.span_id == holds[0].context.span_id for s in spans)


def test_headers_are_sent_with_every_request(sink: OtlpSink) -> None:
    config = ShimConfig.from_env(
        {
            "LOCKSCOPE_ENDPOINT": sink.endpoint,
            "LOCKSCOPE_HEARTBEAT": "0.1",
            "LOCKSCOPE_HEADERS": "Authorization=Bearer%20s3cret",
            "LOCKSCOPE_METRICS_EXPORT": "none",
        }
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    try:
        sink.wait_until(lambda s: len(s.requests) >= 1)
    finally:
        instrumentor.uninstrument()
    _, headers, _ = sink.requests[0]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/x-protobuf"


def test_metrics_go_to_the_apps_meter_provider(sink: OtlpSink, client: redis.Redis) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    for _ in _instrument(sink, metrics_export="auto", meter_provider=provider):
        for _ in range(5):
            with client.lock("app-metered:1", timeout=5):
                pass
        assert runtime.current is not None
        assert runtime.current.metrics.mode == "app"

        def points() -> dict[str, object]:
            data = reader.get_metrics_data()
            found: dict[str, object] = {}
            for rm in data.resource_metrics if data else ():
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        for point in metric.data.data_points:
                            if (
                                _attributes(point.attributes).get(events.ATTR_LOCK_TEMPLATE)
                                == "app-metered:{id}"
                            ):
                                found[metric.name] = point
            return found

        def all_five(found: dict[str, Any]) -> bool:
            # The reporter folds the figures in on its own schedule: a first collection
            # may hold only the acquisitions made before its last fold.
            hold = found.get(events.METRIC_HOLD_DURATION)
            return hold is not None and hold.count == 5

        polling.wait_until(lambda: all_five(points()), what="the five holds in the app's meter")
        found = points()
    assert found[events.METRIC_ACQUISITIONS].value == 5  # type: ignore[attr-defined]
    assert found[events.METRIC_HOLD_DURATION].count == 5  # type: ignore[attr-defined]
    assert not list(sink.iter_metric_points())  # nothing went to the agent
    provider.shutdown()


def test_exit_flush_sends_a_final_snapshot_with_every_hold(
    sink: OtlpSink, client: redis.Redis
) -> None:
    """Stopping (the exit flush) sends one last heartbeat marked as a clean exit that lists
    what is still held, even a hold younger than report_after (it outlives the process)."""
    for shim in _instrument(sink, heartbeat=30.0):
        young = client.lock("left-behind", timeout=30)
        assert young.acquire()
        done = client.lock("released", timeout=30)
        assert done.acquire()
        done.release()
        shim.stop(flush_timeout=5.0)
        final = sink.wait_for(
            lambda e: e.name == events.EVENT_HEARTBEAT and e.attrs.get(events.ATTR_EXITING)
        )
        assert [h[events.ATTR_LOCK_NAME] for h in final.attrs[events.ATTR_HOLDS]] == ["left-behind"]
        assert sink.wait_for(_named(events.EVENT_HOLD_START, "left-behind"))
        assert not [e for e in sink.snapshot() if e.attrs.get(events.ATTR_LOCK_NAME) == "released"]
        beats = [e for e in sink.snapshot() if e.name == events.EVENT_HEARTBEAT]
        assert [bool(e.attrs.get(events.ATTR_EXITING)) for e in beats][-1:] == [True]
        young.release()


# -- heartbeat cadence (a slow idle heartbeat, so every snapshot seen is a triggered one) --
@pytest.fixture
def slow_beat_shim(sink: OtlpSink) -> Iterator[runtime.Shim]:
    config = ShimConfig(
        endpoint=sink.endpoint,
        report_after=0.05,
        heartbeat=60.0,  # the regular heartbeat would come far too late for the tests
        metrics_export="none",
        service_name="slow-beat",
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument(flush_timeout=0.2)


def _names(entries: Any) -> set[str]:
    return {entry.get(events.ATTR_LOCK_NAME) for entry in entries or ()}


def test_the_first_report_comes_with_a_heartbeat(
    slow_beat_shim: runtime.Shim, sink: OtlpSink, redis_url: str
) -> None:
    """A process that reports a hold and dies before its first regular heartbeat must
    already have told the agent its heartbeat interval (else: "never heard from")."""
    client = redis.Redis.from_url(redis_url)
    lock = client.lock("fixes:first-beat", timeout=30)
    assert lock.acquire()
    try:
        beat = sink.wait_for(
            lambda e: (
                e.name == events.EVENT_HEARTBEAT
                and "fixes:first-beat" in _names(e.attrs[events.ATTR_HOLDS])
            ),
            timeout=10,
        )
        # While it holds a reported lock it promises the busy interval, not its idle 60 s,
        # so the agent calls the hold orphaned ~1.2 s after the process stops.
        assert beat.attrs[events.ATTR_HEARTBEAT_INTERVAL] == 0.4
    finally:
        lock.release()
        client.close()


def _beats_listing(sink: OtlpSink, kind: str, name: str) -> list[Any]:
    return [e for e in sink.named(events.EVENT_HEARTBEAT) if name in _names(e.attrs[kind])]


def test_a_long_wait_brings_a_snapshot_every_report_after_until_it_ends(
    slow_beat_shim: runtime.Shim, sink: OtlpSink, redis_url: str
) -> None:
    """A waiting process re-asserts its wait and holds every report_after (here 0.05 s, so
    the 0.1 s floor; its idle heartbeat is 60 s), so a deadlock's participants all speak up
    soon after the cycle closes; once nothing is reported, snapshots fall back to idle."""
    client = redis.Redis.from_url(redis_url)
    holder = client.lock("fixes:cadence", timeout=30)
    assert holder.acquire()
    result: list[bool] = []

    def wait() -> None:
        lock = client.lock("fixes:cadence", timeout=30)
        result.append(bool(lock.acquire(blocking_timeout=30)))
        lock.release()

    waiter = threading.Thread(target=wait)
    try:
        waiter.start()
        # Five snapshots listing the wait while it lasts: with the old fixed 60 s
        # heartbeat there would be one.
        sink.wait_until(lambda s: len(_beats_listing(s, events.ATTR_WAITS, "fixes:cadence")) >= 5)
        beats = _beats_listing(sink, events.ATTR_WAITS, "fixes:cadence")
        assert {b.attrs[events.ATTR_HEARTBEAT_INTERVAL] for b in beats} == {0.4}
    finally:
        holder.release()
        waiter.join(30)
    assert result == [True]
    # The waiter got the lock and released it (the shim saw both): the next snapshot is
    # empty and announces the idle interval again.
    idle = sink.wait_for(
        lambda e: (
            e.name == events.EVENT_HEARTBEAT
            and not e.attrs[events.ATTR_WAITS]
            and not e.attrs[events.ATTR_HOLDS]
            and e.attrs[events.ATTR_HEARTBEAT_INTERVAL] == 60.0
        ),
        timeout=10,
    )
    assert idle is not None
    client.close()
