"""Lock metrics: aggregated in process, exported over OTLP with the app's or our own provider.

The caller's thread only appends a measurement to the recorder (a list append under its
lock); the reporter thread hands them to OpenTelemetry instruments every tick, so the SDK's
own per-measurement cost never lands on a lock call.

Which MeterProvider (``LOCKSCOPE_METRICS_EXPORT``):

``auto`` (default)
    the app's global MeterProvider if it has configured one (``opentelemetry-instrument``
    with ``OTEL_METRICS_EXPORTER`` does), else a private one that exports to
    ``LOCKSCOPE_ENDPOINT/v1/metrics`` every ``LOCKSCOPE_METRICS_INTERVAL`` seconds (5).
``agent``
    always the private provider, so the agent gets lock metrics whatever the app does.
``app``
    always the global provider (nothing is exported if the app has none).
``none``
    no lock metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics

from lockscope import __version__, events
from lockscope.instrumentation.otlp_export import HttpTransport
from lockscope.instrumentation.recorder import Recorder

__all__ = ["LockMetrics", "app_has_meter_provider"]

_log = logging.getLogger("lockscope.instrumentation")

# Seconds; lock waits and holds span microseconds (in-process) to minutes (leases).
_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip


def app_has_meter_provider() -> bool:
    """Whether the app has set a real (SDK) global MeterProvider."""
    provider = metrics.get_meter_provider()
    name = type(provider).__name__
    return name not in ("_ProxyMeterProvider", "ProxyMeterProvider", "NoOpMeterProvider")


class LockMetrics:
    """The four lock instruments, fed from the recorder by the reporter thread."""

    def __init__(self, mode: str, endpoint: str, headers: Mapping[str, str], interval: float,
                 timeout: float, resource: Mapping[str, Any]) -> None:  # fmt: skip
        self.mode = mode
        self._private: Any = None
        provider: Any = None
        if mode == "none":
            self.enabled = False
            return
        self.enabled = True
        if mode == "agent" or (mode == "auto" and not app_has_meter_provider()):
            provider = self._private = _private_provider(
                endpoint, headers, interval, timeout, resource
            )
        meter = metrics.get_meter("lockscope.instrumentation", __version__, provider)
        self.acquisitions = meter.create_counter(
            events.METRIC_ACQUISITIONS, unit="{acquisition}", description="Lock acquire calls."
        )
        self.lost = meter.create_counter(
            events.METRIC_LOCKS_LOST, unit="{lock}", description="Holds found lost."
        )
        advice = {"explicit_bucket_boundaries_advisory": list(_BUCKETS)}
        try:
            self.wait = meter.create_histogram(
                events.METRIC_WAIT_DURATION, unit="s", description="Time spent acquiring.",
                **advice,
            )  # fmt: skip
            self.hold = meter.create_histogram(
                events.METRIC_HOLD_DURATION, unit="s", description="Time locks were held.",
                **advice,
            )  # fmt: skip
        except TypeError:  # an API older than 1.23 has no bucket advice
            self.wait = meter.create_histogram(events.METRIC_WAIT_DURATION, unit="s")
            self.hold = meter.create_histogram(events.METRIC_HOLD_DURATION, unit="s")

    def flush(self, recorder: Recorder) -> None:
        """Hand the recorder's measurements to the instruments (reporter thread)."""
        counts, lost, waits, holds = recorder.take_measurements()
        if not self.enabled:
            return
        attrs_cache: dict[tuple[str, str], dict[str, str]] = {}

        def attrs(template: str, system: str) -> dict[str, str]:
            found = attrs_cache.get((template, system))
            if found is None:
                found = attrs_cache[(template, system)] = {
                    events.ATTR_LOCK_TEMPLATE: template,
                    events.ATTR_LOCK_SYSTEM: system,
                }
            return found

        for (template, system, outcome), n in counts.items():
            self.acquisitions.add(n, {**attrs(template, system), events.ATTR_OUTCOME: outcome})
        for (template, system), n in lost.items():
            self.lost.add(n, attrs(template, system))
        for template, system, seconds in waits:
            self.wait.record(seconds, attrs(template, system))
        for template, system, seconds in holds:
            self.hold.record(seconds, attrs(template, system))

    def shutdown(self) -> None:
        """Export the private provider's last figures (bounded) and stop it."""
        if self._private is not None:
            try:
                self._private.force_flush(timeout_millis=1000)
                self._private.shutdown(timeout_millis=1000)
            except Exception:
                _log.debug("lockscope: metrics shutdown failed", exc_info=True)


def _private_provider(endpoint: str, headers: Mapping[str, str], interval: float,
                      timeout: float, resource: Mapping[str, Any]) -> Any:  # fmt: skip
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    class _Exporter(MetricExporter):
        """OTLP/HTTP protobuf to the agent, muted in a forked child (it has its own)."""

        def __init__(self) -> None:
            super().__init__()
            self._pid = os.getpid()
            self._transport = HttpTransport(endpoint, headers, timeout)

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            if os.getpid() != self._pid:
                return MetricExportResult.SUCCESS
            try:
                body = encode_metrics(metrics_data).SerializeToString()
            except Exception:
                _log.debug("lockscope: metrics encoding failed", exc_info=True)
                return MetricExportResult.FAILURE
            result = self._transport.post("/v1/metrics", body)
            return MetricExportResult.SUCCESS if result.ok else MetricExportResult.FAILURE

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            self._transport.close()

    reader = PeriodicExportingMetricReader(
        _Exporter(), export_interval_millis=interval * 1000, export_timeout_millis=2000
    )
    return MeterProvider(metric_readers=[reader], resource=Resource.create(dict(resource)))
