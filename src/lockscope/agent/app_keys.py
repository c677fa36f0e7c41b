"""Typed application state shared by the agent's two aiohttp applications.

The OTLP receiver app and the HTTP app (API, metrics, web view) are separate applications
on separate addresses; both carry the same objects under these keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lockscope.agent.config import AgentConfig
from lockscope.agent.metrics_store import MetricsStore
from lockscope.agent.model import Event
from lockscope.agent.otlp_stats import ReceiverStats
from lockscope.agent.state import AgentState

__all__ = [
    "ALERTMANAGER_URLS_KEY",
    "CONFIG_KEY",
    "EVENT_TAPS_KEY",
    "METRICS_STORE_KEY",
    "READY_KEY",
    "RECEIVER_LIMITS_KEY",
    "RECEIVER_STATS_KEY",
    "STATE_KEY",
    "ReceiverLimits",
]

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """Limits of the OTLP receiver."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """Largest accepted body, checked on the wire and again after decompression (413)."""
    body_timeout: float = 30.0
    """Seconds a body may take to arrive once its headers have (408)."""


STATE_KEY = web.AppKey("lockscope.state", AgentState)
CONFIG_KEY = web.AppKey("lockscope.config", AgentConfig)
RECEIVER_STATS_KEY = web.AppKey("lockscope.receiver_stats", ReceiverStats)
RECEIVER_LIMITS_KEY = web.AppKey("lockscope.receiver_limits", ReceiverLimits)
METRICS_STORE_KEY = web.AppKey("lockscope.metrics_store", MetricsStore)
ALERTMANAGER_URLS_KEY = web.AppKey("lockscope.alertmanager_urls", tuple[str, ...])
"""Alertmanager base URLs from ``--alertmanager-url`` (empty: no alerts are sent)."""
READY_KEY = web.AppKey("lockscope.ready", asyncio.Event)
"""Set once both listeners are up and the state is ready; ``/readyz`` answers 200 then."""
EVENT_TAPS_KEY = web.AppKey("lockscope.event_taps", tuple[Callable[[Event], None], ...])
"""Called with every event the state applied, in order (a shard's forwarding); optional."""
