"""Small pieces of the shim: configuration, aggregation, encoding, the recorder's rules."""

from __future__ import annotations

import pytest

from lockscope import events
from lockscope.instrumentation.config import DEFAULT_ENDPOINT, ShimConfig
from lockscope.instrumentation.otlp_export import PostResult, _retry_after, encode_events
from lockscope.instrumentation.recorder import LockInfo, Recorder
from lockscope.instrumentation.reporter import Reporter
from lockscope.instrumentation.stats import BOUNDS, OTHER, LockStats
from lockscope.testing.otlp_sink import decode_logs


def test_config_defaults_and_precedence() -> None:
    assert ShimConfig.from_env({}).endpoint == DEFAULT_ENDPOINT
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-a=1",
        "LOCKSCOPE_HEADERS": "x-a=2",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-res,deployment.environment=prod",
        "LOCKSCOPE_REPORT_AFTER": "0.5",
        "LOCKSCOPE_HEARTBEAT": "nonsense",
        "LOCKSCOPE_DISABLED": "TRUE",
    }
    config = ShimConfig.from_env(env)
    assert config.endpoint == "http://collector:4318"
    assert config.headers == {"Authorization": "Bearer abc", "x-a": "2"}
    assert config.service_name == "from-res"
    assert config.resource["deployment.environment"] == "prod"
    assert config.report_after == 0.5
    assert config.heartbeat == 1.0  # invalid value: default
    assert config.disabled
    env["LOCKSCOPE_ENDPOINT"] = "http://agent:4318"
    env["OTEL_SERVICE_NAME"] = "svc"
    config = ShimConfig.from_env(env)
    assert (config.endpoint, config.service_name) == ("http://agent:4318", "svc")


def test_stats_buckets_sums_and_template_cap() -> None:
    stats = LockStats(max_templates=2)
    stats.acquired("a", "redis", "acquired", 0.0)
    stats.acquired("a", "redis", "timeout", 0.3)
    stats.held("a", "redis", BOUNDS[3], lost=True)  # exactly on a bound: that bucket
    stats.acquired("b", "redis", "acquired", 0.0)
    stats.acquired("c", "redis", "acquired", 0.0)  # over the cap
    _, acquisitions, lost, waits, holds = stats.snapshot()
    assert acquisitions[("a", "redis", "timeout")] == 1
    assert acquisitions[(OTHER, "redis", "acquired")] == 1
    assert lost == {("a", "redis"): 1}
    assert waits[("a", "redis")][0] == 1
    assert waits[("a", "redis")][-1] == pytest.approx(0.3)
    assert holds[("a", "redis")][3] == 1


def test_events_encode_and_decode_round_trip() -> None:
    attrs = {
        events.ATTR_LOCK_NAME: "orders:1",
        events.ATTR_LOCK_TTL: 5.0,
        events.ATTR_LOCK_TOKEN: 42,
        events.ATTR_LOCK_FIFO: True,
        events.ATTR_HOLDS: [{events.ATTR_LOCK_NAME: "x", events.ATTR_SINCE: 1}],
    }
    body = encode_events(
        [(events.EVENT_HEARTBEAT, 123, attrs)],
        {"service.name": "s", "host.name": "h", "process.pid": 7, "service.instance.id": "i"},
    )
    (received,) = decode_logs(body)
    assert received.name == events.EVENT_HEARTBEAT
    assert received.event.time_ns == 123
    assert dict(received.attrs) == attrs
    assert (received.pid, received.event.process.instance) == (7, "i")


class _Capture:
    """A transport that keeps every logs body (and can fail the first posts)."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.fail = fail

    def post(self, path: str, body: bytes) -> PostResult:
        if path != "/v1/logs":
            return PostResult(ok=True, retryable=False)
        if self.fail:
            self.fail -= 1
            return PostResult(ok=False, retryable=False, status=400)
        self.bodies.append(body)
        return PostResult(ok=True, retryable=False)


def test_every_event_carries_the_send_order_sequence() -> None:
    """Issue 14 item 1 (shim side): events and heartbeats are numbered 1, 2, 3... in the
    order the process sent them, whatever its wall clock says (the agent orders by it)."""
    recorder = Recorder(report_after=0.0)
    transport = _Capture(fail=1)
    resource = {"service.name": "s", "host.name": "h", "process.pid": 7, "service.instance.id": "i"}
    reporter = Reporter(
        recorder,
        transport,  # type: ignore[arg-type]
        lambda: resource,
        report_after=0.0,
        heartbeat=1.0,
        probes=lambda w: None,
    )
    a = LockInfo("redis", "ns", "a:1", "a:{id}")
    for i in range(3):
        wait = recorder.begin_wait(a, i + 1, None, object())
        hold = recorder.end_wait(wait, "acquired")
        assert hold is not None
        reporter.scan(heartbeat=True)
        reporter._send(recorder.drain(512))
        recorder.end_hold(hold)
    reporter.scan(heartbeat=True)
    reporter._send(recorder.drain(512))
    seqs = [r.attrs[events.ATTR_SEQUENCE] for body in transport.bodies for r in decode_logs(body)]
    names = [r.name for body in transport.bodies for r in decode_logs(body)]
    assert events.EVENT_HEARTBEAT in names
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    # the first batch was refused and dropped: its numbers are a gap, never reused
    assert seqs[0] > 1
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_retry_after_seconds_and_dates() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after("soon") is None


def test_recorder_pairs_once_and_reports_holds_before_waits() -> None:
    recorder = Recorder(report_after=0.0)
    a = LockInfo("redis", "ns", "a:1", "a:{id}")
    b = LockInfo("redis", "ns", "b:1", "b:{id}")
    target_a, target_b = object(), object()
    for _ in range(2):
        wait = recorder.begin_wait(a, 1, None, target_a)
        hold_a = recorder.end_wait(wait, "acquired")
        wait = recorder.begin_wait(b, 1, None, target_b)
        hold_b = recorder.end_wait(wait, "acquired")
        assert hold_a is not None
        assert hold_b is not None
        recorder.end_hold(hold_b)
        recorder.end_hold(hold_a)
    pairs = [e for e in recorder.drain(100) if e[0] == events.EVENT_ORDER_PAIR]
    assert len(pairs) == 1
    assert pairs[0][2][events.ATTR_ORDER_FIRST] == "a:{id}"

    hold = recorder.end_wait(recorder.begin_wait(a, 1, None, target_a), "acquired")
    wait = recorder.begin_wait(b, 1, None, target_b)
    import time

    recorder.report(time.perf_counter_ns(), recorder.due_waits(time.perf_counter_ns()))
    names = [e[0] for e in recorder.drain(100)]
    assert names == [events.EVENT_HOLD_START, events.EVENT_WAIT_START]
    recorder.end_wait(wait, "timeout")
    assert hold is not None
    recorder.end_hold(hold, "lost")
    names = [e[0] for e in recorder.drain(100)]
    assert names == [events.EVENT_WAIT_END, events.EVENT_LOCK_LOST, events.EVENT_HOLD_END]


def test_recorder_queue_is_bounded_and_counts_drops() -> None:
    recorder = Recorder(queue_size=3)
    for _ in range(5):
        recorder.emit(events.EVENT_HEARTBEAT, 0, {})
    assert recorder.pending() == 3
    assert recorder.dropped == 2


def test_spans_skip_the_sdk_only_when_the_sampler_surely_drops() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    from lockscope.instrumentation.spans import SpanFactory

    never = SpanFactory(TracerProvider(sampler=ALWAYS_OFF))
    assert never.surely_dropped()
    ratio = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    factory = SpanFactory(ratio)
    assert not factory.surely_dropped()  # a root: the ratio sampler must decide
    with ratio.get_tracer("t").start_as_current_span("unsampled parent"):
        assert factory.surely_dropped()
    sampled = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    factory = SpanFactory(sampled)
    with sampled.get_tracer("t").start_as_current_span("sampled parent"):
        assert not factory.surely_dropped()
    assert not SpanFactory(TracerProvider(sampler=TraceIdRatioBased(0.5))).surely_dropped()


def test_spans_know_when_the_sampler_surely_records() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    from lockscope.instrumentation.spans import SpanFactory

    assert SpanFactory(TracerProvider(sampler=ALWAYS_ON)).certainty() == 1
    assert SpanFactory(TracerProvider(sampler=ALWAYS_OFF)).certainty() == -1
    assert SpanFactory(TracerProvider(sampler=TraceIdRatioBased(1.0))).certainty() == 0
    default = TracerProvider()  # ParentBased(ALWAYS_ON)
    assert SpanFactory(default).certainty() == 1
    ratio = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    factory = SpanFactory(ratio)
    assert factory.certainty() == 0  # a root: the ratio sampler decides
    with ratio.get_tracer("t").start_as_current_span("sampled parent"):
        assert factory.certainty() == 1
    assert SpanFactory(TracerProvider(sampler=ParentBased(ALWAYS_OFF))).certainty() == -1


def test_reporter_side_reads_survive_concurrent_lock_calls() -> None:
    import threading

    recorder = Recorder(report_after=0.0)
    info = LockInfo("redis", "ns", "busy", "busy")
    stop = threading.Event()

    def hammer(actor: int) -> None:
        target = object()
        while not stop.is_set():
            hold = recorder.end_wait(recorder.begin_wait(info, actor, None, target), "acquired")
            assert hold is not None
            recorder.end_hold(hold)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        import time

        for _ in range(300):
            now = time.perf_counter_ns()
            recorder.report(now, recorder.due_waits(now))
            recorder.snapshot()
            recorder.drain(1000)
            recorder.stats.snapshot()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert recorder.acquires > 0


def test_recorder_holder_of_finds_the_hold_of_a_key_among_many() -> None:
    recorder = Recorder()
    infos = [LockInfo("redis", "ns", f"k:{i}", "k:{id}") for i in range(500)]
    targets = [object() for _ in infos]
    holds = [recorder.acquired(info, i, None, targets[i]) for i, info in enumerate(infos)]
    wanted = infos[321]
    assert recorder.holder_of(wanted.key) is holds[321]
    assert recorder.holder_of("redis:ns/k:none") is None
    # A second holder of the same key (a shared lock): the oldest hold answers until released.
    other = recorder.acquired(wanted, 9999, None, object())
    assert recorder.holder_of(wanted.key) is holds[321]
    recorder.end_hold(holds[321])
    assert recorder.holder_of(wanted.key) is other
    recorder.end_hold(other)
    assert recorder.holder_of(wanted.key) is None
    assert recorder.find_hold(object(), 0, wanted.key) is None
    # Lost: gone from the index too, and a late release of the lost hold changes nothing.
    lost = infos[7]
    recorder.end_hold(holds[7], "lost")
    assert recorder.holder_of(lost.key) is None
    recorder.end_hold(holds[7])
    assert recorder.holder_of(lost.key) is None
    # Re-entrant: two holds of one object; the key stays held until both end.
    again = recorder.acquired(infos[8], 8, None, targets[8])
    recorder.end_hold(holds[8])
    assert recorder.holder_of(infos[8].key) is again
    assert recorder.holder_of(infos[9].key) is holds[9]
    # Fork reset: the parent's holds are not the child's.
    recorder.reset()
    assert all(recorder.holder_of(info.key) is None for info in infos)
    recorder.end_hold(holds[9])  # the parent's hold, released in the child: ignored
    assert recorder.holder_of(infos[9].key) is None
