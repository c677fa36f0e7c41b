"""Counters of what the OTLP receiver took in, for the agent's own Prometheus metrics.

Exposed by the ``/metrics`` exporter as ``lockscope_agent_events_received_total{signal}``
and ``lockscope_agent_events_rejected_total{reason}``.  Reasons are a small fixed set (see
docs/agent.md), never free text, so the label stays bounded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ReceiverStats"]


@dataclass(slots=True)
class ReceiverStats:
    """Running totals since the agent started."""

    received: Counter[str] = field(default_factory=Counter)
    """Records received per signal (``logs``, ``traces``, ``metrics``): log records, spans
    and data points in requests that decoded, including ignored and rejected ones."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Rejections per reason.  Request-level reasons (``decode_error``, ``too_large``,
    ``unsupported_media_type``, ``unsupported_encoding``) count requests; the others count
    records."""
    ignored: Counter[str] = field(default_factory=Counter)
    """Records per signal that are not for lockscope (other logs, other spans/metrics)."""
    events: int = 0
    """Events accepted by the agent state."""
    truncated: Counter[str] = field(default_factory=Counter)
    """Strings cut to ``limits.max_string_length``, by field (``lock_name``, ``owner``,
    ``code``, ``actor``, ``service``, ``host``, ``instance``, ``other``...)."""
    connections_closed: Counter[str] = field(default_factory=Counter)
    """Client connections the agent closed on its own, by reason (``header_timeout``,
    ``limit``; see :mod:`lockscope.agent.server_guard`)."""
    connections_open: int = 0
    """Client connections open now, both listeners."""

    def reject(self, reason: str, count: int = 1) -> None:
        """Count ``count`` rejections for ``reason``."""
        if count:
            self.rejected[reason] += count

    def reject_all(self, reasons: Mapping[str, int]) -> None:
        """Count several reasons at once."""
        for reason, count in reasons.items():
            self.reject(reason, count)
