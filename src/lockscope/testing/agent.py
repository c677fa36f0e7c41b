"""An in-process lockscope agent for your own tests.

The agent runs on its own event loop in a background thread, on free loopback ports, so
it serves sync and async tests alike::

    from lockscope.testing.agent import InProcessAgent

    with InProcessAgent() as agent:
        os.environ["LOCKSCOPE_ENDPOINT"] = agent.otlp_url   # point the shim at it
        ...                                                 # run your locking code
        agent.wait_for(lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"])

With pytest, the ``lockscope_agent`` fixture (registered by lockscope's pytest plugin)
yields a started :class:`InProcessAgent` and stops it after the test.

:meth:`InProcessAgent.post_events` sends :class:`~lockscope.agent.model.Event` objects over
real OTLP/HTTP (protobuf or JSON), for tests that play the part of instrumented apps.
The agent state lives on the agent's thread: read it through :meth:`InProcessAgent.call`
(or the HTTP API), not directly while events are arriving.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from lockscope import events as ev
from lockscope._forward import Forward
from lockscope.agent.app import AgentRunner
from lockscope.agent.app_thread import AgentStartTimeout, AgentThread
from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.state import AgentState
from lockscope.client import AgentClient

__all__ = ["InProcessAgent", "any_value", "encode_logs", "logs_request"]

T = TypeVar("T")


def any_value(value: Any) -> Any:
    """A Python value as an OTLP ``AnyValue`` (str, bool, int, float, bytes, list, dict)."""
    out = common_pb2.AnyValue()
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
    elif isinstance(value, Mapping):
        out.kvlist_value.values.extend(_key_values(value))
    elif isinstance(value, list | tuple):
        out.array_value.values.extend(any_value(v) for v in value)
    else:
        raise TypeError(f"no OTLP AnyValue for {type(value).__name__}")
    return out


def _key_values(attrs: Mapping[str, Any]) -> list[Any]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def _resource(process: ProcessInfo) -> Any:
    return resource_pb2.Resource(
        attributes=_key_values(
            {
                ev.RES_SERVICE_NAME: process.service,
                ev.RES_HOST_NAME: process.host,
                ev.RES_PROCESS_PID: process.pid,
                ev.RES_SERVICE_INSTANCE: process.instance,
            }
        )
    )


def logs_request(events: Iterable[Event]) -> Any:
    """An ``ExportLogsServiceRequest`` carrying ``events`` as the shim sends them: one
    ``ResourceLogs`` per process, one log record per event, in order."""
    request = logs_service_pb2.ExportLogsServiceRequest()
    by_process: dict[ProcessInfo, Any] = {}
    for event in events:
        scope_logs = by_process.get(event.process)
        if scope_logs is None:
            resource_logs = request.resource_logs.add(resource=_resource(event.process))
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name = "lockscope.testing"
            by_process[event.process] = scope_logs
        scope_logs.log_records.append(
            logs_pb2.LogRecord(
                time_unix_nano=event.time_ns,
                event_name=event.name,
                attributes=_key_values(event.attrs),
            )
        )
    return request


def encode_logs(events: Iterable[Event], wire: Literal["protobuf", "json"] = "protobuf") -> bytes:
    """``events`` as an OTLP/HTTP ``/v1/logs`` body in protobuf or OTLP/JSON."""
    request = logs_request(events)
    if wire == "protobuf":
        body: bytes = request.SerializeToString()
        return body
    # Log records carry no trace ids here, so the canonical JSON mapping is valid OTLP/JSON.
    return json.dumps(json_format.MessageToDict(request)).encode()


class InProcessAgent:
    """A lockscope agent on a background thread; see the module docstring.

    ``config`` defaults to ``AgentConfig()``; ``runner_options`` go to
    :class:`~lockscope.agent.app.AgentRunner` (``tick_interval``, ``max_request_bytes``...).
    """

    def __init__(self, config: AgentConfig | None = None, **runner_options: Any) -> None:
        self.config = config
        self._options = runner_options
        self._thread = AgentThread(
            lambda: AgentRunner(
                self.config, otlp=("127.0.0.1", 0), http=("127.0.0.1", 0), **self._options
            )
        )

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> InProcessAgent:
        """Start the agent and wait until both listeners are up."""
        if self._thread.started:
            raise RuntimeError("already started")
        try:
            self._thread.start(timeout)
        except AgentStartTimeout:
            raise TimeoutError("the in-process lockscope agent did not start") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent (graceful: in-flight requests finish) and join its thread."""
        self._thread.stop(timeout)

    def __enter__(self) -> InProcessAgent:
        return self if self._thread.started else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses and state ------------------------------------------------------------
    @property
    def runner(self) -> AgentRunner:
        """The underlying :class:`~lockscope.agent.app.AgentRunner`."""
        if self._thread.runner is None:
            raise RuntimeError("the agent is not running")
        return self._thread.runner

    otlp_url = Forward[str]("OTLP base URL, for ``LOCKSCOPE_ENDPOINT``.", via="runner")
    http_url = Forward[str]("HTTP base URL (JSON API, ``/healthz``...).", via="runner")
    state = Forward[AgentState](
        "The agent state (owned by the agent's thread: prefer :meth:`call` to read it).",
        via="runner",
    )

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the agent's event loop thread and return its result."""
        return self._thread.call(fn, timeout)

    # -- talking to it over HTTP --------------------------------------------------------
    def client(self) -> AgentClient:
        """A :class:`~lockscope.client.AgentClient` of this agent's JSON API."""
        return AgentClient(self.http_url, timeout=10.0)

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` (e.g. ``/api/v1/deadlocks``) from the HTTP side, parsed as JSON;
        raises :class:`~lockscope.client.AgentError` (``.status`` holds an HTTP error's
        status)."""
        return self.client().get(path, timeout)

    def post_events(
        self,
        events: Iterable[Event],
        wire: Literal["protobuf", "json"] = "protobuf",
        timeout: float = 10.0,
    ) -> bytes:
        """POST ``events`` to ``/v1/logs`` as an instrumented app would; returns the raw
        response body (an ExportLogsServiceResponse)."""
        content_type = "application/x-protobuf" if wire == "protobuf" else "application/json"
        request = urllib.request.Request(
            self.otlp_url + "/v1/logs",
            data=encode_logs(events, wire),
            headers={"Content-Type": content_type},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02
    ) -> T:
        """Poll ``predicate`` (on the caller's thread) until it returns something truthy;
        return that, or raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)
