"""Hostile input: fuzzed OTLP bodies (protobuf and JSON messages from hypothesis
strategies, random bytes, truncated, oversized, gzip bombs, absurd attribute values, deep
nesting, wrong types) never earn a 5xx or break the agent, every rejection is counted by
reason, agent memory stays bounded; a lock-name cardinality attack keeps the lock-label
series at the cap and the agent's memory bounded (the full million runs in the soak)."""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.metrics_store import MetricsStore
from lockscope.agent.otlp_decode import (
    DecodeError,
    decode_logs,
    decode_traces,
    parse_request,
)
from lockscope.agent.otlp_decode_metrics import decode_metrics
from lockscope.agent.state import AgentState
from lockscope.testing.agent import InProcessAgent
from reliability_helpers import AgentProcess, cardinality_attack, request, rss_bytes

LOCK_KEYS = [
    ev.ATTR_LOCK_SYSTEM,
    ev.ATTR_LOCK_NAMESPACE,
    ev.ATTR_LOCK_NAME,
    ev.ATTR_LOCK_TEMPLATE,
    ev.ATTR_LOCK_MODE,
    ev.ATTR_LOCK_FIFO,
    ev.ATTR_LOCK_MAX_LEASES,
    ev.ATTR_LOCK_TTL,
    ev.ATTR_LOCK_EXPIRES_AT,
    ev.ATTR_LOCK_TOKEN,
    ev.ATTR_ACTOR_ID,
    ev.ATTR_SINCE,
    ev.ATTR_OUTCOME,
    ev.ATTR_HOLDS,
    ev.ATTR_WAITS,
    ev.ATTR_HEARTBEAT_INTERVAL,
    ev.ATTR_ORDER_FIRST,
    ev.ATTR_ORDER_SECOND,
    ev.ATTR_DROPPED,
    ev.RES_PROCESS_PID,
    ev.RES_SERVICE_NAME,
]

# -- strategies ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=16),
    st.sampled_from(["exclusive", "shared", "redis", "acquired", "", "\x00", "<script>"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(LOCK_KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)
attributes = st.dictionaries(st.sampled_from(LOCK_KEYS) | st.text(max_size=12), values, max_size=8)
timestamps = st.integers(min_value=0, max_value=2**64 - 1) | st.just(time.time_ns())
event_names = st.sampled_from(sorted(ev.EVENT_NAMES)) | st.text(max_size=20)


def any_value(value: Any) -> AnyValue:
    out = AnyValue()
    if value is None:
        return out  # an AnyValue with nothing set: legal on the wire
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(key_values(value))
    else:
        out.array_value.values.extend(any_value(v) for v in value)
    return out


def key_values(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


@st.composite
def logs_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.extend(key_values(draw(attributes)))
        scope = resource_logs.scope_logs.add()
        for _ in range(draw(st.integers(0, 4))):
            record = scope.log_records.add(time_unix_nano=draw(timestamps))
            name = draw(event_names)
            if draw(st.booleans()):
                record.event_name = name
            else:
                record.attributes.append(
                    KeyValue(key=ev.ATTR_EVENT_NAME, value=any_value(draw(values | st.just(name))))
                )
            record.attributes.extend(key_values(draw(attributes)))
    return request


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(key_values(draw(attributes)))
        scope = resource_spans.scope_spans.add()
        scope.scope.name = draw(st.sampled_from(["app", "lockscope.instrumentation", ""]))
        for _ in range(draw(st.integers(0, 4))):
            span = scope.spans.add(
                name=draw(st.sampled_from(["lock.acquire", "lock.hold", "other"])),
                start_time_unix_nano=draw(timestamps),
                end_time_unix_nano=draw(timestamps),
                trace_id=draw(st.binary(min_size=16, max_size=16)),
                span_id=draw(st.binary(min_size=8, max_size=8)),
            )
            span.attributes.extend(key_values(draw(attributes)))
    return request


@st.composite
def metrics_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.extend(key_values(draw(attributes)))
        scope = resource_metrics.scope_metrics.add()
        for _ in range(draw(st.integers(0, 3))):
            name = draw(
                st.sampled_from(
                    [ev.METRIC_ACQUISITIONS, ev.METRIC_WAIT_DURATION, ev.METRIC_LOCKS_LOST, "x"]
                )
            )
            metric = scope.metrics.add(name=name)
            temporality = draw(st.integers(0, 3))
            if draw(st.booleans()):
                metric.sum.aggregation_temporality = temporality
                for _ in range(draw(st.integers(0, 3))):
                    point = metric.sum.data_points.add(
                        start_time_unix_nano=draw(timestamps), time_unix_nano=draw(timestamps)
                    )
                    point.attributes.extend(key_values(draw(attributes)))
                    if draw(st.booleans()):
                        point.as_int = draw(st.integers(-(2**63), 2**63 - 1))
                    else:
                        point.as_double = draw(st.floats())
            else:
                metric.histogram.aggregation_temporality = temporality
                for _ in range(draw(st.integers(0, 3))):
                    point = metric.histogram.data_points.add(
                        count=draw(st.integers(0, 2**64 - 1)), sum=draw(st.floats())
                    )
                    point.explicit_bounds.extend(draw(st.lists(st.floats(), max_size=4)))
                    point.bucket_counts.extend(
                        draw(st.lists(st.integers(0, 2**64 - 1), max_size=6))
                    )
                    point.attributes.extend(key_values(draw(attributes)))
    return request


EXAMPLES = int(os.environ.get("LOCKSCOPE_FUZZ_EXAMPLES", "40"))
"""Examples per property; CI keeps it small, the soak command raises it (e.g. 2000)."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def _apply_all(state: AgentState, batch_events: list[Any]) -> Counter[str]:
    outcome: Counter[str] = Counter()
    for event in batch_events:
        try:
            state.apply(event)
        except ValueError as exc:  # a rejection, with a bounded reason
            reason = str(getattr(exc, "reason", "invalid"))
            assert len(reason) < 40
            outcome[reason] += 1
        else:
            outcome["applied"] += 1
    state.tick(time.time_ns())
    return outcome


# -- decoders and state, directly (fast, many examples) -------------------------------------


@FUZZ
@given(logs_requests(), st.sampled_from(["protobuf", "json"]))
def test_fuzzed_log_requests_decode_or_reject(message: ExportLogsServiceRequest, wire: str) -> None:
    body = (
        message.SerializeToString()
        if wire == "protobuf"
        else json.dumps(json_format.MessageToDict(message)).encode()
    )
    try:
        parsed = parse_request("logs", body, wire)  # type: ignore[arg-type]
    except DecodeError:
        assert wire == "json"  # protobuf we built is always valid protobuf
        return
    batch = decode_logs(parsed, time.time_ns())
    records = sum(len(s.log_records) for r in message.resource_logs for s in r.scope_logs)
    assert batch.received == records
    assert len(batch.events) + batch.ignored + batch.rejected.total() >= 0
    _apply_all(AgentState(AgentConfig()), batch.events)


@FUZZ
@given(trace_requests(), st.sampled_from(["protobuf", "json"]))
def test_fuzzed_trace_requests_decode_or_reject(
    message: ExportTraceServiceRequest, wire: str
) -> None:
    if wire == "protobuf":
        body = message.SerializeToString()
    else:
        # OTLP/JSON carries ids as hex, not base64.
        data = json_format.MessageToDict(message)
        for rs in data.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    for key in ("traceId", "spanId"):
                        if key in span:
                            import base64

                            span[key] = base64.b64decode(span[key]).hex()
        body = json.dumps(data).encode()
    parsed = parse_request("traces", body, wire)  # type: ignore[arg-type]
    batch = decode_traces(parsed)
    _apply_all(AgentState(AgentConfig()), batch.events)


@FUZZ
@given(metrics_requests(), st.sampled_from(["protobuf", "json"]))
def test_fuzzed_metric_requests_decode_or_reject(
    message: ExportMetricsServiceRequest, wire: str
) -> None:
    body = (
        message.SerializeToString()
        if wire == "protobuf"
        else json.dumps(json_format.MessageToDict(message)).encode()
    )
    try:
        parsed = parse_request("metrics", body, wire)  # type: ignore[arg-type]
    except DecodeError:
        assert wire == "json"
        return
    batch = decode_metrics(parsed)
    MetricsStore(max_series=50).add(batch.points)


@FUZZ
@given(
    st.sampled_from(["logs", "traces", "metrics"]),
    st.sampled_from(["protobuf", "json"]),
    st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
)
def test_random_bytes_are_decode_errors_or_harmless(signal: str, wire: str, body: bytes) -> None:
    try:
        parsed = parse_request(signal, body, wire)  # type: ignore[arg-type]
    except DecodeError:
        return
    if signal == "metrics":
        MetricsStore(max_series=50).add(decode_metrics(parsed).points)
    else:
        decoded = decode_logs(parsed, time.time_ns()) if signal == "logs" else decode_traces(parsed)
        _apply_all(AgentState(AgentConfig()), decoded.events)


@FUZZ
@given(logs_requests(), st.data())
def test_truncated_protobuf_never_escapes_decode_error(
    message: ExportLogsServiceRequest, data: st.DataObject
) -> None:
    body = message.SerializeToString()
    cut = data.draw(st.integers(0, max(0, len(body) - 1)))
    try:
        parsed = parse_request("logs", body[:cut], "protobuf")
    except DecodeError:
        return
    _apply_all(AgentState(AgentConfig()), decode_logs(parsed, time.time_ns()).events)


def test_absurd_attribute_values_are_rejected_not_crashing() -> None:
    state = AgentState(AgentConfig())
    base = {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: "ns",
        ev.ATTR_LOCK_MODE: "exclusive",
        ev.ATTR_ACTOR_ID: "thread:1",
    }
    absurd: list[dict[str, Any]] = [
        {ev.ATTR_LOCK_NAME: "x" * 1_000_000, ev.ATTR_SINCE: 1},
        {ev.ATTR_LOCK_NAME: "a", ev.ATTR_SINCE: -(2**63)},
        {ev.ATTR_LOCK_NAME: "a", ev.ATTR_SINCE: math.nan},
        {ev.ATTR_LOCK_NAME: "a", ev.ATTR_SINCE: "yesterday"},
        {ev.ATTR_LOCK_NAME: ["a", "b"], ev.ATTR_SINCE: 1},
        {ev.ATTR_LOCK_NAME: {"nested": {"deeper": 1}}, ev.ATTR_SINCE: 1},
        {ev.ATTR_LOCK_NAME: "a", ev.ATTR_LOCK_MAX_LEASES: 2**62, ev.ATTR_SINCE: 1},
        {ev.ATTR_LOCK_NAME: "a", ev.ATTR_LOCK_TTL: math.inf, ev.ATTR_SINCE: 1},
        {ev.ATTR_LOCK_NAME: "a", ev.ATTR_LOCK_MODE: "🔒" * 1000, ev.ATTR_SINCE: 1},
        {ev.ATTR_LOCK_NAME: "", ev.ATTR_SINCE: 1},
    ]
    message = ExportLogsServiceRequest()
    scope = message.resource_logs.add().scope_logs.add()
    for name in (ev.EVENT_HOLD_START, ev.EVENT_WAIT_START, ev.EVENT_HEARTBEAT):
        for attrs in absurd:
            record = scope.log_records.add(time_unix_nano=time.time_ns(), event_name=name)
            record.attributes.extend(key_values({**base, **attrs}))
    # Deep nesting inside one attribute (deeper is refused by protobuf itself, see HOSTILE).
    deep: Any = "leaf"
    for _ in range(25):
        deep = [deep]
    record = scope.log_records.add(time_unix_nano=time.time_ns(), event_name=ev.EVENT_HEARTBEAT)
    record.attributes.extend(key_values({ev.ATTR_HOLDS: deep}))
    parsed = parse_request("logs", message.SerializeToString(), "protobuf")
    batch = decode_logs(parsed, time.time_ns())
    outcome = _apply_all(state, batch.events)
    assert sum(outcome.values()) + batch.rejected.total() == len(absurd) * 3 + 1
    assert outcome["applied"] < len(absurd) * 3  # most of it was refused


# -- over HTTP, on a real agent: status codes and counters -----------------------------------

LIMIT = 64 * 1024


def _gzip_bomb(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


def _deep_json(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand."""
    length, out = len(payload), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(out) + payload


def _deep_protobuf(depth: int) -> bytes:
    """A logs request whose one attribute is an array nested ``depth`` levels deep."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(5, _field(1, value))  # AnyValue.array_value -> ArrayValue.values
    key_value = _field(1, ev.ATTR_HOLDS.encode()) + _field(2, value)
    record = _field(6, key_value)  # LogRecord.attributes
    return _field(1, _field(2, _field(2, record)))  # resource_logs.scope_logs.log_records


HOSTILE: list[tuple[str, dict[str, str], bytes, int, str | None]] = [
    # name, headers, body, expected status, rejected reason
    ("garbage", {"Content-Type": "application/x-protobuf"}, b"\xff" * 100, 400, "decode_error"),
    (
        "truncated",
        {"Content-Type": "application/x-protobuf"},
        ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord(event_name="x" * 50)])])
            ]
        ).SerializeToString()[:-7],
        400,
        "decode_error",
    ),
    (
        "oversized",
        {"Content-Type": "application/x-protobuf"},
        b"\0" * (LIMIT + 1),
        413,
        "too_large",
    ),
    (
        "gzip bomb",
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        _gzip_bomb(50 * 1024 * 1024),
        413,
        "too_large",
    ),
    (
        "truncated gzip",
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        gzip.compress(b"\0" * 100)[:-4],
        400,
        "decode_error",
    ),
    ("deep json", {"Content-Type": "application/json"}, _deep_json(20_000), 400, "decode_error"),
    (
        "deep protobuf",
        {"Content-Type": "application/x-protobuf"},
        _deep_protobuf(5_000),
        400,
        "decode_error",
    ),
    (
        "deep json object",
        {"Content-Type": "application/json"},
        ('{"resourceLogs":' * 2000 + "1" + "}" * 2000).encode(),
        400,
        "decode_error",
    ),
    ("json not an object", {"Content-Type": "application/json"}, b"[1,2,3]", 400, "decode_error"),
    (
        "json wrong types",
        {"Content-Type": "application/json"},
        b'{"resourceLogs": [{"scopeLogs": "nope"}]}',
        400,
        "decode_error",
    ),
    (
        "invalid utf-8 json",
        {"Content-Type": "application/json"},
        b'{"a": "\xff\xfe"}',
        400,
        "decode_error",
    ),
    ("text/plain", {"Content-Type": "text/plain"}, b"hello", 415, "unsupported_media_type"),
    (
        "brotli",
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"},
        b"\0",
        415,
        "unsupported_encoding",
    ),
    ("empty", {"Content-Type": "application/x-protobuf"}, b"", 200, None),
]


@pytest.fixture(scope="module")
def small_agent() -> Iterator[InProcessAgent]:
    with InProcessAgent(max_request_bytes=LIMIT) as agent:
        yield agent


@pytest.mark.parametrize(
    ("name", "headers", "body", "status", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_bodies_get_4xx_and_are_counted(
    small_agent: InProcessAgent,
    name: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    reason: str | None,
) -> None:
    stats = small_agent.runner.stats
    before = Counter(stats.rejected)
    # These bodies use the logs message's field names/numbers (another signal ignores them).
    logs_only = name in ("deep protobuf", "json wrong types")
    signals = ("logs",) if logs_only else ("logs", "traces", "metrics")
    for signal in signals:
        got, _, _ = request(f"{small_agent.otlp_url}/v1/{signal}", data=body, headers=headers)
        assert got == status, (name, signal)
    delta = Counter(stats.rejected)
    delta.subtract(before)
    expected = Counter({reason: len(signals)}) if reason else Counter()
    assert +delta == expected
    assert request(small_agent.http_url + "/healthz")[0] == 200


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    signal=st.sampled_from(["logs", "traces", "metrics"]),
    content_type=st.sampled_from(["application/x-protobuf", "application/json", "text/html", ""]),
    encoding=st.sampled_from(["", "gzip", "deflate", "identity", "zstd"]),
    body=st.binary(max_size=2000),
)
def test_fuzzed_requests_over_http_never_5xx(
    small_agent: InProcessAgent, signal: str, content_type: str, encoding: str, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if encoding:
        headers["Content-Encoding"] = encoding
    before = sum(small_agent.runner.stats.rejected.values())
    status, _, _ = request(f"{small_agent.otlp_url}/v1/{signal}", data=body, headers=headers)
    assert status in (200, 400, 413, 415)
    if status != 200:
        assert sum(small_agent.runner.stats.rejected.values()) == before + 1


# -- memory under hostile traffic, and the cardinality attack, on a real agent process -------


def test_agent_memory_stays_bounded_under_hostile_bodies() -> None:
    agent = AgentProcess("--max-request-bytes", str(1024 * 1024)).start()
    try:
        bomb = _gzip_bomb(1024 * 1024 * 1024)  # 1 GiB of zeros, ~1 MiB on the wire
        deep = _deep_json(200_000)
        url = agent.otlp_url + "/v1/logs"
        warm = request(
            url,
            data=bomb,
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        )
        assert warm[0] == 413
        before = rss_bytes(agent.pid)
        for _ in range(20):
            assert (
                request(
                    url,
                    data=bomb,
                    headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
                )[0]
                == 413
            )
            assert request(url, data=deep, headers={"Content-Type": "application/json"})[0] == 400
            assert (
                request(
                    url,
                    data=b"\x0a" * 2_000_000,
                    headers={"Content-Type": "application/x-protobuf"},
                )[0]
                == 413
            )
        grown = rss_bytes(agent.pid) - before
        print(
            f"agent RSS {before / 2**20:.1f} MiB, grew {grown / 2**20:.1f} MiB "
            "over 60 hostile requests"
        )
        assert grown < 64 * 2**20
        assert request(agent.http_url + "/healthz")[0] == 200
    finally:
        agent.stop()


def test_lock_name_cardinality_attack_100k(tmp_path: Any) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[limits]\nmax_holds = 20000\nmax_locks = 20000\n")
    agent = AgentProcess("--config", str(config)).start()
    try:
        result = cardinality_attack(agent.otlp_url, agent.http_url, agent.pid, names=100_000)
        print(result)
        assert result["lock_label_values"] <= 1_001  # the cap (1,000) plus "__other__"
        assert result["limits_hit"] >= 100_000 - 20_000  # refused and counted
        assert result["rejected"] >= 100_000 - 20_000
        assert result["rss_growth_bytes"] < 200 * 2**20
    finally:
        agent.stop()
