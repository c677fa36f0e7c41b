"""Access control for the agent's two listeners: bearer token, TLS, safe response headers.

- **Bearer token** (``--token``, ``--token-file``, ``LOCKSCOPE_AGENT_TOKEN``, config
  ``token``/``token_file``): when set, every request to the OTLP receiver (``/v1/*``) and to
  the HTTP side (JSON API, web view and, unless ``metrics_auth = false``, ``/metrics``)
  must carry ``Authorization: Bearer <token>``; anything else gets 401.  The comparison is
  :func:`hmac.compare_digest` over bytes, so its time does not depend on how much of a
  guess was right.  ``/healthz`` and ``/readyz`` stay open for probes.  Refused OTLP
  requests are counted as ``lockscope_agent_events_rejected_total{reason="unauthorized"}``.
- **TLS** (``--tls-cert``/``--tls-key``): both listeners serve HTTPS with an
  :class:`ssl.SSLContext` (TLS 1.2 or newer).
- **Exposure warning**: listening on a non-loopback address without a token logs a
  warning naming the address.
- **Headers**: every HTTP-side response gets ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``,
  ``Cross-Origin-Resource-Policy: same-origin`` and, unless the handler set its own (the
  web view does), a Content-Security-Policy that allows nothing at all.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = [
    "OPEN_PATHS",
    "SAFE_HEADERS",
    "AccessPolicy",
    "add_safe_headers",
    "auth_middleware",
    "is_loopback",
    "read_token_file",
    "server_ssl_context",
    "warn_if_exposed",
]

log = logging.getLogger("lockscope.agent")

OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
"""Paths that never need the token (liveness and readiness probes)."""
METRICS_PATH: Final = "/metrics"
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SAFE_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may talk to the agent."""

    token: str | None = None
    """The shared bearer token; ``None`` leaves both listeners open (loopback default)."""
    protect_metrics: bool = True
    """Whether ``/metrics`` needs the token too (set false for a Prometheus without
    credentials on a trusted network)."""

    def __post_init__(self) -> None:
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            raise ValueError("the agent token must be non-empty, without surrounding spaces")

    def needs_token(self, path: str) -> bool:
        """Whether a request to ``path`` must carry the token."""
        if self.token is None or path in OPEN_PATHS:
            return False
        return self.protect_metrics or path != METRICS_PATH

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (constant time)."""
        if self.token is None:
            return True
        scheme, _, presented = (authorization or "").partition(" ")
        # aiohttp hands header bytes that are not UTF-8 over as surrogate escapes, which a
        # plain encode() refuses (a 500 per request): encode them back to the bytes sent.
        # They never equal the token, so such a header is simply unauthorized.
        raw = presented.strip().encode("utf-8", "surrogateescape")
        # Compare even when the scheme is wrong, so timing says nothing about the header.
        matches = hmac.compare_digest(raw, self.token.encode())
        return scheme.lower() == "bearer" and matches


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace and the final newline removed)."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def auth_middleware(policy: AccessPolicy, on_refused: object = None) -> Middleware:
    """An aiohttp middleware that answers 401 to requests without the token.

    ``on_refused`` (a callable taking the request) is called for every refused request,
    e.g. to count it.
    """

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if policy.needs_token(request.path) and not policy.allows(
            request.headers.get("Authorization")
        ):
            if callable(on_refused):
                on_refused(request)
            return web.json_response(
                {"error": "unauthorized: send Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="lockscope"'},
            )
        return await handler(request)

    return check_token


async def add_safe_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: the safe headers on every response, errors included."""
    for name, value in SAFE_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", API_CSP)


def server_ssl_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) from a PEM certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def warn_if_exposed(addresses: Iterable[tuple[str, int]], policy: AccessPolicy) -> list[str]:
    """Log a warning for each non-loopback listener when no token is set; returns the
    warnings (for tests and ``lockscope agent``'s start-up output)."""
    if policy.token is not None:
        return []
    warnings = []
    for host, port in addresses:
        if not is_loopback(host):
            message = (
                f"listening on {host}:{port} without a token: anyone who can reach it can "
                "send events and read lock names; set --token or LOCKSCOPE_AGENT_TOKEN "
                "(see docs/reliability.md, Access control)"
            )
            log.warning(message)
            warnings.append(message)
    return warnings
