"""Deprecated name of :mod:`lockscope.instrumentation.metrics_export` (exporting the lock
metrics); kept so existing imports work."""

from lockscope.instrumentation.metrics_export import LockMetrics, app_has_meter_provider

__all__ = ["LockMetrics", "app_has_meter_provider"]
