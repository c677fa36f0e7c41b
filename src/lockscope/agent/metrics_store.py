"""The shim's OTLP metrics, accumulated per process and series for the Prometheus exporter.

Each instrumented process exports its lock metrics (:data:`lockscope.events.METRIC_*`),
usually with cumulative temporality.  The store keeps one running total per (process,
metric, labels) series and sums them across processes on demand, so the exporter shows
fleet-wide counters that never go backwards:

- a cumulative point replaces the series' value; a smaller value or a later start time is a
  counter reset (the process restarted its SDK), whose last value is carried forward;
- a delta point is added;
- a point older than the series' last one is ignored (reordered delivery);
- :meth:`MetricsStore.forget_process` folds a dead process's totals into a retired total,
  so forgetting a process does not make a counter drop; :meth:`MetricsStore.forget_idle`
  does so for every process that has sent no points for a while (SDKs export cumulative
  series at every interval, so silence means the process is gone).

Series are capped (:attr:`MetricsStore.max_series`); points of new series beyond the cap
are dropped and counted in :attr:`MetricsStore.dropped_points`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from lockscope.agent.otlp_decode_metrics import HistogramPoint, Labels, SumPoint

__all__ = ["HistogramTotal", "MetricsStore", "SeriesKey"]

SeriesKey = tuple[str, Labels]
"""(metric name, sorted label pairs): a series summed across processes."""

DEFAULT_MAX_SERIES = 50_000
DEFAULT_IDLE_SECONDS = 600.0


@dataclass(slots=True)
class HistogramTotal:
    """Cumulative histogram: ``bucket_counts[i]`` counts values <= ``bounds[i]`` (the last
    bucket is +Inf); counts are per bucket, not cumulative across buckets, as in OTLP."""

    bounds: tuple[float, ...]
    bucket_counts: list[int]
    count: int = 0
    sum: float = 0.0

    def add(self, other: HistogramTotal) -> None:
        """Add ``other``'s counts; a histogram with different bounds adds only count/sum."""
        self.count += other.count
        self.sum += other.sum
        if other.bounds == self.bounds:
            for i, n in enumerate(other.bucket_counts):
                self.bucket_counts[i] += n
        else:
            # Different bucket layouts cannot be merged; keep the observations in +Inf so
            # the bucket totals still add up to count.
            self.bucket_counts[-1] += other.count

    def copy(self) -> HistogramTotal:
        """An independent copy."""
        return HistogramTotal(self.bounds, list(self.bucket_counts), self.count, self.sum)


@dataclass(slots=True)
class _SumSeries:
    start_ns: int
    time_ns: int
    last: float = 0.0
    """The last cumulative value reported since the current start."""
    carried: float = 0.0
    """Totals from before counter resets."""

    @property
    def total(self) -> float:
        return self.carried + self.last


@dataclass(slots=True)
class _HistogramSeries:
    start_ns: int
    time_ns: int
    last: HistogramTotal
    carried: HistogramTotal | None = None

    def total(self) -> HistogramTotal:
        out = self.last.copy()
        if self.carried is not None:
            out.add(self.carried)
        return out


@dataclass(slots=True)
class _Process:
    sums: dict[SeriesKey, _SumSeries] = field(default_factory=dict)
    histograms: dict[SeriesKey, _HistogramSeries] = field(default_factory=dict)
    last_seen: float = 0.0
    """``time.monotonic()`` of the last point received."""


class MetricsStore:
    """Per-process running totals of the shim's metrics; see the module docstring."""

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self.dropped_points = 0
        """Points dropped because the series cap was reached."""
        self._processes: dict[str, _Process] = {}
        self._series = 0
        self._retired_sums: dict[SeriesKey, float] = {}
        self._retired_histograms: dict[SeriesKey, HistogramTotal] = {}

    @property
    def series_count(self) -> int:
        """Live (per-process) series currently stored."""
        return self._series

    def add(self, points: Iterable[SumPoint | HistogramPoint]) -> int:
        """Fold points in; returns how many were dropped by the series cap."""
        dropped = 0
        now = time.monotonic()
        for point in points:
            process = self._processes.get(point.process.instance)
            if process is None:
                process = self._processes[point.process.instance] = _Process()
            process.last_seen = now
            key: SeriesKey = (point.name, point.labels)
            if isinstance(point, SumPoint):
                ok = self._add_sum(process, key, point)
            else:
                ok = self._add_histogram(process, key, point)
            if not ok:
                dropped += 1
        self.dropped_points += dropped
        return dropped

    def _has_room(self) -> bool:
        return self._series < self.max_series

    def _add_sum(self, process: _Process, key: SeriesKey, point: SumPoint) -> bool:
        series = process.sums.get(key)
        if series is None:
            if not self._has_room():
                return False
            process.sums[key] = _SumSeries(point.start_ns, point.time_ns, point.value)
            self._series += 1
            return True
        if point.time_ns < series.time_ns:
            return True  # reordered: a newer cumulative value is already in
        series.time_ns = point.time_ns
        if not point.cumulative:
            series.last += point.value
        elif point.value < series.last or point.start_ns > series.start_ns:
            series.carried += series.last
            series.start_ns = point.start_ns
            series.last = point.value
        else:
            series.last = point.value
        return True

    def _add_histogram(self, process: _Process, key: SeriesKey, point: HistogramPoint) -> bool:
        counts = list(point.bucket_counts) or [0] * (len(point.bounds) + 1)
        value = HistogramTotal(point.bounds, counts, point.count, point.sum)
        series = process.histograms.get(key)
        if series is None:
            if not self._has_room():
                return False
            process.histograms[key] = _HistogramSeries(point.start_ns, point.time_ns, value)
            self._series += 1
            return True
        if point.time_ns < series.time_ns:
            return True
        series.time_ns = point.time_ns
        if not point.cumulative:
            series.last.add(value)
        elif (
            point.count < series.last.count
            or point.start_ns > series.start_ns
            or point.bounds != series.last.bounds
        ):
            if series.carried is None:
                series.carried = series.last
            else:
                series.carried.add(series.last)
            series.start_ns = point.start_ns
            series.last = value
        else:
            series.last = value
        return True

    def forget_process(self, instance: str) -> None:
        """Drop a process's series, keeping its totals in the fleet-wide sums."""
        process = self._processes.pop(instance, None)
        if process is None:
            return
        for key, sum_series in process.sums.items():
            self._retired_sums[key] = self._retired_sums.get(key, 0.0) + sum_series.total
        for key, hist_series in process.histograms.items():
            retired = self._retired_histograms.get(key)
            if retired is None:
                self._retired_histograms[key] = hist_series.total()
            else:
                retired.add(hist_series.total())
        self._series -= len(process.sums) + len(process.histograms)

    def forget_idle(
        self, idle_seconds: float = DEFAULT_IDLE_SECONDS, now: float | None = None
    ) -> list[str]:
        """Forget (see :meth:`forget_process`) every process that has sent no points for
        ``idle_seconds``; returns their instances."""
        now = time.monotonic() if now is None else now
        idle = [i for i, p in self._processes.items() if now - p.last_seen > idle_seconds]
        for instance in idle:
            self.forget_process(instance)
        return idle

    def processes(self) -> list[str]:
        """Instances (``service.instance.id``) with stored series."""
        return list(self._processes)

    def sums(self) -> dict[SeriesKey, float]:
        """Counter totals per series, summed across processes (live and forgotten)."""
        out = dict(self._retired_sums)
        for process in self._processes.values():
            for key, series in process.sums.items():
                out[key] = out.get(key, 0.0) + series.total
        return out

    def histograms(self) -> dict[SeriesKey, HistogramTotal]:
        """Histogram totals per series, summed across processes (live and forgotten)."""
        out = {key: value.copy() for key, value in self._retired_histograms.items()}
        for process in self._processes.values():
            for key, series in process.histograms.items():
                total = series.total()
                if key in out:
                    out[key].add(total)
                else:
                    out[key] = total
        return out

    def process_sums(self, instance: str) -> dict[SeriesKey, float]:
        """One process's counter totals."""
        process = self._processes.get(instance)
        if process is None:
            return {}
        return {key: series.total for key, series in process.sums.items()}
