"""Decoding OTLP/HTTP request bodies into lockscope events and metric points.

Pure functions, no I/O: :mod:`lockscope.agent.otlp_receiver` reads the body, this module
turns it into protobuf messages (from ``application/x-protobuf`` or OTLP/JSON) and those
into :class:`~lockscope.agent.model.Event` objects and metric points.

OTLP/JSON differs from the canonical protobuf JSON mapping in one way that matters here:
trace and span ids are hex strings, not base64.  They are rewritten before the message is
parsed; everything else (lowerCamelCase or snake_case keys, int64 as decimal strings or
numbers, enums as integers, unknown fields ignored) the protobuf JSON parser already does.

What becomes an event:

- a log record whose ``event_name`` (or, for older SDKs, ``event.name`` attribute) is one
  of :data:`lockscope.events.EVENT_NAMES`;
- a ``lock.acquire`` span, as ``wait.start`` + ``wait.end``, and a ``lock.hold`` span, as
  ``hold.start`` + ``hold.end``, from any OTLP source that follows docs/events.md, so
  apps in other languages can feed the agent.  Spans from lockscope's own shim are skipped:
  the shim already reports the same waits and holds as events.

Other records are *ignored* (counted, not rejected): an OpenTelemetry Collector may
forward an app's whole log and trace stream.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError as _ProtoDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from lockscope import events as ev
from lockscope.agent import otlp_fastlogs
from lockscope.agent.model import Event, ProcessInfo

__all__ = [
    "DecodeError",
    "DecodedBatch",
    "Signal",
    "WireFormat",
    "any_value",
    "decode_logs",
    "decode_traces",
    "encode_response",
    "encode_status",
    "parse_request",
    "process_from_attributes",
]

Signal = Literal["logs", "traces", "metrics"]
WireFormat = Literal["protobuf", "json"]

UNKNOWN_SERVICE: Final = "unknown_service"
UNKNOWN_HOST: Final = "unknown_host"

SHIM_SCOPE_PREFIX: Final = "lockscope"
"""Spans whose instrumentation scope name starts with this come from lockscope's own shim,
which reports the same waits and holds as events; translating them too would count twice."""

_REQUEST_TYPES: Final[dict[str, type[Message]]] = {
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}

# signal -> (response type, partial-success type, name of its "rejected" field)
_RESPONSE_TYPES: Final[dict[str, tuple[type[Message], type[Message], str]]] = {
    "logs": (
        logs_service_pb2.ExportLogsServiceResponse,
        logs_service_pb2.ExportLogsPartialSuccess,
        "rejected_log_records",
    ),
    "traces": (
        trace_service_pb2.ExportTraceServiceResponse,
        trace_service_pb2.ExportTracePartialSuccess,
        "rejected_spans",
    ),
    "metrics": (
        metrics_service_pb2.ExportMetricsServiceResponse,
        metrics_service_pb2.ExportMetricsPartialSuccess,
        "rejected_data_points",
    ),
}

_ID_KEYS: Final = frozenset(
    {"traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"}
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

# Span status code ERROR (opentelemetry.proto.trace.v1.Status.StatusCode).
_STATUS_ERROR: Final = 2


class DecodeError(ValueError):
    """The body is not a valid OTLP export request (the receiver answers 400)."""


# -- request and response bodies ----------------------------------------------------------


def parse_request(signal: Signal, body: bytes, wire: WireFormat) -> Any:
    """Parse an Export*ServiceRequest of ``signal`` from ``body``.

    Raises :class:`DecodeError` when the body is not a valid request in that format.
    """
    if wire == "protobuf" and signal == "logs":
        # The hot path: see lockscope.agent.otlp_fastlogs.
        try:
            return otlp_fastlogs.parse_logs(body, _resource_process)
        except (_ProtoDecodeError, RuntimeError, ValueError) as exc:
            raise DecodeError(f"invalid protobuf: {exc}") from None
    message = _REQUEST_TYPES[signal]()
    if wire == "protobuf":
        try:
            message.ParseFromString(body)
        except (_ProtoDecodeError, RuntimeError, ValueError) as exc:
            raise DecodeError(f"invalid protobuf: {exc}") from None
        return message
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DecodeError(f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DecodeError("invalid OTLP/JSON: the body must be a JSON object")
    try:
        _hex_ids_to_base64(document)
    except RecursionError:
        raise DecodeError("invalid OTLP/JSON: nested too deeply") from None
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(f"invalid OTLP/JSON: {exc}") from None
    return message


def encode_response(signal: Signal, wire: WireFormat, rejected: int, error_message: str) -> bytes:
    """The Export*ServiceResponse body; ``partial_success`` is set only when something was
    rejected or there is a message, as the OTLP specification asks."""
    response_type, partial_type, rejected_field = _RESPONSE_TYPES[signal]
    response = response_type()
    if rejected or error_message:
        partial = partial_type(error_message=error_message)
        setattr(partial, rejected_field, rejected)
        response.partial_success.CopyFrom(partial)
    if wire == "protobuf":
        data: bytes = response.SerializeToString()
        return data
    return json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()


def encode_status(wire: WireFormat, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` body for an error response (OTLP/HTTP asks for one).

    ``code`` is a gRPC status code (3 = INVALID_ARGUMENT, 8 = RESOURCE_EXHAUSTED).  Encoded
    by hand: the two fields do not justify a dependency on googleapis-common-protos.
    """
    if wire == "json":
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _hex_ids_to_base64(node: Any) -> Any:
    """Rewrite OTLP/JSON's hex trace/span ids to the base64 the protobuf parser expects."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = _hex_to_base64(value)
            elif isinstance(value, dict | list):
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _hex_ids_to_base64(item)
    return node


def _hex_to_base64(value: str) -> str:
    if not value:
        return value
    if len(value) % 2 or not _HEX_DIGITS.issuperset(value):
        raise DecodeError(f"invalid OTLP/JSON: trace/span id {value[:40]!r} is not hex")
    return base64.b64encode(binascii.unhexlify(value)).decode()


# -- attributes and resources -------------------------------------------------------------


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` message as plain Python: arrays as lists, key-value lists as
    dicts (entries without a value left out), an unset value as None."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    # The hot loop of the receiver (a dozen attributes per event): scalars inline, no call.
    out: dict[str, Any] = {}
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind is None:
            continue
        if kind == "array_value" or kind == "kvlist_value":
            out[kv.key] = any_value(value)
        else:
            out[kv.key] = getattr(value, kind)
    return out


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        try:
            return int(value)
        except (ValueError, OverflowError):  # "x", NaN, infinity
            return None
    return None


def process_from_attributes(attrs: Mapping[str, Any]) -> ProcessInfo:
    """The reporting process from OTLP resource attributes, with fallbacks.

    ``service.name`` defaults to ``unknown_service`` (as OpenTelemetry SDKs do),
    ``host.name`` to ``unknown_host``, ``process.pid`` to 0, and ``service.instance.id`` to
    ``service/host/pid`` -- one process per (service, host, pid) when the sender gives no
    per-start id.
    """
    service = str(attrs.get(ev.RES_SERVICE_NAME) or UNKNOWN_SERVICE)
    host = str(attrs.get(ev.RES_HOST_NAME) or UNKNOWN_HOST)
    pid = _as_int(attrs.get(ev.RES_PROCESS_PID)) or 0
    instance = str(attrs.get(ev.RES_SERVICE_INSTANCE) or f"{service}/{host}/{pid}")
    return ProcessInfo(service=service, host=host, pid=pid, instance=instance)


# -- logs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class DecodedBatch:
    """What one export request held, as events plus counts."""

    events: list[Event] = field(default_factory=list)
    received: int = 0
    """Records in the request (log records, spans or data points)."""
    ignored: int = 0
    """Records that are not for lockscope (other log events, other spans)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Records for lockscope that could not become events, by reason."""


def decode_logs(request: Any, now_ns: int | None = None) -> DecodedBatch:
    """Turn an ExportLogsServiceRequest (as :func:`parse_request` returns it) into events;
    see the module docstring."""
    if isinstance(request, otlp_fastlogs.RawLogs):
        return _decode_raw_logs(request, now_ns)
    batch = DecodedBatch()
    received = 0
    for resource_logs in request.resource_logs:
        process: ProcessInfo | None = None
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                received += 1
                attrs = _attributes(record.attributes)
                name = record.event_name or attrs.get(ev.ATTR_EVENT_NAME)
                if not isinstance(name, str) or not name.startswith("lockscope."):
                    batch.ignored += 1
                    continue
                if name not in ev.EVENT_NAMES:
                    batch.rejected["unknown_event"] += 1
                    continue
                if process is None:
                    process = process_from_attributes(
                        _attributes(resource_logs.resource.attributes)
                    )
                time_ns = record.time_unix_nano or record.observed_time_unix_nano
                if not time_ns:
                    time_ns = now_ns if now_ns is not None else time.time_ns()
                batch.events.append(Event(name, time_ns, process, attrs))
    batch.received = received
    return batch


def _resource_process(key_values: Iterable[Any]) -> ProcessInfo:
    return process_from_attributes(_attributes(key_values))


def _decode_raw_logs(request: otlp_fastlogs.RawLogs, now_ns: int | None) -> DecodedBatch:
    batch = DecodedBatch(events=list(request.events))
    if request.untimed:
        now = now_ns if now_ns is not None else time.time_ns()
        events = batch.events
        for i in request.untimed:
            e = events[i]
            events[i] = Event(e.name, now, e.process, e.attrs)
    batch.received = request.received
    batch.ignored = request.ignored
    if request.unknown:
        batch.rejected["unknown_event"] = request.unknown
    return batch


# -- traces -------------------------------------------------------------------------------


def decode_traces(request: Any) -> DecodedBatch:
    """Turn the lock spans of an ExportTraceServiceRequest into events.

    A ``lock.acquire`` span becomes ``wait.start`` at its start and ``wait.end`` at its end
    (outcome from ``lockscope.outcome``, else ``error`` for an error status, else
    ``acquired``); a ``lock.hold`` span becomes ``hold.start`` and ``hold.end`` (outcome
    ``released`` unless given).  The actor is ``lockscope.actor.id``, else ``thread:<id>``
    from the ``thread.id`` attribute, else ``trace:<trace id>``.
    """
    batch = DecodedBatch()
    for resource_spans in request.resource_spans:
        process: ProcessInfo | None = None
        for scope_spans in resource_spans.scope_spans:
            own = scope_spans.scope.name.startswith(SHIM_SCOPE_PREFIX)
            for span in scope_spans.spans:
                batch.received += 1
                if own or span.name not in (ev.SPAN_ACQUIRE, ev.SPAN_HOLD):
                    batch.ignored += 1
                    continue
                attrs = _attributes(span.attributes)
                if not attrs.get(ev.ATTR_LOCK_NAME):
                    batch.rejected["missing_lock_name"] += 1
                    continue
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if not start or end < start:
                    batch.rejected["invalid_span_times"] += 1
                    continue
                if process is None:
                    process = process_from_attributes(
                        _attributes(resource_spans.resource.attributes)
                    )
                batch.events.extend(_span_events(span, attrs, process))
    return batch


def _span_events(span: Any, attrs: dict[str, Any], process: ProcessInfo) -> Iterator[Event]:
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if ev.ATTR_ACTOR_ID not in attrs:
        thread_id = attrs.get("thread.id")
        attrs[ev.ATTR_ACTOR_ID] = (
            f"thread:{thread_id}" if thread_id is not None else f"trace:{span.trace_id.hex()}"
        )
    attrs.setdefault(ev.ATTR_SINCE, start)
    outcome = attrs.pop(ev.ATTR_OUTCOME, None)
    duration = (end - start) / 1e9
    if span.name == ev.SPAN_ACQUIRE:
        if outcome is None:
            outcome = "error" if span.status.code == _STATUS_ERROR else "acquired"
        yield Event(ev.EVENT_WAIT_START, start, process, dict(attrs))
        yield Event(
            ev.EVENT_WAIT_END,
            end,
            process,
            {**attrs, ev.ATTR_OUTCOME: outcome, ev.ATTR_WAIT_DURATION: duration},
        )
    else:
        yield Event(ev.EVENT_HOLD_START, start, process, dict(attrs))
        yield Event(
            ev.EVENT_HOLD_END,
            end,
            process,
            {**attrs, ev.ATTR_OUTCOME: outcome or "released", ev.ATTR_HOLD_DURATION: duration},
        )
