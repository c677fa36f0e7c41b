"""Helpers for the export tests: a two-process deadlock, OTLP metric bodies as the shim
sends them, and reading the agent's /metrics."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client.parser import text_string_to_metric_families

from lockscope import events as ev
from lockscope.agent.model import Event, ProcessInfo
from lockscope.testing.agent import InProcessAgent, _key_values, _resource

S = 1_000_000_000
CUMULATIVE = 2
NAMESPACE = "127.0.0.1:6379/0"


def proc(service: str, pid: int, instance: str | None = None) -> ProcessInfo:
    return ProcessInfo(
        service=service, host="host-1", pid=pid, instance=instance or f"{service}-{pid}"
    )


BILLING = proc("billing", 101)
SHIPPING = proc("shipping", 202)


def lock_attrs(lock: str, actor: str, since: int, template: str | None = None) -> dict[str, Any]:
    return {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: NAMESPACE,
        ev.ATTR_LOCK_NAME: lock,
        ev.ATTR_LOCK_TEMPLATE: template or lock,
        ev.ATTR_LOCK_MODE: "exclusive",
        ev.ATTR_ACTOR_ID: actor,
        ev.ATTR_ACTOR_NAME: actor,
        ev.ATTR_SINCE: since,
    }


def deadlock_events(
    lock_a: str = "orders/1",
    lock_b: str = "orders/2",
    a: ProcessInfo = BILLING,
    b: ProcessInfo = SHIPPING,
    now: int | None = None,
) -> list[Event]:
    """``a`` holds lock_a and waits for lock_b; ``b`` holds lock_b and waits for lock_a."""
    now = now or time.time_ns()
    return [
        Event(ev.EVENT_HOLD_START, now - 3 * S, a, lock_attrs(lock_a, "thread:1", now - 3 * S)),
        Event(ev.EVENT_HOLD_START, now - 3 * S, b, lock_attrs(lock_b, "thread:2", now - 3 * S)),
        Event(ev.EVENT_WAIT_START, now - 2 * S, a, lock_attrs(lock_b, "thread:1", now - 2 * S)),
        Event(ev.EVENT_WAIT_START, now - 1 * S, b, lock_attrs(lock_a, "thread:2", now - 1 * S)),
    ]


def end_wait(process: ProcessInfo, lock: str, actor: str, since: int) -> Event:
    """The wait of ``actor`` that began at ``since`` ended by timeout."""
    attrs = lock_attrs(lock, actor, since)
    attrs[ev.ATTR_OUTCOME] = "timeout"
    return Event(ev.EVENT_WAIT_END, time.time_ns(), process, attrs)


def _attrs(template: str, system: str = "redis", **extra: str) -> list[Any]:
    return _key_values({ev.ATTR_LOCK_TEMPLATE: template, ev.ATTR_LOCK_SYSTEM: system, **extra})


def metrics_body(
    process: ProcessInfo,
    acquisitions: Iterable[tuple[str, str, float]] = (),
    waits: Iterable[tuple[str, Sequence[float], Sequence[int], float]] = (),
    lost: Iterable[tuple[str, float]] = (),
    start_ns: int = 1,
    time_ns: int | None = None,
) -> bytes:
    """An ExportMetricsServiceRequest as the shim sends it (cumulative temporality).

    ``acquisitions``: (template, outcome, value); ``waits``: (template, bounds,
    bucket_counts, sum) for the wait histogram; ``lost``: (template, value).
    """
    time_ns = time_ns or time.time_ns()
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add(resource=_resource(process))
    sm = rm.scope_metrics.add()
    sm.scope.name = "lockscope.instrumentation"
    acq = sm.metrics.add(name=ev.METRIC_ACQUISITIONS)
    acq.sum.aggregation_temporality = CUMULATIVE
    acq.sum.is_monotonic = True
    for template, outcome, value in acquisitions:
        acq.sum.data_points.append(
            metrics_pb2.NumberDataPoint(
                attributes=_attrs(template, **{ev.ATTR_OUTCOME: outcome}),
                start_time_unix_nano=start_ns,
                time_unix_nano=time_ns,
                as_int=int(value),
            )
        )
    lost_metric = sm.metrics.add(name=ev.METRIC_LOCKS_LOST)
    lost_metric.sum.aggregation_temporality = CUMULATIVE
    lost_metric.sum.is_monotonic = True
    for template, value in lost:
        lost_metric.sum.data_points.append(
            metrics_pb2.NumberDataPoint(
                attributes=_attrs(template),
                start_time_unix_nano=start_ns,
                time_unix_nano=time_ns,
                as_int=int(value),
            )
        )
    wait = sm.metrics.add(name=ev.METRIC_WAIT_DURATION, unit="s")
    wait.histogram.aggregation_temporality = CUMULATIVE
    for template, bounds, counts, total in waits:
        wait.histogram.data_points.append(
            metrics_pb2.HistogramDataPoint(
                attributes=_attrs(template),
                start_time_unix_nano=start_ns,
                time_unix_nano=time_ns,
                count=sum(counts),
                sum=total,
                explicit_bounds=list(bounds),
                bucket_counts=list(counts),
            )
        )
    body: bytes = request.SerializeToString()
    return body


def post_metrics(agent: InProcessAgent, body: bytes) -> None:
    request = urllib.request.Request(
        agent.otlp_url + "/v1/metrics",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def metrics_text(agent: InProcessAgent) -> str:
    with urllib.request.urlopen(agent.http_url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def families(text: str) -> dict[str, Any]:
    """Metric families by name (counters under their name without ``_total``)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample values of one sample name, keyed by sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out
