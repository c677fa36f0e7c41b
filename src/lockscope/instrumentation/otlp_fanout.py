"""Sending to several agents at once (high availability without a Collector).

``LOCKSCOPE_ENDPOINT=http://agent-a:4318,http://agent-b:4318`` makes the shim send every
request to each endpoint.  A request counts as delivered when at least one endpoint took
it, so one agent being down costs the others nothing: an endpoint that fails is skipped
for a cool-down (1 s, doubling up to 30 s while it keeps failing) and the requests it
misses meanwhile are counted in :attr:`FanoutTransport.missed`.  The agent that was away
catches up from the next heartbeat snapshot (docs/design.md, principle 3), as after any lost event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from lockscope.instrumentation.config import ShimConfig
from lockscope.instrumentation.otlp_export import HttpTransport, PostResult, Transport

__all__ = [
    "FanoutTransport",
    "SignalTransport",
    "UnsentTransport",
    "make_transport",
    "split_endpoints",
    "transport_for",
]

_FIRST_COOLDOWN = 1.0
_MAX_COOLDOWN = 30.0


def split_endpoints(endpoint: str) -> list[str]:
    """The comma-separated endpoints of ``LOCKSCOPE_ENDPOINT`` (empty items left out)."""
    return [item.strip().rstrip("/") for item in endpoint.split(",") if item.strip()]


class FanoutTransport:
    """POSTs each body to every endpoint that is not cooling down after a failure."""

    def __init__(
        self,
        endpoints: Sequence[str],
        headers: Mapping[str, str] | None = None,
        timeout: float = 1.0,
        ca_file: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("no endpoint")
        self.transports = [HttpTransport(e, headers, timeout, ca_file) for e in endpoints]
        self._down_until = [0.0] * len(endpoints)
        self._cooldown = [0.0] * len(endpoints)
        self.missed = [0] * len(endpoints)
        """Requests each endpoint did not get (it failed or was cooling down)."""

    def url(self, path: str) -> str:
        """The URLs of ``path`` on every endpoint, comma-separated."""
        return ",".join(t.url(path) for t in self.transports)

    def close(self) -> None:
        """Drop the kept-alive connections."""
        for transport in self.transports:
            transport.close()

    def post(self, path: str, body: bytes) -> PostResult:
        """POST ``body`` to each live endpoint; ok when at least one took it.  Never raises."""
        now = time.monotonic()
        live = [i for i, until in enumerate(self._down_until) if until <= now]
        if not live:  # all cooling down: try them all rather than drop everything
            live = list(range(len(self.transports)))
        failures: list[PostResult] = []
        delivered = False
        for i, transport in enumerate(self.transports):
            if i not in live:
                self.missed[i] += 1
                continue
            result = transport.post(path, body)
            if result.ok:
                delivered = True
                self._cooldown[i] = 0.0
                self._down_until[i] = 0.0
                continue
            failures.append(result)
            self.missed[i] += 1
            self._cooldown[i] = min(_MAX_COOLDOWN, max(_FIRST_COOLDOWN, self._cooldown[i] * 2))
            self._down_until[i] = time.monotonic() + self._cooldown[i]
        if delivered or not failures:
            return PostResult(ok=True, retryable=False, status=200)
        retry_after = [r.retry_after for r in failures if r.retry_after is not None]
        return PostResult(
            ok=False,
            retryable=any(r.retryable for r in failures),
            retry_after=min(retry_after) if retry_after else None,
            status=failures[0].status,
        )


def make_transport(
    endpoint: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 1.0,
    ca_file: str | None = None,
) -> HttpTransport | FanoutTransport:
    """One :class:`HttpTransport`, or a :class:`FanoutTransport` for a comma-separated list."""
    endpoints = split_endpoints(endpoint) or [endpoint]
    if len(endpoints) == 1:
        return HttpTransport(endpoints[0], headers, timeout, ca_file)
    return FanoutTransport(endpoints, headers, timeout, ca_file)


class SignalTransport:
    """Sends the signals that have a full URL of their own (``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``
    and friends) there, and the others through ``default``."""

    def __init__(self, default: Transport, signals: Mapping[str, HttpTransport]) -> None:
        self.default = default
        self.signals = dict(signals)

    def post(self, path: str, body: bytes) -> PostResult:
        """POST ``body`` for the signal ``path``; never raises."""
        own = self.signals.get(path)
        return own.post("", body) if own is not None else self.default.post(path, body)

    def close(self) -> None:
        """Drop the kept-alive connections."""
        self.default.close()
        for transport in self.signals.values():
            transport.close()


class UnsentTransport:
    """Stands in when the endpoint setting is not a URL: sends nothing (the error was
    logged when the configuration was read), so every batch is dropped and counted."""

    def __init__(self, error: str) -> None:
        self.error = error

    def post(self, path: str, body: bytes) -> PostResult:
        """Drop ``body``."""
        return PostResult(ok=False, retryable=False, error=self.error)

    def close(self) -> None:
        """Nothing to close."""


def transport_for(config: ShimConfig) -> Transport:
    """The transport the shim's configuration asks for."""
    if config.endpoint_error is not None:
        return UnsentTransport(config.endpoint_error)
    args = (config.headers, config.http_timeout, config.ca_file)
    default = make_transport(config.endpoint, *args)
    if not config.signal_urls:
        return default
    signals = {path: HttpTransport(url, *args) for path, url in config.signal_urls.items()}
    return SignalTransport(default, signals)
