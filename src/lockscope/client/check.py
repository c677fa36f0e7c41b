"""Check the path from an instrumented app to the agent: send one test event the way the
shim sends its events, then ask the agent's API whether it arrived.

Example:

    lockscope check                                  # the shim's endpoint settings
    lockscope check --endpoint http://agent:4318 --http http://agent:9477
    lockscope check --token "$TOKEN"                 # an agent started with --token

The OTLP endpoint comes from ``--endpoint``, else the shim's own settings
(``LOCKSCOPE_ENDPOINT``, ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
default ``http://127.0.0.1:4318``), with the shim's headers (``LOCKSCOPE_HEADERS``,
``OTEL_EXPORTER_OTLP_HEADERS``).  The agent's API comes from ``--http``, else
``LOCKSCOPE_AGENT_HTTP``, else ``http://127.0.0.1:9477``.  ``--token`` (or
``LOCKSCOPE_AGENT_TOKEN``) is sent to both.

The test event is a heartbeat of a process with service name ``lockscope-check`` that
holds and waits for nothing; the agent lists it under /api/v1/processes until it forgets
dead processes (10 minutes by default).  It never causes a finding.

Exit status: 0 when the agent received the event; 1 otherwise, with a message naming the
URL and what failed: refused (nothing listens), timed out, the host does not resolve,
unauthorized (401/403), not an OTLP receiver (404/405, e.g. the agent's API port), or
accepted but never seen by the agent at --http.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TextIO

from lockscope import events
from lockscope.client import AgentClient, AgentError, add_agent_arguments, agent_token

__all__ = ["CheckFailed", "add_arguments", "check", "run"]

EXIT_FAILED: Final = 1
SERVICE: Final = "lockscope-check"


class CheckFailed(Exception):
    """The round trip failed; ``str()`` names the URL and what failed."""


@dataclass(frozen=True)
class CheckResult:
    """A successful round trip."""

    otlp_url: str
    http_url: str
    instance: str
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope check`` flags."""
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="OTLP/HTTP endpoint to test (default: the shim's, from LOCKSCOPE_ENDPOINT...)",
    )
    add_agent_arguments(
        parser,
        http_help="the agent's HTTP API, to confirm receipt",
        token_help="the agent's bearer token",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="for the send, and for the agent to show the event (5)",
    )


def _logs_urls(endpoint: str | None, env: Mapping[str, str]) -> list[str]:
    """Every ``/v1/logs`` URL the shim would send to."""
    from lockscope.instrumentation.config import (
        EndpointError,
        base_endpoint,
        check_endpoint,
        resolve_endpoints,
    )

    if endpoint is not None:
        try:
            bases = [base_endpoint(check_endpoint(e, "--endpoint")) for e in endpoint.split(",")]
        except EndpointError as exc:
            raise CheckFailed(str(exc)) from None
        return [base + "/v1/logs" for base in bases]
    base, signals, error = resolve_endpoints(env)
    if error is not None:
        raise CheckFailed(error)
    if "/v1/logs" in signals:
        return [signals["/v1/logs"]]
    return [b + "/v1/logs" for b in base.split(",")]


def _send(url: str, headers: Mapping[str, str], timeout: float, instance: str) -> None:
    from lockscope.instrumentation.otlp_export import HttpTransport, encode_events

    resource = {
        events.RES_SERVICE_NAME: SERVICE,
        events.RES_HOST_NAME: socket.gethostname(),
        events.RES_PROCESS_PID: os.getpid(),
        events.RES_SERVICE_INSTANCE: instance,
    }
    heartbeat = {
        events.ATTR_SCHEMA_VERSION: events.SCHEMA_VERSION,
        events.ATTR_HEARTBEAT_INTERVAL: 1.0,
        events.ATTR_DROPPED: 0,
        events.ATTR_WAITS: [],
        events.ATTR_HOLDS: [],
    }
    body = encode_events([(events.EVENT_HEARTBEAT, time.time_ns(), heartbeat)], resource)
    transport = HttpTransport(url, headers, timeout)
    # The transport's own warning would repeat what this command says better.
    shim_log = logging.getLogger("lockscope.instrumentation")
    was_disabled, shim_log.disabled = shim_log.disabled, True
    try:
        result = transport.post("", body)
    finally:
        shim_log.disabled = was_disabled
        transport.close()
    if result.ok:
        return
    if result.status in (401, 403):
        what = "unauthorized: the endpoint wants a token (--token or LOCKSCOPE_HEADERS)"
        if "Authorization" in headers:
            what = "unauthorized: the endpoint did not accept the token"
        raise CheckFailed(f"{url}: HTTP {result.status}, {what}")
    if result.status in (404, 405):
        raise CheckFailed(f"{url}: HTTP {result.status}, not an OTLP receiver{_api_hint(url)}")
    if result.status is not None:
        raise CheckFailed(f"{url}: the endpoint answered HTTP {result.status}")
    raise CheckFailed(f"{url}: {result.error or 'the send failed'}")


def _api_hint(logs_url: str) -> str:
    """Whether the URL's server is the agent's HTTP API (the usual mix-up: 9477 for 4318)."""
    base = logs_url.split("://", 1)[0] + "://" + logs_url.split("://", 1)[1].split("/", 1)[0]
    try:
        health = AgentClient(base, timeout=2.0).get("/healthz", hint=False)
    except (AgentError, ValueError):
        return " (is the path right? the shim appends /v1/logs to the base URL)"
    if isinstance(health, dict) and health.get("status") == "ok":
        return (
            f" ({base} is the lockscope agent's HTTP API; apps send to its OTLP address, "
            "--otlp, default port 4318)"
        )
    return ""


def _confirm(client: AgentClient, instance: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            processes = client.processes()
        except AgentError as exc:
            raise CheckFailed(
                f"the event was sent, but the agent's API could not confirm: {exc}"
            ) from None
        if any(p.get("instance") == instance for p in processes):
            return
        if time.monotonic() >= deadline:
            raise CheckFailed(
                f"the endpoint accepted the event, but the agent at {client.url} did not see "
                f"it within {timeout:g} s: the endpoint is another agent, or a Collector that "
                "does not forward logs to this agent"
            )
        time.sleep(0.05)


def check(
    endpoint: str | None = None,
    http: str | None = None,
    token: str | None = None,
    timeout: float = 5.0,
    env: Mapping[str, str] | None = None,
) -> list[CheckResult]:
    """One round trip per configured endpoint; raises :class:`CheckFailed`."""
    from lockscope.client import base_url
    from lockscope.instrumentation.config import ShimConfig

    env = os.environ if env is None else env
    token = agent_token(token, env)
    urls = _logs_urls(endpoint, env)
    headers = dict(ShimConfig.from_env({k: v for k, v in env.items() if "HEADERS" in k}).headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        api = base_url(http, env)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    client = AgentClient(api, token=token, timeout=timeout)
    results = []
    for url in urls:
        instance = f"lockscope-check-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        _send(url, headers, timeout, instance)
        _confirm(client, instance, timeout)
        results.append(CheckResult(url, api, instance, time.monotonic() - started))
    return results


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Check and say what happened; see the module docstring for the exit status."""
    out = out if out is not None else sys.stdout
    try:
        results = check(args.endpoint, args.http, args.token, args.timeout)
    except CheckFailed as exc:
        print(f"lockscope check: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for r in results:
        out.write(
            f"lockscope check: OK: {r.otlp_url} took a test event and the agent at "
            f"{r.http_url} saw it after {r.seconds:.2f} s (process {r.instance})\n"
        )
    return 0
