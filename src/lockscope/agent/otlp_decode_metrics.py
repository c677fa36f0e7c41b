"""Decoding the shim's OTLP metrics (``POST /v1/metrics``) into points for the metrics
store; the request parsing and the attribute helpers are :mod:`lockscope.agent.otlp_decode`'s."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from lockscope import events as ev
from lockscope.agent.model import ProcessInfo
from lockscope.agent.otlp_decode import _attributes, process_from_attributes

__all__ = ["HistogramPoint", "Labels", "MetricBatch", "SumPoint", "decode_metrics"]

_METRIC_NAMES: Final = frozenset(
    {ev.METRIC_ACQUISITIONS, ev.METRIC_WAIT_DURATION, ev.METRIC_HOLD_DURATION, ev.METRIC_LOCKS_LOST}
)

# Metric temporality enum values (opentelemetry.proto.metrics.v1.AggregationTemporality).
_DELTA: Final = 1
_CUMULATIVE: Final = 2

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SumPoint:
    """One data point of a monotonic counter (``lockscope.lock.acquisitions``...)."""

    process: ProcessInfo
    name: str
    labels: Labels
    start_ns: int
    time_ns: int
    value: float
    cumulative: bool
    """True for cumulative temporality (the SDK default), False for delta."""


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """One data point of an explicit-bucket histogram (wait and hold durations)."""

    process: ProcessInfo
    name: str
    labels: Labels
    start_ns: int
    time_ns: int
    count: int
    sum: float
    bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    cumulative: bool


@dataclass(slots=True)
class MetricBatch:
    """The shim's metric points found in one export request."""

    points: list[SumPoint | HistogramPoint] = field(default_factory=list)
    received: int = 0
    ignored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


def decode_metrics(request: Any) -> MetricBatch:
    """Extract the shim's metric points (:data:`lockscope.events.METRIC_*`) from an
    ExportMetricsServiceRequest; other metrics are counted as ignored."""
    batch = MetricBatch()
    for resource_metrics in request.resource_metrics:
        process: ProcessInfo | None = None
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points if kind else ()
                batch.received += len(points)
                if metric.name not in _METRIC_NAMES or kind not in ("sum", "histogram"):
                    batch.ignored += len(points)
                    continue
                temporality = getattr(metric, kind).aggregation_temporality
                if temporality not in (_DELTA, _CUMULATIVE):
                    batch.rejected["unspecified_temporality"] += len(points)
                    continue
                if process is None:
                    process = process_from_attributes(
                        _attributes(resource_metrics.resource.attributes)
                    )
                cumulative = temporality == _CUMULATIVE
                for point in points:
                    labels = _labels(point.attributes)
                    if kind == "sum":
                        value = point.as_int if point.WhichOneof("value") == "as_int" else None
                        batch.points.append(
                            SumPoint(
                                process,
                                metric.name,
                                labels,
                                point.start_time_unix_nano,
                                point.time_unix_nano,
                                float(point.as_double if value is None else value),
                                cumulative,
                            )
                        )
                    elif len(point.bucket_counts) not in (0, len(point.explicit_bounds) + 1):
                        batch.rejected["invalid_histogram"] += 1
                    else:
                        batch.points.append(
                            HistogramPoint(
                                process,
                                metric.name,
                                labels,
                                point.start_time_unix_nano,
                                point.time_unix_nano,
                                point.count,
                                point.sum,
                                tuple(point.explicit_bounds),
                                tuple(point.bucket_counts),
                                cumulative,
                            )
                        )
    return batch


def _labels(key_values: Iterable[Any]) -> Labels:
    return tuple(sorted((key, str(value)) for key, value in _attributes(key_values).items()))
