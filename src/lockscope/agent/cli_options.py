"""The ``lockscope agent`` options: flags, their environment variables, config file keys
and defaults.  Each option's help names its variable and default as ``(env NAME; default
VALUE)``: :mod:`lockscope.agent.cli_doc` builds the settings table from that."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["FILE_KEYS", "OPTIONS_BY_NAME", "add_arguments", "epilog"]

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


@dataclass(frozen=True, slots=True)
class _Option:
    """One flag of ``lockscope agent``; its help ends with where else it can be set,
    ``(env NAME; default VALUE)``, the form :mod:`lockscope.agent.cli_doc` reads."""

    flag: str
    what: str
    env: str | None = None
    default: object = None
    """A value, shown as ``default VALUE``."""
    otherwise: str | None = None
    """What applies when the option is not set, in words: ``default: WORDS``."""
    metavar: str | None = None
    repeatable: bool = False
    """The flag may be given again (``action="append"``); the variable is comma-separated."""
    dest: str | None = None
    choices: tuple[str, ...] | None = None
    type: Callable[[str], object] | None = None
    file_key: str | None = None
    """The config file key, when it is not the option's dest."""
    switch_off: bool = False
    """A ``--no-...`` switch: ``False`` when given, ``None`` (not set) otherwise."""

    @property
    def name(self) -> str:
        """The setting's name: its argparse dest and its config file key."""
        return self.dest or self.flag.removeprefix("--").replace("-", "_")

    def help(self) -> str:
        where = []
        if self.env is not None:
            where.append(f"env {self.env}" + (", comma-separated" if self.repeatable else ""))
        if self.default is not None:
            where.append(f"default {self.default}")
        if self.otherwise is not None:
            where.append(f"default: {self.otherwise}")
        if self.file_key is not None:
            where.append(f"file {self.file_key}")
        return f"{self.what} ({'; '.join(where)})"

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        options: dict[str, Any] = {"help": self.help()}
        if self.switch_off:
            options.update(action="store_false", default=None)
        elif self.repeatable:
            options.update(action="append")
        for name in ("metavar", "dest", "choices", "type"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        parser.add_argument(self.flag, **options)


_OPTIONS: Final = (
    _Option("--otlp", "OTLP/HTTP receiver address", ENV_OTLP, DEFAULT_OTLP, metavar="HOST:PORT"),
    _Option(
        "--http", "API, metrics and web view address", ENV_HTTP, DEFAULT_HTTP, metavar="HOST:PORT"
    ),
    _Option(
        "--config", "TOML config: thresholds, templates, limits", ENV_CONFIG, "none", metavar="FILE"
    ),
    _Option(
        "--alertmanager-url",
        "Alertmanager to alert",
        ENV_ALERTMANAGER,
        metavar="URL",
        repeatable=True,
        dest="alertmanager_urls",
    ),
    _Option(
        "--max-request-bytes",
        "largest OTLP body, on the wire and after decompression",
        ENV_MAX_REQUEST_BYTES,
        DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        type=int,
    ),
    _Option(
        "--log-level",
        "debug, info, warning or error",
        ENV_LOG_LEVEL,
        DEFAULT_LOG_LEVEL,
        metavar="LEVEL",
    ),
    _Option(
        "--token",
        "bearer token required on ingest, API, web view and /metrics",
        ENV_TOKEN,
        metavar="TOKEN",
    ),
    _Option("--token-file", "read the bearer token from FILE", ENV_TOKEN_FILE, metavar="FILE"),
    _Option("--tls-cert", "serve HTTPS with this PEM certificate", ENV_TLS_CERT, metavar="FILE"),
    _Option("--tls-key", "the certificate's PEM private key", ENV_TLS_KEY, metavar="FILE"),
    _Option(
        "--external-url",
        "URL people reach the web view at, for alert links",
        ENV_EXTERNAL_URL,
        otherwise="the HTTP address",
        metavar="URL",
    ),
    _Option(
        "--runbook-url",
        "your runbook, linked from every alert: {alertname} in it is replaced, else "
        "#alertname is appended",
        ENV_RUNBOOK_URL,
        otherwise="lockscope's runbook",
        metavar="URL",
    ),
    _Option(
        "--role",
        "standalone (one agent, or HA pairs), shard (owns its processes, forwards to "
        "detectors) or detector (the fleet-wide graph)",
        ENV_ROLE,
        "standalone",
        choices=ROLES,
    ),
    _Option(
        "--forward-to",
        "a shard's detector OTLP base URL",
        ENV_FORWARD_TO,
        metavar="URL",
        repeatable=True,
        dest="forward_to",
    ),
    _Option(
        "--watch-database",
        "watch this database's own locks (postgresql://, mysql://, mariadb:// URL); repeatable",
        ENV_WATCH_DATABASES,
        metavar="DSN",
        repeatable=True,
        dest="watch_databases",
        file_key="[[databases]]",
    ),
    _Option(
        "--no-metrics-auth",
        "serve /metrics without the token; the API and ingest still need it",
        otherwise="off",
        dest="metrics_auth",
        switch_off=True,
    ),
)


OPTIONS_BY_NAME: Final = {option.name: option for option in _OPTIONS}
"""The options by setting name (``alertmanager_urls``, ``log_level``...): where
:func:`lockscope.agent.cli.resolve` finds each one's variable, default and flag."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope agent`` flags (defaults are resolved later, see :func:`resolve`)."""
    for option in _OPTIONS:
        option.add_to(parser)


def epilog(parser: argparse.ArgumentParser) -> str:
    """The settings table for ``--help`` (generated from the options)."""
    from lockscope.agent.cli_doc import plain_table

    return "settings:\n" + plain_table(parser)
