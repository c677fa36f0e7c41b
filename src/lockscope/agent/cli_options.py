"""The ``lockscope agent`` options: flags, their environment variables, config file keys
and defaults.  Each option's help names its variable and default as ``(env NAME; default
VALUE)``: :mod:`lockscope.agent.cli_doc` builds the settings table from that."""

from __future__ import annotations

import argparse
from typing import Final

__all__ = ["FILE_KEYS", "add_arguments", "epilog"]

ENV_OTLP: Final = "LOCKSCOPE_AGENT_OTLP"
ENV_HTTP: Final = "LOCKSCOPE_AGENT_HTTP"
ENV_CONFIG: Final = "LOCKSCOPE_AGENT_CONFIG"
ENV_ALERTMANAGER: Final = "LOCKSCOPE_ALERTMANAGER_URL"
ENV_LOG_LEVEL: Final = "LOCKSCOPE_LOG_LEVEL"
ENV_MAX_REQUEST_BYTES: Final = "LOCKSCOPE_AGENT_MAX_REQUEST_BYTES"
ENV_TOKEN: Final = "LOCKSCOPE_AGENT_TOKEN"
ENV_TOKEN_FILE: Final = "LOCKSCOPE_AGENT_TOKEN_FILE"
ENV_TLS_CERT: Final = "LOCKSCOPE_AGENT_TLS_CERT"
ENV_TLS_KEY: Final = "LOCKSCOPE_AGENT_TLS_KEY"
ENV_EXTERNAL_URL: Final = "LOCKSCOPE_AGENT_EXTERNAL_URL"
ENV_RUNBOOK_URL: Final = "LOCKSCOPE_RUNBOOK_URL"
ENV_ROLE: Final = "LOCKSCOPE_AGENT_ROLE"
ENV_FORWARD_TO: Final = "LOCKSCOPE_AGENT_FORWARD_TO"
ROLES: Final = ("standalone", "shard", "detector")
ENV_WATCH_DATABASES: Final = "LOCKSCOPE_WATCH_DATABASES"

DEFAULT_OTLP: Final = "127.0.0.1:4318"
DEFAULT_HTTP: Final = "127.0.0.1:9477"
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
FILE_KEYS: Final = frozenset(
    {
        "otlp",
        "http",
        "alertmanager_urls",
        "log_level",
        "max_request_bytes",
        "token",
        "token_file",
        "tls_cert",
        "tls_key",
        "metrics_auth",
        "external_url",
        "runbook_url",
        "role",
        "forward_to",
        "databases",
    }
)
"""Top-level config file keys the command itself reads; the rest go to AgentConfig."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope agent`` flags (defaults are resolved later, see :func:`resolve`)."""
    parser.add_argument(
        "--otlp",
        metavar="HOST:PORT",
        help=f"OTLP/HTTP receiver address (env {ENV_OTLP}; default {DEFAULT_OTLP})",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=f"API, metrics and web view address (env {ENV_HTTP}; default {DEFAULT_HTTP})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config: thresholds, templates, limits (env {ENV_CONFIG}; default none)",
    )
    parser.add_argument(
        "--alertmanager-url",
        metavar="URL",
        action="append",
        dest="alertmanager_urls",
        help=f"Alertmanager to alert (env {ENV_ALERTMANAGER}, comma-separated)",
    )
    parser.add_argument(
        "--max-request-bytes",
        metavar="N",
        type=int,
        help=(
            "largest OTLP body, on the wire and after decompression "
            f"(env {ENV_MAX_REQUEST_BYTES}; default {DEFAULT_MAX_REQUEST_BYTES})"
        ),
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"debug, info, warning or error (env {ENV_LOG_LEVEL}; default {DEFAULT_LOG_LEVEL})",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"bearer token required on ingest, API, web view and /metrics (env {ENV_TOKEN})",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"read the bearer token from FILE (env {ENV_TOKEN_FILE})",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        help=f"serve HTTPS with this PEM certificate (env {ENV_TLS_CERT})",
    )
    parser.add_argument(
        "--tls-key", metavar="FILE", help=f"the certificate's PEM private key (env {ENV_TLS_KEY})"
    )
    parser.add_argument(
        "--external-url",
        metavar="URL",
        help=(
            "URL people reach the web view at, for alert links "
            f"(env {ENV_EXTERNAL_URL}; default: the HTTP address)"
        ),
    )
    parser.add_argument(
        "--runbook-url",
        metavar="URL",
        help=(
            "your runbook, linked from every alert: {alertname} in it is replaced, else "
            f"#alertname is appended (env {ENV_RUNBOOK_URL}; default: lockscope's runbook)"
        ),
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        help=(
            "standalone (one agent, or HA pairs), shard (owns its processes, forwards to "
            f"detectors) or detector (the fleet-wide graph) (env {ENV_ROLE}; default standalone)"
        ),
    )
    parser.add_argument(
        "--forward-to",
        metavar="URL",
        action="append",
        dest="forward_to",
        help=f"a shard's detector OTLP base URL (env {ENV_FORWARD_TO}, comma-separated)",
    )
    parser.add_argument(
        "--watch-database",
        metavar="DSN",
        action="append",
        dest="watch_databases",
        help=(
            "watch this database's own locks (postgresql://, mysql://, mariadb:// URL); "
            f"repeatable (env {ENV_WATCH_DATABASES}, comma-separated; file [[databases]])"
        ),
    )
    parser.add_argument(
        "--no-metrics-auth",
        dest="metrics_auth",
        action="store_false",
        default=None,
        help="serve /metrics without the token; the API and ingest still need it (default: off)",
    )


def epilog(parser: argparse.ArgumentParser) -> str:
    """The settings table for ``--help`` (generated from the options)."""
    from lockscope.agent.cli_doc import plain_table

    return "settings:\n" + plain_table(parser)
