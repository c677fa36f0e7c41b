"""A small OTLP/HTTP receiver for tests: decodes what the shim (or any app) sends.

::

    with OtlpSink() as sink:
        env = {"LOCKSCOPE_ENDPOINT": sink.endpoint}
        ...                                   # run instrumented code
        event = sink.wait_for(lambda e: e.name == "lockscope.wait.start", timeout=5)

Every decoded log record becomes a :class:`ReceivedEvent` (an
:class:`~lockscope.agent.model.Event` plus when the sink received it, on
``time.time_ns()``).  ``/v1/metrics`` and ``/v1/traces`` bodies are kept raw (and metrics
decoded, in :attr:`OtlpSink.metrics`).  To test fail-open paths the sink can answer with
another status (``sink.status = 429``, ``sink.retry_after = "1"``) or not answer at all
(``sink.black_hole = True``: it reads the request and never responds).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lockscope._forward import Forward
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.otlp_decode import any_value
from lockscope.events import ATTR_EVENT_NAME

__all__ = ["OtlpSink", "ReceivedEvent", "decode_any_value", "decode_logs"]


@dataclass(frozen=True)
class ReceivedEvent:
    """A decoded lock event and the sink's receive time (unix ns)."""

    event: Event
    received_ns: int

    name = Forward[str]("The event name.", via="event")
    attrs = Forward[Any]("The event attributes.", via="event")

    @property
    def pid(self) -> int:
        """The sending process's pid."""
        return self.event.process.pid


decode_any_value = any_value
"""An OTLP ``AnyValue`` as plain Python (the agent's own decoding: arrays as lists, key-value
lists as dicts)."""


def decode_logs(body: bytes, received_ns: int | None = None) -> list[ReceivedEvent]:
    """The lock events of an ``ExportLogsServiceRequest`` (protobuf)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    now = time.time_ns() if received_ns is None else received_ns
    out = []
    for resource_logs in request.resource_logs:
        res = {kv.key: decode_any_value(kv.value) for kv in resource_logs.resource.attributes}
        process = ProcessInfo(
            service=str(res.get("service.name", "")),
            host=str(res.get("host.name", "")),
            pid=int(res.get("process.pid", 0) or 0),
            instance=str(res.get("service.instance.id", "")),
        )
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attrs = {kv.key: decode_any_value(kv.value) for kv in record.attributes}
                name = getattr(record, "event_name", "") or attrs.get(ATTR_EVENT_NAME, "")
                if not name:
                    continue
                attrs.pop(ATTR_EVENT_NAME, None)
                event = Event(name, record.time_unix_nano, process, attrs)
                out.append(ReceivedEvent(event, now))
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        sink = self.server.sink
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length)
        received = time.time_ns()
        sink._record_request(self.path, dict(self.headers), body, received)
        if sink.black_hole:
            sink._stop.wait(3600)
            self.close_connection = True
            return
        status = sink.status
        if 200 <= status < 300:
            sink._accept(self.path, body, received)
        self.send_response(status)
        if sink.retry_after is not None and status >= 400:
            self.send_header("Retry-After", sink.retry_after)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    sink: OtlpSink


class OtlpSink:
    """An OTLP/HTTP receiver on 127.0.0.1 that keeps what it decodes, thread-safe."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.sink = self
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events: list[ReceivedEvent] = []
        self.metrics: list[Any] = []
        """Decoded ``ExportMetricsServiceRequest`` s."""
        self.traces: list[bytes] = []
        self.requests: list[tuple[str, dict[str, str], int]] = []
        """(path, headers, receive time ns) of every request, accepted or not."""
        self.status = 200
        self.retry_after: str | None = None
        self.black_hole = False

    @property
    def port(self) -> int:
        """The listening port."""
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL to give as ``LOCKSCOPE_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpSink:
        """Start serving on a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-sink", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (black-holed requests are let go)."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record_request(self, path: str, headers: dict[str, str], body: bytes, at: int) -> None:
        with self._cond:
            self.requests.append((path, headers, at))
            self._cond.notify_all()

    def _accept(self, path: str, body: bytes, received: int) -> None:
        decoded: list[ReceivedEvent] = []
        metrics = None
        if path.endswith("/v1/logs"):
            decoded = decode_logs(body, received)
        elif path.endswith("/v1/metrics"):
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                ExportMetricsServiceRequest,
            )

            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
        with self._cond:
            self.events.extend(decoded)
            if metrics is not None:
                self.metrics.append(metrics)
            elif path.endswith("/v1/traces"):
                self.traces.append(body)
            self._cond.notify_all()

    def snapshot(self) -> list[ReceivedEvent]:
        """The events received so far."""
        with self._cond:
            return list(self.events)

    def named(self, name: str) -> list[ReceivedEvent]:
        """The events received so far with this name."""
        return [e for e in self.snapshot() if e.name == name]

    def wait_for(
        self, predicate: Callable[[ReceivedEvent], bool], timeout: float = 10.0
    ) -> ReceivedEvent:
        """The first received event matching ``predicate``; ``TimeoutError`` if none comes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching event received")
                self._cond.wait(left)

    def wait_until(self, condition: Callable[[OtlpSink], bool], timeout: float = 10.0) -> None:
        """Block until ``condition(sink)`` holds; ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("condition not met")
                self._cond.wait(left)

    def iter_metric_points(self) -> Iterator[tuple[str, dict[str, Any], Any]]:
        """(metric name, attributes, data point) of every metric point received."""
        with self._cond:
            requests = list(self.metrics)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attrs = {kv.key: decode_any_value(kv.value) for kv in point.attributes}
                            yield metric.name, attrs, point
