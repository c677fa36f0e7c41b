"""Lock metrics export: the in-process aggregates of :mod:`.metrics_aggregate`, over OTLP.

The caller's thread only updates cumulative counts and bucketed durations (no SDK call).
The reporter thread exports them, one of two ways (``LOCKSCOPE_METRICS_EXPORT``):

``agent``
    the shim encodes the cumulative counters and histograms itself (``opentelemetry-proto``)
    and POSTs them to ``LOCKSCOPE_ENDPOINT/v1/metrics`` every ``LOCKSCOPE_METRICS_INTERVAL``
    seconds (5) from the sender thread: exact buckets, no per-measurement cost at all.
``app``
    the app's global MeterProvider: the shim creates OpenTelemetry instruments and, each
    tick, adds the new counts and re-records the new durations at bucket resolution (the
    bucket's upper bound, at most 20,000 measurements per tick; beyond that they are counted
    in ``lockscope.dropped``), so they leave with the app's own metrics pipeline.
``auto`` (default)
    ``app`` if the app has configured a MeterProvider (``opentelemetry-instrument`` with
    ``OTEL_METRICS_EXPORTER`` does) when the shim starts, or passed one as
    ``instrument(meter_provider=...)``, else ``agent``.
``none``
    no export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

from lockscope import __version__, events
from lockscope.instrumentation.metrics_aggregate import BOUNDS, StatsSnapshot
from lockscope.instrumentation.otlp_export import encode_stats
from lockscope.instrumentation.recorder import Recorder

__all__ = ["LockMetrics", "app_has_meter_provider"]

_MAX_RECORDS_PER_TICK = 20_000
_REPRESENTATIVE = [*BOUNDS, BOUNDS[-1] * 2]


def app_has_meter_provider() -> bool:
    """Whether the app has set a real (SDK) global MeterProvider."""
    name = type(metrics.get_meter_provider()).__name__
    return name not in ("_ProxyMeterProvider", "ProxyMeterProvider", "NoOpMeterProvider")


class LockMetrics:
    """Exports one recorder's lock metrics; driven by the reporter thread."""

    def __init__(
        self,
        mode: str,
        interval: float,
        resource: Callable[[], dict[str, Any]],
        submit: Callable[[bytes], None],
        meter_provider: Any = None,
    ) -> None:
        if mode == "auto":
            app = meter_provider is not None or app_has_meter_provider()
            mode = "app" if app else "agent"
        self.mode = mode
        self.interval = interval
        self._resource = resource
        self._submit = submit
        self._next = time.monotonic() + interval
        self._last: StatsSnapshot | None = None
        if mode == "app":
            meter = metrics.get_meter("lockscope.instrumentation", __version__, meter_provider)
            self._acquisitions = meter.create_counter(
                events.METRIC_ACQUISITIONS, unit="{acquisition}", description="Lock acquires."
            )
            self._lost = meter.create_counter(
                events.METRIC_LOCKS_LOST, unit="{lock}", description="Holds found lost."
            )
            self._wait = meter.create_histogram(
                events.METRIC_WAIT_DURATION,
                unit="s",
                description="Time spent acquiring.",
                explicit_bucket_boundaries_advisory=list(BOUNDS),
            )
            self._hold = meter.create_histogram(
                events.METRIC_HOLD_DURATION,
                unit="s",
                description="Time locks were held.",
                explicit_bucket_boundaries_advisory=list(BOUNDS),
            )

    def tick(self, recorder: Recorder, *, force: bool = False) -> None:
        """Export if the interval has passed (``agent``) or the new figures (``app``)."""
        if self.mode == "agent":
            if force or time.monotonic() >= self._next:
                self._next = time.monotonic() + self.interval
                self._submit(encode_stats(recorder.stats.snapshot(), self._resource()))
        elif self.mode == "app":
            self._feed(recorder)

    def _feed(self, recorder: Recorder) -> None:
        snapshot = recorder.stats.snapshot()
        last = self._last
        self._last = snapshot
        _, acquisitions, lost, waits, holds = snapshot
        _, old_acq, old_lost, old_waits, old_holds = last or (0, {}, {}, {}, {})

        def attrs(template: str, system: str) -> dict[str, str]:
            return {events.ATTR_LOCK_TEMPLATE: template, events.ATTR_LOCK_SYSTEM: system}

        for (template, system, outcome), count in acquisitions.items():
            delta = count - old_acq.get((template, system, outcome), 0)
            if delta:
                self._acquisitions.add(
                    delta, {**attrs(template, system), events.ATTR_OUTCOME: outcome}
                )
        for key, count in lost.items():
            delta = count - old_lost.get(key, 0)
            if delta:
                self._lost.add(delta, attrs(*key))
        budget = _MAX_RECORDS_PER_TICK
        pairs = ((self._wait, waits, old_waits), (self._hold, holds, old_holds))
        for instrument, hists, old in pairs:
            for key, hist in hists.items():
                before = old.get(key)
                point = attrs(*key)
                for i in range(len(hist) - 1):
                    delta = int(hist[i] - (before[i] if before else 0))
                    take = min(delta, budget)
                    budget -= take
                    if delta > take:
                        recorder.dropped += delta - take
                    for _ in range(take):
                        instrument.record(_REPRESENTATIVE[i], point)
