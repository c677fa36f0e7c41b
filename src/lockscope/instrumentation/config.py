"""The shim's configuration, read from the environment at instrumentation time.

See docs/instrumentation.md ("Configuration") for the table of variables.  Invalid values
never stop the application: they are logged once and the default is used.  An endpoint
that is not a URL is the exception: it is logged as an error naming the variable and
nothing is sent (sending to the default instead could feed some other agent).

Endpoints follow OpenTelemetry's conventions: ``LOCKSCOPE_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_ENDPOINT`` are base URLs the signal paths (``/v1/logs``,
``/v1/metrics``) are appended to, and a base given with a signal path already on it
(``http://agent:4318/v1/logs``) means its base.  ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` are full URLs, used as they are (a bare
``http://host:port`` gets the signal path), unless ``LOCKSCOPE_ENDPOINT`` is set.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = [
    "EndpointError",
    "ShimConfig",
    "base_endpoint",
    "check_endpoint",
    "endpoint_error",
    "env_flag",
    "resolve_endpoints",
]

_log = logging.getLogger("lockscope.instrumentation")

_TRUE = frozenset({"1", "true", "yes", "on"})
DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
SIGNAL_PATHS = ("/v1/logs", "/v1/metrics", "/v1/traces")
SIGNAL_ENV = {
    "/v1/logs": "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "/v1/metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
}
"""The per-signal variables of the signals the shim sends itself (spans go to the app's
own tracing pipeline)."""


class EndpointError(ValueError):
    """An endpoint setting is not an http(s) URL; the message names the setting."""


def check_endpoint(value: str, setting: str) -> str:
    """``value`` as an http(s) URL without a trailing slash, or :class:`EndpointError`.

    ``HOST:PORT`` (an explicit port, no scheme) is taken as ``http://HOST:PORT``, as
    earlier versions did.
    """
    text = value.strip()
    if "://" not in text:
        host, sep, port = text.rpartition(":")
        if sep and host and port.isdigit():
            text = "http://" + text
    parts = urlsplit(text)
    expected = "expected an http:// or https:// URL such as http://127.0.0.1:4318"
    if parts.scheme not in ("http", "https"):
        raise EndpointError(f"{setting}={value!r} is not a URL the shim can send to ({expected})")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise EndpointError(f"{setting}={value!r} has a bad port ({expected})") from None
    if not parts.hostname:
        raise EndpointError(f"{setting}={value!r} has no host ({expected})")
    if parts.query or parts.fragment:
        raise EndpointError(f"{setting}={value!r}: a query or fragment is not allowed")
    return text.rstrip("/")


def base_endpoint(url: str) -> str:
    """``url`` without a trailing signal path: ``http://a:4318/v1/logs`` -> ``http://a:4318``."""
    for path in SIGNAL_PATHS:
        if url.endswith(path):
            return url[: -len(path)].rstrip("/")
    return url


def endpoint_error(env: Mapping[str, str]) -> str | None:
    """Why the endpoint settings in ``env`` are unusable (naming the variable), or None."""
    return resolve_endpoints(env)[2]


def resolve_endpoints(env: Mapping[str, str]) -> tuple[str, dict[str, str], str | None]:
    """(base endpoint(s), per-signal full URLs, the error if a setting is not a URL)."""
    try:
        raw = env.get("LOCKSCOPE_ENDPOINT", "").strip()
        if raw:
            items = [item for item in raw.split(",") if item.strip()]
            bases = [base_endpoint(check_endpoint(i, "LOCKSCOPE_ENDPOINT")) for i in items]
            return ",".join(bases), {}, None
        general = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        base = (
            base_endpoint(check_endpoint(general, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            if general
            else DEFAULT_ENDPOINT
        )
        signals: dict[str, str] = {}
        for path, name in SIGNAL_ENV.items():
            value = env.get(name, "").strip()
            if value:
                url = check_endpoint(value, name)
                signals[path] = url if urlsplit(url).path not in ("", "/") else url + path
        return base, signals, None
    except EndpointError as exc:
        return DEFAULT_ENDPOINT, {}, str(exc)


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
    """Everything the shim reads from the environment (docs/instrumentation.md, "Configuration")."""

    endpoint: str = DEFAULT_ENDPOINT
    """OTLP/HTTP base URL of the agent (or a Collector); ``/v1/logs`` etc. are appended.
    Comma-separated: several agents (see :mod:`lockscope.instrumentation.otlp_fanout`)."""
    signal_urls: Mapping[str, str] = field(default_factory=dict)
    """Full URLs for single signals (``{"/v1/logs": url}``) from the per-signal
    ``OTEL_EXPORTER_OTLP_*_ENDPOINT`` variables; the others go to :attr:`endpoint`."""
    endpoint_error: str | None = None
    """Why the configured endpoint is unusable (nothing is sent), or None."""
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
        endpoint, signal_urls, endpoint_error = resolve_endpoints(env)
        if endpoint_error is not None and not env_flag(env, "LOCKSCOPE_DISABLED"):
            _log.error(
                "lockscope: %s; lock events are not sent anywhere (the app runs unchanged)",
                endpoint_error,
            )
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
            endpoint=endpoint,
            signal_urls=signal_urls,
            endpoint_error=endpoint_error,
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
