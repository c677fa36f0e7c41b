"""Deprecated name of :mod:`lockscope.instrumentation.metrics_aggregate` (the in-process
aggregates); kept so existing imports work."""

from lockscope.instrumentation.metrics_aggregate import (
    BOUNDS,
    OTHER,
    LockStats,
    StatsSnapshot,
    TemplateStats,
)

__all__ = ["BOUNDS", "OTHER", "LockStats", "StatsSnapshot", "TemplateStats"]
