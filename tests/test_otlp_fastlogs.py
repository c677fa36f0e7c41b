"""The fast protobuf logs decoder (lockscope.agent.otlp_fastlogs) against the standard one.

``parse_request("logs", body, "protobuf")`` takes the fast path; ``decode_logs`` of a
standard ``ExportLogsServiceRequest`` takes the old one.  Both must produce the same
events and counts for any request, and the fast path must reject what the standard
classes reject.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from lockscope import events as ev
from lockscope.agent.otlp_decode import DecodedBatch, DecodeError, decode_logs, parse_request

KEYS = [
    ev.ATTR_LOCK_NAME,
    ev.ATTR_LOCK_SYSTEM,
    ev.ATTR_ACTOR_ID,
    ev.ATTR_SINCE,
    ev.ATTR_HOLDS,
    ev.ATTR_EVENT_NAME,
    ev.RES_SERVICE_NAME,
    ev.RES_PROCESS_PID,
    ev.RES_SERVICE_INSTANCE,
    "k",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.sampled_from(["redis", "thread:1", "exclusive", ""]),  # repeated: cache hits
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=12,
)
pairs = st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=8)  # duplicate keys too
names = st.sampled_from([*sorted(ev.EVENT_NAMES), "lockscope.nope", "app.event", ""])


def any_value(value: Any) -> AnyValue:
    out = AnyValue()
    if value is None:
        return out
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
        out.kvlist_value.values.extend(
            KeyValue(key=k, value=any_value(v)) for k, v in value.items()
        )
    else:
        out.array_value.values.extend(any_value(v) for v in value)
    return out


@st.composite
def requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.extend(
            KeyValue(key=k, value=any_value(v)) for k, v in draw(pairs)
        )
        for _ in range(draw(st.integers(1, 2))):
            scope = resource_logs.scope_logs.add()
            for _ in range(draw(st.integers(0, 4))):
                record = scope.log_records.add(
                    time_unix_nano=draw(st.sampled_from([0, 1, time.time_ns()])),
                    observed_time_unix_nano=draw(st.sampled_from([0, 2])),
                    event_name=draw(names),
                )
                record.attributes.extend(
                    KeyValue(key=k, value=any_value(v)) for k, v in draw(pairs)
                )
    return request


def _plain(value: Any) -> Any:
    """Comparable form: NaN equal to NaN, bool distinct from int."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return (type(value).__name__, value)


def _summary(batch: DecodedBatch) -> Any:
    return (
        [(e.name, e.time_ns, e.process, _plain(dict(e.attrs))) for e in batch.events],
        batch.received,
        batch.ignored,
        dict(batch.rejected),
    )


@settings(
    max_examples=int(os.environ.get("LOCKSCOPE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(requests())
def test_fast_path_decodes_like_the_standard_classes(request: ExportLogsServiceRequest) -> None:
    body = request.SerializeToString()
    now = time.time_ns()
    fast = decode_logs(parse_request("logs", body, "protobuf"), now)
    standard = decode_logs(ExportLogsServiceRequest.FromString(body), now)
    assert _summary(fast) == _summary(standard)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def _request(record_attributes: bytes, resource: bytes = b"") -> bytes:
    record = _field(6, record_attributes) + _field(12, ev.EVENT_HOLD_START.encode())
    resource_logs = (_field(1, resource) if resource else b"") + _field(2, _field(2, record))
    return _field(1, resource_logs)


@pytest.mark.parametrize(
    "body",
    [
        # string_value that is not UTF-8
        pytest.param(_request(_field(1, b"k") + _field(2, _field(1, b"\xff\xfe"))), id="utf8"),
        # a truncated AnyValue inside an attribute
        pytest.param(_request(_field(1, b"k") + _field(2, b"\x0a\x05ab")), id="truncated-value"),
        # a resource that does not parse
        pytest.param(_request(_field(1, b"k"), resource=b"\x0a\x7fxx"), id="bad-resource"),
    ],
)
def test_what_the_standard_classes_reject_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(ProtobufDecodeError):
        ExportLogsServiceRequest.FromString(body)
    with pytest.raises(DecodeError):
        parse_request("logs", body, "protobuf")


def test_equal_attributes_decode_to_unshared_lists_and_dicts() -> None:
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    holds = any_value([{"a": 1}])
    for _ in range(2):
        record = scope.log_records.add(time_unix_nano=1, event_name=ev.EVENT_HEARTBEAT)
        record.attributes.append(KeyValue(key=ev.ATTR_HOLDS, value=holds))
    first, second = decode_logs(
        parse_request("logs", request.SerializeToString(), "protobuf")
    ).events
    assert first.attrs[ev.ATTR_HOLDS] == second.attrs[ev.ATTR_HOLDS] == [{"a": 1}]
    first.attrs[ev.ATTR_HOLDS][0]["a"] = 2  # a consumer mutating one event...
    assert second.attrs[ev.ATTR_HOLDS] == [{"a": 1}]  # ...does not change the other


@pytest.mark.parametrize("pid", [math.inf, -math.inf, math.nan, 1e300])
def test_a_resource_pid_that_is_no_integer_falls_back_to_zero(pid: float) -> None:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(
        KeyValue(key=ev.RES_PROCESS_PID, value=AnyValue(double_value=pid))
    )
    resource_logs.scope_logs.add().log_records.add(time_unix_nano=1, event_name=ev.EVENT_HEARTBEAT)
    body = request.SerializeToString()
    (fast,) = decode_logs(parse_request("logs", body, "protobuf")).events
    (standard,) = decode_logs(ExportLogsServiceRequest.FromString(body)).events
    assert fast.process == standard.process
    assert fast.process.pid == (int(pid) if math.isfinite(pid) else 0)
