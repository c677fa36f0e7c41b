"""OTLP/HTTP protobuf encoding and transport for the shim's events and metrics.

Events become ``LogRecord`` s of one ``ExportLogsServiceRequest`` (the OpenTelemetry Python
logs SDK is still private API, so the shim encodes with ``opentelemetry-proto`` directly).
The transport is ``http.client`` with short timeouts and a kept-alive connection; it runs
only on the shim's own threads.  It classifies answers the OTLP way: 2xx done; 429, 502,
503, 504 and connection errors retryable (honouring ``Retry-After``); others dropped.

A misconfiguration must not be silent: when the endpoint cannot be reached, or answers
401, 403, 404 or 405 (a wrong port, path or credentials), the transport logs one warning
naming the URL on the ``lockscope`` logger hierarchy (``lockscope.instrumentation``;
Python prints warnings to stderr when the app set up no logging), and logs again only
when that changes (another problem, or reachable again).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from lockscope import __version__, events
from lockscope._net import describe_os_error
from lockscope.instrumentation.metrics_aggregate import BOUNDS, StatsSnapshot

__all__ = [
    "HttpTransport",
    "PostResult",
    "Transport",
    "any_value",
    "encode_events",
    "encode_stats",
    "key_values",
]

_log = logging.getLogger("lockscope.instrumentation")
_HAS_EVENT_NAME = "event_name" in LogRecord.DESCRIPTOR.fields_by_name
SCOPE_NAME = "lockscope.instrumentation"


def any_value(value: Any) -> AnyValue:
    """A Python value as an OTLP ``AnyValue`` (dicts become key-value lists)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def key_values(attrs: Mapping[str, Any]) -> list[KeyValue]:
    """Attributes as OTLP ``KeyValue`` s (``None`` values left out)."""
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items() if v is not None]


def encode_events(
    batch: Iterable[tuple[str, int, Mapping[str, Any]]],
    resource: Mapping[str, Any],
    first_seq: int | None = None,
) -> bytes:
    """One ``ExportLogsServiceRequest`` with one log record per event.

    With ``first_seq``, the records carry ``lockscope.seq`` = ``first_seq``,
    ``first_seq + 1``... (the sender's order, which the agent trusts over timestamps).
    """
    observed = time.time_ns()
    records = []
    for i, (name, time_ns, attrs) in enumerate(batch):
        attributes = [
            KeyValue(key=events.ATTR_EVENT_NAME, value=AnyValue(string_value=name)),
            *key_values(attrs),
        ]
        if first_seq is not None:
            attributes.append(
                KeyValue(key=events.ATTR_SEQUENCE, value=AnyValue(int_value=first_seq + i))
            )
        record = LogRecord(
            time_unix_nano=time_ns,
            observed_time_unix_nano=observed,
            severity_number=9,  # type: ignore[arg-type]  # SEVERITY_NUMBER_INFO
            severity_text="INFO",
            attributes=attributes,
        )
        if _HAS_EVENT_NAME:
            record.event_name = name
        records.append(record)
    origin, scope = _origin(resource)
    logs = ScopeLogs(scope=scope, log_records=records)
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=origin, scope_logs=[logs])]
    )
    return bytes(request.SerializeToString())


def _origin(resource: Mapping[str, Any]) -> tuple[Resource, InstrumentationScope]:
    """Who exports: the process (its resource attributes) and lockscope's scope."""
    return (
        Resource(attributes=key_values(resource)),
        InstrumentationScope(name=SCOPE_NAME, version=__version__),
    )


@dataclass(frozen=True)
class PostResult:
    """What became of one POST."""

    ok: bool
    retryable: bool
    retry_after: float | None = None
    status: int | None = None
    error: str | None = None
    """What went wrong, in words (``connection refused...``, ``HTTP 404``), or None."""
    problem: str | None = None
    """A misconfiguration or outage worth a warning (``refused``, ``timeout``,
    ``unresolved``, ``unreachable``, ``http-401``...), or None."""


_RETRYABLE = frozenset({429, 502, 503, 504})
_WARN_STATUS = frozenset({401, 403, 404, 405})
"""Answers that mean "not the agent" or "not allowed" rather than a passing overload."""


def _status_hint(status: int) -> str:
    if status in (401, 403):
        return (
            f"HTTP {status}: the endpoint wants credentials "
            "(set LOCKSCOPE_HEADERS=Authorization=Bearer%20TOKEN)"
        )
    return (
        f"HTTP {status}: no OTLP receiver at this URL (a wrong port or path? the agent's "
        "OTLP port is 4318 by default; 9477 is its API)"
    )


class _Health:
    """Logs the endpoint's problem once, and again only when it changes."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def note(self, url: str, result: PostResult) -> None:
        if result.ok:
            if self.problem is not None:
                self.problem = None
                _log.warning("lockscope: sending lock events to %s works again", url)
            return
        if result.problem is None or result.problem == self.problem:
            return
        self.problem = result.problem
        _log.warning(
            "lockscope: cannot send lock events to %s: %s; lock events are dropped "
            "(the app runs unchanged)",
            url,
            result.error,
        )


class Transport(Protocol):
    """What the reporter sends through (:class:`HttpTransport` or a fan-out of them)."""

    def post(self, path: str, body: bytes) -> PostResult:
        """POST ``body`` to ``path``; never raises."""
        ...

    def close(self) -> None:
        """Drop kept-alive connections."""
        ...


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class HttpTransport:
    """POSTs protobuf bodies to one OTLP/HTTP base URL, one kept-alive connection.

    For ``https://`` endpoints, ``ca_file`` (``LOCKSCOPE_CA_FILE`` or
    ``OTEL_EXPORTER_OTLP_CERTIFICATE``) is the PEM bundle to trust instead of the system's.
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 1.0,
        ca_file: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        self.scheme = parts.scheme or "http"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.headers.setdefault("User-Agent", f"lockscope-shim/{__version__}")
        self._conn: http.client.HTTPConnection | None = None
        self._pid = os.getpid()
        self.ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None
        self._health = _Health()

    def url(self, path: str) -> str:
        """The full URL of ``path`` (e.g. ``/v1/logs``)."""
        return f"{self.scheme}://{self.host}:{self.port}{self.base_path}{path}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None or self._pid != os.getpid():
            self._pid = os.getpid()
            if self.scheme == "https":
                if self._ssl is None:
                    # Built on the sender thread at first use: a bad CA file is an OSError
                    # there, which post() turns into a counted failure, never an app error.
                    self._ssl = ssl.create_default_context(cafile=self.ca_file)
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        """Drop the kept-alive connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def post(self, path: str, body: bytes) -> PostResult:
        """POST ``body`` to ``path``; never raises.  Warns about a new problem (see the
        module docstring)."""
        result = self._post(path, body)
        with contextlib.suppress(Exception):  # a broken log handler must not stop the sender
            self._health.note(self.url(path), result)
        return result

    def _post(self, path: str, body: bytes) -> PostResult:
        try:
            conn = self._connection()
            conn.request("POST", self.base_path + path, body=body, headers=self.headers)
            response = conn.getresponse()
            response.read(64 * 1024)
            status = response.status
            retry_after = _retry_after(response.getheader("Retry-After"))
            if response.will_close:
                self.close()
        except (TimeoutError, OSError) as exc:
            self.close()
            kind, reason = describe_os_error(exc)
            return PostResult(ok=False, retryable=True, error=reason, problem=kind)
        except http.client.HTTPException as exc:
            self.close()
            reason = f"not an HTTP answer ({type(exc).__name__})"
            return PostResult(ok=False, retryable=True, error=reason, problem="not-http")
        except Exception:
            self.close()
            _log.debug("lockscope: unexpected error posting to %s", path, exc_info=True)
            return PostResult(ok=False, retryable=False)
        if 200 <= status < 300:
            return PostResult(ok=True, retryable=False, status=status)
        return PostResult(
            ok=False,
            retryable=status in _RETRYABLE,
            retry_after=retry_after,
            status=status,
            error=_status_hint(status) if status in _WARN_STATUS else f"HTTP {status}",
            problem=f"http-{status}" if status in _WARN_STATUS else None,
        )


def encode_stats(snapshot: StatsSnapshot, resource: Mapping[str, Any]) -> bytes:
    """The shim's cumulative lock metrics as one ``ExportMetricsServiceRequest``."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        AggregationTemporality,
        Histogram,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )

    start, acquisitions, lost, waits, holds = snapshot
    now = time.time_ns()
    cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

    def lock_attrs(template: str, system: str) -> list[KeyValue]:
        return key_values({events.ATTR_LOCK_TEMPLATE: template, events.ATTR_LOCK_SYSTEM: system})

    def counter(name: str, unit: str, points: list[NumberDataPoint]) -> Metric:
        return Metric(
            name=name,
            unit=unit,
            sum=Sum(data_points=points, aggregation_temporality=cumulative, is_monotonic=True),
        )

    def histogram(name: str, hists: Mapping[tuple[str, str], list[float]]) -> Metric:
        points = [
            HistogramDataPoint(
                attributes=lock_attrs(template, system),
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=int(sum(hist[:-1])),
                sum=float(hist[-1]),
                bucket_counts=[int(c) for c in hist[:-1]],
                explicit_bounds=list(BOUNDS),
            )
            for (template, system), hist in hists.items()
        ]
        return Metric(
            name=name,
            unit="s",
            histogram=Histogram(data_points=points, aggregation_temporality=cumulative),
        )

    acquired_points = [
        NumberDataPoint(
            attributes=lock_attrs(template, system) + key_values({events.ATTR_OUTCOME: outcome}),
            start_time_unix_nano=start,
            time_unix_nano=now,
            as_int=count,
        )
        for (template, system, outcome), count in acquisitions.items()
    ]
    lost_points = [
        NumberDataPoint(
            attributes=lock_attrs(template, system),
            start_time_unix_nano=start,
            time_unix_nano=now,
            as_int=count,
        )
        for (template, system), count in lost.items()
    ]
    metrics = [
        counter(events.METRIC_ACQUISITIONS, "{acquisition}", acquired_points),
        histogram(events.METRIC_WAIT_DURATION, waits),
        histogram(events.METRIC_HOLD_DURATION, holds),
    ]
    if lost_points:
        metrics.append(counter(events.METRIC_LOCKS_LOST, "{lock}", lost_points))
    origin, scope = _origin(resource)
    scoped = ScopeMetrics(scope=scope, metrics=metrics)
    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=origin, scope_metrics=[scoped])]
    )
    return bytes(request.SerializeToString())
