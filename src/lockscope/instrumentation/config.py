"""The shim's configuration, read from the environment at instrumentation time.

See docs/instrumentation.md ("Configuration") for the table of variables.  Invalid values
never stop the application: they are logged once and the default is used.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["ShimConfig", "env_flag"]

_log = logging.getLogger("lockscope.instrumentation")

_TRUE = frozenset({"1", "true", "yes", "on"})
DEFAULT_ENDPOINT = "http://127.0.0.1:4318"


def env_flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """Whether the variable ``name`` is set to a true value (``true``, ``1``, ``yes``, ``on``)."""
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in _TRUE


def _seconds(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        _log.warning("lockscope: %s=%r is not a number; using %s", name, raw, default)
        return default
    if not value >= minimum:  # also rejects NaN
        _log.warning("lockscope: %s=%r is below %s; using %s", name, raw, minimum, default)
        return default
    return value


def _parse_pairs(raw: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` as in OTEL_RESOURCE_ATTRIBUTES / OTEL_EXPORTER_OTLP_HEADERS."""
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


@dataclass(frozen=True)
class ShimConfig:
    """Everything the shim reads from the environment (SPEC "Shim configuration")."""

    endpoint: str = DEFAULT_ENDPOINT
    """OTLP/HTTP base URL of the agent (or a Collector); ``/v1/logs`` etc. are appended."""
    report_after: float = 0.2
    """Seconds a wait or hold must last before it is reported (principle 1)."""
    heartbeat: float = 1.0
    """Seconds between heartbeat snapshots (principle 3)."""
    disabled: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra HTTP headers on every request (e.g. ``Authorization``)."""
    service_name: str = "unknown_service"
    resource: Mapping[str, str] = field(default_factory=dict)
    """Extra resource attributes from ``OTEL_RESOURCE_ATTRIBUTES``."""
    host_name: str = ""
    instrument_threading: bool = False
    instrument_asyncio: bool = False
    metrics_export: str = "auto"
    """``auto``: use the app's MeterProvider if it has one, else export to the agent;
    ``agent``: always export to the agent; ``app``: only the app's provider; ``none``."""
    metrics_interval: float = 5.0
    queue_size: int = 10_000
    http_timeout: float = 1.0
    ca_file: str | None = None
    """PEM CA bundle to trust for an ``https://`` endpoint (default: the system's)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ShimConfig:
        """Build the configuration from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        endpoint = (
            env.get("LOCKSCOPE_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or DEFAULT_ENDPOINT
        ).strip()
        headers = _parse_pairs(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
        headers.update(_parse_pairs(env.get("LOCKSCOPE_HEADERS", "")))
        resource = _parse_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        service = env.get("OTEL_SERVICE_NAME") or resource.get("service.name") or "unknown_service"
        metrics_export = env.get("LOCKSCOPE_METRICS_EXPORT", "auto").strip().lower()
        if metrics_export not in ("auto", "agent", "app", "none"):
            _log.warning(
                "lockscope: LOCKSCOPE_METRICS_EXPORT=%r unknown; using auto", metrics_export
            )
            metrics_export = "auto"
        queue_size = int(_seconds(env, "LOCKSCOPE_QUEUE_SIZE", 10_000, 10))
        return cls(
            endpoint=endpoint.rstrip("/"),
            report_after=_seconds(env, "LOCKSCOPE_REPORT_AFTER", 0.2, 0.0),
            heartbeat=_seconds(env, "LOCKSCOPE_HEARTBEAT", 1.0, 0.05),
            disabled=env_flag(env, "LOCKSCOPE_DISABLED"),
            headers=headers,
            service_name=service,
            resource=resource,
            host_name=resource.get("host.name") or socket.gethostname(),
            instrument_threading=env_flag(env, "LOCKSCOPE_INSTRUMENT_THREADING"),
            instrument_asyncio=env_flag(env, "LOCKSCOPE_INSTRUMENT_ASYNCIO"),
            metrics_export=metrics_export,
            metrics_interval=_seconds(env, "LOCKSCOPE_METRICS_INTERVAL", 5.0, 0.1),
            queue_size=queue_size,
            http_timeout=_seconds(env, "LOCKSCOPE_HTTP_TIMEOUT", 1.0, 0.01),
            ca_file=(
                env.get("LOCKSCOPE_CA_FILE") or env.get("OTEL_EXPORTER_OTLP_CERTIFICATE") or None
            ),
        )
