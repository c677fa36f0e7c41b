"""The OTLP/HTTP receiver against a real in-process agent on free ports: formats, encodings,
bad input (400/413/415, never a 5xx, the agent keeps serving), partial_success, spans and
metrics."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from lockscope import events as ev
from lockscope.agent.app import AgentRunner
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.otlp_decode import (
    DecodeError,
    decode_traces,
    parse_request,
    process_from_attributes,
)
from lockscope.agent.state import AgentState
from lockscope.testing.agent import any_value, encode_logs, logs_request

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
LIMIT = 1024 * 1024
T0 = 1_700_000_000_000_000_000

P1 = ProcessInfo(service="billing", host="h1", pid=101, instance="billing-1")


def hold(lock: str, actor: str = "thread:1", process: ProcessInfo = P1, t: int = T0) -> Event:
    return Event(
        ev.EVENT_HOLD_START,
        t,
        process,
        {
            ev.ATTR_LOCK_SYSTEM: "redis",
            ev.ATTR_LOCK_NAMESPACE: "127.0.0.1:6379/0",
            ev.ATTR_LOCK_NAME: lock,
            ev.ATTR_LOCK_MODE: "exclusive",
            ev.ATTR_ACTOR_ID: actor,
            ev.ATTR_SINCE: t,
        },
    )


@pytest.fixture
async def agent() -> AsyncIterator[AgentRunner]:
    runner = AgentRunner(otlp=("127.0.0.1", 0), http=("127.0.0.1", 0), max_request_bytes=LIMIT)
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress off: responses are checked as sent.
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


async def post(
    session: aiohttp.ClientSession,
    agent: AgentRunner,
    path: str,
    body: Any,
    content_type: str | None = PROTOBUF,
    **headers: str,
) -> tuple[int, str, bytes]:
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with session.post(agent.otlp_url + path, data=body, headers=headers) as response:
        return response.status, response.content_type, await response.read()


async def assert_serving(session: aiohttp.ClientSession, agent: AgentRunner) -> None:
    status, _, _ = await post(session, agent, "/v1/logs", encode_logs([hold("alive")]))
    assert status == 200
    async with session.get(agent.http_url + "/healthz") as response:
        assert response.status == 200


def logs_response(body: bytes) -> Any:
    response = logs_service_pb2.ExportLogsServiceResponse()
    response.ParseFromString(body)
    return response


# -- good input ---------------------------------------------------------------------------


async def test_protobuf_logs_become_events(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    status, ctype, body = await post(
        session, agent, "/v1/logs", encode_logs([hold("a"), hold("b", "thread:2")])
    )
    assert (status, ctype) == (200, PROTOBUF)
    assert not logs_response(body).HasField("partial_success")
    assert agent.stats.received["logs"] == 2
    assert agent.stats.events == 2


async def test_json_logs_answered_in_json(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    status, ctype, body = await post(
        session, agent, "/v1/logs", encode_logs([hold("a")], "json"), JSON
    )
    assert (status, ctype) == (200, JSON)
    assert json.loads(body) == {}
    assert agent.stats.events == 1


async def test_otlp_json_rules(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    """Hex ids, int64 as strings and numbers, enums as ints, unknown fields, both key styles."""
    record = {
        "timeUnixNano": str(T0),
        "observedTimeUnixNano": T0,
        "severityNumber": 9,
        "eventName": ev.EVENT_HOLD_START,
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "someFutureField": {"nested": [1, 2]},
        "attributes": [
            {"key": ev.ATTR_LOCK_SYSTEM, "value": {"stringValue": "redis"}},
            {"key": ev.ATTR_LOCK_NAMESPACE, "value": {"stringValue": "ns"}},
            {"key": ev.ATTR_LOCK_NAME, "value": {"stringValue": "orders/42"}},
            {"key": ev.ATTR_ACTOR_ID, "value": {"stringValue": "thread:7"}},
            {"key": ev.ATTR_SINCE, "value": {"intValue": str(T0)}},
            {"key": ev.ATTR_LOCK_TOKEN, "value": {"intValue": 17}},
        ],
    }
    snake_record = {
        "time_unix_nano": str(T0 + 1),
        "event_name": ev.EVENT_HOLD_START,
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "attributes": [
            {"key": ev.ATTR_LOCK_SYSTEM, "value": {"string_value": "redis"}},
            {"key": ev.ATTR_LOCK_NAMESPACE, "value": {"string_value": "ns"}},
            {"key": ev.ATTR_LOCK_NAME, "value": {"string_value": "orders/43"}},
            {"key": ev.ATTR_ACTOR_ID, "value": {"string_value": "thread:8"}},
        ],
    }
    document = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "billing"}},
                        {"key": "process.pid", "value": {"intValue": "4242"}},
                    ]
                },
                "scopeLogs": [{"scope": {"name": "x"}, "logRecords": [record]}],
                "unknownTopLevel": True,
            }
        ],
        "resource_logs_extra": 1,
    }
    status, _, body = await post(session, agent, "/v1/logs", json.dumps(document), JSON)
    assert status == 200, body
    assert agent.stats.events == 1
    snake = {"resource_logs": [{"scope_logs": [{"log_records": [snake_record]}]}]}
    status, _, body = await post(session, agent, "/v1/logs", json.dumps(snake), JSON)
    assert status == 200, body
    assert agent.stats.events == 2

    request = parse_request("logs", json.dumps(document).encode(), "json")
    parsed = request.resource_logs[0].scope_logs[0].log_records[0]
    assert parsed.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert parsed.span_id.hex() == "eee19b7ec3c1b174"
    assert parsed.time_unix_nano == T0
    assert parsed.severity_number == 9


async def test_gzip_and_deflate(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    body = encode_logs([hold("a")])
    status, _, _ = await post(
        session, agent, "/v1/logs", gzip.compress(body), **{"Content-Encoding": "gzip"}
    )
    assert status == 200
    status, _, _ = await post(
        session, agent, "/v1/logs", zlib.compress(body), **{"Content-Encoding": "deflate"}
    )
    assert status == 200
    # Two concatenated gzip members are one body (RFC 1952).
    halves = gzip.compress(body[:10]) + gzip.compress(body[10:])
    status, _, _ = await post(session, agent, "/v1/logs", halves, **{"Content-Encoding": "gzip"})
    assert status == 200
    json_body = gzip.compress(encode_logs([hold("b")], "json"))
    status, ctype, _ = await post(
        session, agent, "/v1/logs", json_body, JSON, **{"Content-Encoding": "gzip"}
    )
    assert (status, ctype) == (200, JSON)
    assert agent.stats.events == 4


async def test_other_logs_are_ignored_not_rejected(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    request = logs_request([hold("a")])
    other = request.resource_logs[0].scope_logs[0].log_records.add(event_name="app.login")
    other.body.string_value = "user logged in"
    request.resource_logs[0].scope_logs[0].log_records.add()  # a plain log line
    status, _, body = await post(session, agent, "/v1/logs", request.SerializeToString())
    assert status == 200
    assert not logs_response(body).HasField("partial_success")
    assert agent.stats.received["logs"] == 3
    assert agent.stats.ignored["logs"] == 2
    assert agent.stats.events == 1


# -- rejected records: partial_success ----------------------------------------------------


async def test_partial_success_for_rejected_records(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    bad = Event(ev.EVENT_HOLD_START, T0, P1, {ev.ATTR_ACTOR_ID: "thread:1"})  # no lock
    unknown = Event("lockscope.from.the.future", T0, P1, {})
    status, _, body = await post(
        session, agent, "/v1/logs", encode_logs([hold("a"), bad, unknown, bad])
    )
    assert status == 200
    partial = logs_response(body).partial_success
    assert partial.rejected_log_records == 3
    assert partial.error_message
    assert agent.stats.events == 1
    assert agent.stats.rejected["unknown_event"] == 1
    assert sum(agent.stats.rejected.values()) == 3

    status, ctype, body = await post(
        session, agent, "/v1/logs", encode_logs([bad, hold("b")], "json"), JSON
    )
    assert (status, ctype) == (200, JSON)
    answer = json.loads(body)
    assert int(answer["partialSuccess"]["rejectedLogRecords"]) == 1
    assert answer["partialSuccess"]["errorMessage"]


async def test_a_large_batch_is_applied_whole(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    events = [hold(f"bulk/{i}", f"thread:{i}") for i in range(2400)]  # just under LIMIT
    status, _, body = await post(session, agent, "/v1/logs", encode_logs(events))
    assert status == 200
    assert not logs_response(body).HasField("partial_success")
    assert agent.stats.events == 2400
    assert agent.state.hold_count == 2400


class BrokenState(AgentState):
    """A state with a bug that one lock name triggers."""

    def apply(self, event: Event, now_ns: int | None = None) -> None:
        if event.attrs.get(ev.ATTR_LOCK_NAME) == "poison":
            raise RuntimeError("bug")
        super().apply(event, now_ns)


async def test_a_state_bug_rejects_the_record_not_the_request(
    session: aiohttp.ClientSession,
) -> None:
    async with AgentRunner(
        otlp=("127.0.0.1", 0), http=("127.0.0.1", 0), state=BrokenState()
    ) as runner:
        status, _, body = await post(
            session, runner, "/v1/logs", encode_logs([hold("poison"), hold("fine")])
        )
        assert status == 200
        assert logs_response(body).partial_success.rejected_log_records == 1
        assert runner.stats.rejected["internal_error"] == 1
        assert runner.stats.events == 1
        await assert_serving(session, runner)


# -- bad input: 400 / 413 / 415, and the agent keeps serving ------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "headers"),
    [
        pytest.param(b"\xff\xfe garbage \x00\x01", PROTOBUF, {}, id="garbage-protobuf"),
        pytest.param(None, PROTOBUF, {}, id="truncated-protobuf"),
        pytest.param(b"{not json", JSON, {}, id="invalid-json"),
        pytest.param(b"[1, 2, 3]", JSON, {}, id="json-not-an-object"),
        pytest.param(b'{"resourceLogs": "nope"}', JSON, {}, id="json-wrong-shape"),
        pytest.param(
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}',
            JSON,
            {},
            id="json-bad-trace-id",
        ),
        pytest.param(b"\xc3\x28", JSON, {}, id="json-not-utf8"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, JSON, {}, id="json-too-deep"),
        pytest.param(
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}',
            JSON,
            {},
            id="json-bad-int64",
        ),
        pytest.param(b"not gzip at all", PROTOBUF, {"Content-Encoding": "gzip"}, id="bad-gzip"),
        pytest.param(None, PROTOBUF, {"Content-Encoding": "gzip"}, id="truncated-gzip"),
    ],
)
async def test_undecodable_bodies_get_400(
    agent: AgentRunner,
    session: aiohttp.ClientSession,
    body: bytes | None,
    content_type: str,
    headers: dict[str, str],
) -> None:
    full = encode_logs([hold("a"), hold("b")])
    if body is None:
        body = full[: len(full) - 7]
        if headers:
            body = gzip.compress(full)[:-12]
    status, ctype, answer = await post(session, agent, "/v1/logs", body, content_type, **headers)
    assert status == 400
    assert ctype == content_type
    if content_type == JSON:
        assert json.loads(answer)["code"] == 3
    assert agent.stats.rejected["decode_error"] == 1
    await assert_serving(session, agent)


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [
        pytest.param("text/plain", {}, id="text"),
        pytest.param("application/grpc", {}, id="grpc"),
        pytest.param(None, {}, id="none"),
        pytest.param(PROTOBUF, {"Content-Encoding": "br"}, id="brotli"),
    ],
)
async def test_unsupported_media_gets_415(
    agent: AgentRunner,
    session: aiohttp.ClientSession,
    content_type: str | None,
    headers: dict[str, str],
) -> None:
    status, _, _ = await post(
        session, agent, "/v1/logs", encode_logs([hold("a")]), content_type, **headers
    )
    assert status == 415
    await assert_serving(session, agent)


async def test_oversized_body_gets_413(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    big = b"\x00" * (LIMIT + 1)
    status, _, _ = await post(session, agent, "/v1/logs", big)
    assert status == 413

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while streaming.
        for _ in range(LIMIT // 65536 + 2):
            yield b"\x00" * 65536

    status, _, _ = await post(session, agent, "/v1/logs", chunked())
    assert status == 413
    assert agent.stats.rejected["too_large"] == 2
    await assert_serving(session, agent)


async def test_gzip_bomb_is_413_without_inflating(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    inflated = 64 * LIMIT
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(compressor.compress(b"\x00" * LIMIT) for _ in range(64)) + compressor.flush()
    assert len(bomb) < LIMIT  # small on the wire: only the post-decompression check catches it

    tracemalloc.start()
    try:
        status, _, _ = await post(session, agent, "/v1/logs", bomb, **{"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413
    assert peak < inflated // 8, f"peak {peak} bytes while refusing a {inflated}-byte bomb"
    await assert_serving(session, agent)


async def test_a_body_exactly_at_the_limit_is_accepted_after_decompression(
    session: aiohttp.ClientSession,
) -> None:
    body = encode_logs([hold(f"lock-{i}") for i in range(50)])
    async with AgentRunner(
        otlp=("127.0.0.1", 0), http=("127.0.0.1", 0), max_request_bytes=len(body)
    ) as runner:
        status, _, _ = await post(
            session, runner, "/v1/logs", gzip.compress(body), **{"Content-Encoding": "gzip"}
        )
        assert status == 200
        status, _, _ = await post(
            session,
            runner,
            "/v1/logs",
            gzip.compress(body + b"\x00"),
            **{"Content-Encoding": "gzip"},
        )
        assert status == 413


async def test_wrong_method_and_path(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    async with session.get(agent.otlp_url + "/v1/logs") as response:
        assert response.status == 405
    status, _, _ = await post(session, agent, "/v1/profiles", b"")
    assert status == 404
    await assert_serving(session, agent)


# -- spans from any OTLP source -----------------------------------------------------------


def lock_span(name: str, start: int, end: int, **attrs: Any) -> Any:
    span = trace_pb2.Span(
        name=name,
        trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
        span_id=bytes.fromhex("b7ad6b7169203331"),
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
    )
    base = {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: "ns",
        ev.ATTR_LOCK_NAME: "orders/1",
        "thread.id": 77,
    }
    for key, value in {**base, **attrs}.items():
        span.attributes.add(key=key, value=any_value(value))
    return span


def traces_request(*spans: Any, scope: str = "my.go.app") -> Any:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(
        key="service.name", value=common_pb2.AnyValue(string_value="go-worker")
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = scope
    scope_spans.spans.extend(spans)
    return request


def test_lock_spans_translate_to_events() -> None:
    request = traces_request(
        lock_span(ev.SPAN_ACQUIRE, T0, T0 + 250_000_000),
        lock_span(ev.SPAN_HOLD, T0 + 250_000_000, T0 + 1_250_000_000, **{ev.ATTR_OUTCOME: "lost"}),
        trace_pb2.Span(name="GET /orders", start_time_unix_nano=T0, end_time_unix_nano=T0 + 1),
    )
    request.resource_spans[0].scope_spans[0].spans[0].status.code = 2  # ERROR
    batch = decode_traces(request)
    assert (batch.received, batch.ignored) == (3, 1)
    names = [e.name for e in batch.events]
    assert names == [
        ev.EVENT_WAIT_START,
        ev.EVENT_WAIT_END,
        ev.EVENT_HOLD_START,
        ev.EVENT_HOLD_END,
    ]
    wait_start, wait_end, hold_start, hold_end = batch.events
    assert wait_start.time_ns == T0
    assert wait_end.time_ns == T0 + 250_000_000
    assert wait_end.attrs[ev.ATTR_OUTCOME] == "error"
    assert wait_end.attrs[ev.ATTR_WAIT_DURATION] == pytest.approx(0.25)
    assert hold_end.attrs[ev.ATTR_OUTCOME] == "lost"
    assert hold_end.attrs[ev.ATTR_HOLD_DURATION] == pytest.approx(1.0)
    assert hold_start.attrs[ev.ATTR_SINCE] == T0 + 250_000_000
    assert {e.attrs[ev.ATTR_ACTOR_ID] for e in batch.events} == {"thread:77"}
    assert {e.attrs[ev.ATTR_LOCK_NAME] for e in batch.events} == {"orders/1"}
    process = wait_start.process
    assert process.service == "go-worker"
    assert process.instance == "go-worker/unknown_host/0"


def test_shim_spans_are_not_counted_twice() -> None:
    batch = decode_traces(
        traces_request(lock_span(ev.SPAN_HOLD, T0, T0 + 5), scope="lockscope.instrumentation")
    )
    assert batch.events == []
    assert batch.ignored == 1


def test_spans_without_a_lock_name_or_with_bad_times_are_rejected() -> None:
    span = lock_span(ev.SPAN_HOLD, T0, T0 + 5)
    del span.attributes[:]
    batch = decode_traces(traces_request(span, lock_span(ev.SPAN_ACQUIRE, T0 + 5, T0)))
    assert batch.events == []
    assert dict(batch.rejected) == {"missing_lock_name": 1, "invalid_span_times": 1}


async def test_spans_over_http_protobuf_and_json(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    request = traces_request(
        lock_span(ev.SPAN_ACQUIRE, T0, T0 + 10), lock_span(ev.SPAN_HOLD, T0 + 10, T0 + 20)
    )
    status, _, body = await post(session, agent, "/v1/traces", request.SerializeToString())
    assert status == 200
    response = trace_service_pb2.ExportTraceServiceResponse()
    response.ParseFromString(body)
    assert not response.HasField("partial_success")
    assert agent.stats.received["traces"] == 2
    assert agent.stats.events == 4

    # OTLP/JSON: hex ids, as an OpenTelemetry SDK in another language sends them.
    document = json_format.MessageToDict(request)
    for span_json in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        span_json["traceId"] = "0af7651916cd43dd8448eb211c80319c"
        span_json["spanId"] = "b7ad6b7169203331"
        span_json["parentSpanId"] = ""
    status, ctype, body = await post(session, agent, "/v1/traces", json.dumps(document), JSON)
    assert (status, ctype) == (200, JSON), body
    assert agent.stats.events == 8


# -- metrics ------------------------------------------------------------------------------


def counter_request(value: int, start: int, outcome: str = "acquired") -> Any:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    for key, val in {"service.name": "billing", "service.instance.id": "billing-1"}.items():
        resource_metrics.resource.attributes.add(key=key, value=any_value(val))
    scope = resource_metrics.scope_metrics.add()
    metric = scope.metrics.add(name=ev.METRIC_ACQUISITIONS)
    metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = True
    point = metric.sum.data_points.add(
        start_time_unix_nano=start, time_unix_nano=start + value + 1, as_int=value
    )
    point.attributes.add(key=ev.ATTR_LOCK_TEMPLATE, value=any_value("orders/{id}"))
    point.attributes.add(key=ev.ATTR_OUTCOME, value=any_value(outcome))
    histogram = scope.metrics.add(name=ev.METRIC_WAIT_DURATION)
    histogram.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    histogram.histogram.data_points.add(
        start_time_unix_nano=start,
        time_unix_nano=start + value + 1,
        count=value,
        sum=value * 0.5,
        explicit_bounds=[0.1, 1.0],
        bucket_counts=[0, value, 0],
    )
    scope.metrics.add(name="http.server.duration").gauge.data_points.add(as_double=1.0)
    return request


async def test_metrics_are_stored_per_process_with_reset_handling(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    for value, start in ((5, T0), (9, T0), (3, T0 + 10**12)):  # the third is a restart
        status, ctype, body = await post(
            session, agent, "/v1/metrics", counter_request(value, start).SerializeToString()
        )
        assert (status, ctype) == (200, PROTOBUF)
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        response.ParseFromString(body)
        assert not response.HasField("partial_success")
    key = (
        ev.METRIC_ACQUISITIONS,
        ((ev.ATTR_LOCK_TEMPLATE, "orders/{id}"), (ev.ATTR_OUTCOME, "acquired")),
    )
    assert agent.metrics_store.sums()[key] == 12.0
    histogram = agent.metrics_store.histograms()[(ev.METRIC_WAIT_DURATION, ())]
    assert (histogram.count, histogram.bucket_counts) == (12, [0, 12, 0])
    assert agent.stats.received["metrics"] == 9
    assert agent.stats.ignored["metrics"] == 3

    agent.metrics_store.forget_process("billing-1")
    assert agent.metrics_store.sums()[key] == 12.0  # a forgotten process never lowers a total
    assert agent.metrics_store.processes() == []

    document = json_format.MessageToDict(counter_request(4, T0 + 2 * 10**12))
    status, ctype, _ = await post(session, agent, "/v1/metrics", json.dumps(document), JSON)
    assert (status, ctype) == (200, JSON)
    assert agent.metrics_store.sums()[key] == 16.0


def test_idle_processes_are_forgotten_without_lowering_totals() -> None:
    from lockscope.agent.metrics_store import MetricsStore
    from lockscope.agent.otlp_decode_metrics import decode_metrics

    store = MetricsStore()
    store.add(decode_metrics(counter_request(5, T0)).points)
    before = store.sums()
    assert store.forget_idle(600.0) == []
    assert store.forget_idle(600.0, now=time.monotonic() + 601) == ["billing-1"]
    assert store.processes() == []
    assert store.series_count == 0
    assert store.sums() == before


def test_metric_series_cap() -> None:
    from lockscope.agent.metrics_store import MetricsStore
    from lockscope.agent.otlp_decode_metrics import decode_metrics

    store = MetricsStore(max_series=1)
    points = decode_metrics(counter_request(1, T0)).points
    assert len(points) == 2
    assert store.add(points) == 1
    assert store.dropped_points == 1
    assert store.series_count == 1


# -- decoding helpers ---------------------------------------------------------------------


def test_process_fallbacks() -> None:
    assert process_from_attributes({}) == ProcessInfo(
        "unknown_service", "unknown_host", 0, "unknown_service/unknown_host/0"
    )
    assert process_from_attributes(
        {"service.name": "s", "host.name": "h", "process.pid": "12"}
    ) == ProcessInfo("s", "h", 12, "s/h/12")
    info = process_from_attributes({"service.name": "s", "service.instance.id": "i-1"})
    assert info.instance == "i-1"


def test_nested_attribute_values_decode() -> None:
    attrs = {
        ev.ATTR_HOLDS: [{ev.ATTR_LOCK_NAME: "a", ev.ATTR_SINCE: 5}],
        "flag": True,
        "ratio": 0.5,
        "raw": b"\x01",
    }
    event = Event(ev.EVENT_HEARTBEAT, T0, P1, attrs)
    request = parse_request("logs", encode_logs([event]), "protobuf")
    from lockscope.agent.otlp_decode import decode_logs

    (decoded,) = decode_logs(request).events
    assert dict(decoded.attrs) == attrs
    assert decoded.process == P1
    with pytest.raises(DecodeError):
        parse_request("logs", b"\x0a\xff", "protobuf")
