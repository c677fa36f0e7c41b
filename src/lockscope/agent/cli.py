"""Run the lockscope agent: the OTLP receiver, the live wait-for graph and its detectors, the
JSON API (and, with the metrics and web modules, /metrics, alerts and the web view).

Example:

    lockscope agent                  # OTLP on 127.0.0.1:4318, HTTP on 127.0.0.1:9477
    lockscope agent --otlp 0.0.0.0:4318 --http 0.0.0.0:9477 --config /etc/lockscope/agent.toml \\
        --alertmanager-url http://alertmanager:9093
    LOCKSCOPE_ENDPOINT=http://127.0.0.1:4318 lockscope instrument -- python app.py

Every flag can also be set in the environment and in the config file; a flag wins over
the environment, which wins over the file, which wins over the default (the table below,
generated from these options, is the one docs/agent.md carries).

With a token, ingest (/v1/*), the API, the web view and /metrics need
"Authorization: Bearer TOKEN" (/healthz and /readyz stay open); with a certificate and key
both listeners serve HTTPS.  See docs/reliability.md ("Access control").

The config file (TOML) holds these keys and the detection thresholds, lock-name
templates and limits (docs/agent.md, "Configuration"); an unknown key is an error.

The agent logs to stderr and shuts down gracefully on SIGTERM or SIGINT: it stops
accepting connections, finishes in-flight requests and exits 0.  Exit status 2 means a bad
flag, variable or config file; 1 means a listener could not bind.

HTTP routes (--http): / (the live web view), /findings/KIND/ID (one finding's page),
/metrics (Prometheus), /api/v1/... (JSON API), /healthz, /readyz.  OTLP routes (--otlp,
where instrumented apps send): /v1/logs, /v1/traces, /v1/metrics (protobuf or JSON,
optionally gzip).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lockscope.agent.cli_address import SettingsError, parse_address
from lockscope.agent.cli_options import (
    DEFAULT_HTTP,
    DEFAULT_OTLP,
    ENV_ALERTMANAGER,
    ENV_CONFIG,
    ENV_FORWARD_TO,
    ENV_HTTP,
    ENV_OTLP,
    ENV_WATCH_DATABASES,
    FILE_KEYS,
    OPTIONS_BY_NAME,
    ROLES,
    add_arguments,
    epilog,
)
from lockscope.agent.db_dsn import DatabaseTarget, DsnError, targets_from_settings

if TYPE_CHECKING:
    from lockscope.agent.config import AgentConfig

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_OTLP",
    "ENV_ALERTMANAGER",
    "ENV_HTTP",
    "ENV_OTLP",
    "FILE_KEYS",
    "AgentSettings",
    "SettingsError",
    "add_arguments",
    "epilog",
    "load_config",
    "parse_address",
    "resolve",
    "run",
]

EXIT_USAGE: Final = 2


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The resolved command line: where to listen and what to load."""

    otlp: tuple[str, int]
    http: tuple[str, int]
    config_path: Path | None
    alertmanager_urls: tuple[str, ...]
    log_level: str
    max_request_bytes: int
    config_data: Mapping[str, Any] = field(default_factory=dict)
    """The config file's other keys, for :meth:`AgentConfig.from_mapping`."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Setting -> where its value came from (``flag``, ``env``, ``file``, ``default``)."""
    token: str | None = None
    """The bearer token (from ``--token`` or read from ``--token-file``)."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_auth: bool = True
    external_url: str | None = None
    runbook_url: str | None = None
    """The runbook alerts link to (None: lockscope's own docs/runbook.md)."""
    """Base URL of the web view in alert links (default: the bound HTTP address)."""
    role: str = "standalone"
    """``standalone``, ``shard`` (forwards to ``forward_to``) or ``detector``."""
    forward_to: tuple[str, ...] = ()
    """A shard's detector OTLP base URLs."""
    databases: tuple[DatabaseTarget, ...] = ()
    """Databases whose own locks the agent watches (passwords kept out of reprs)."""


def _read_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: not valid TOML: {exc}") from None


def _check_known_keys(path: Path | None, document: Mapping[str, Any]) -> None:
    """Every top-level key of the config file is one the command or AgentConfig reads."""
    import difflib

    from lockscope.agent.config import AgentConfig

    known = sorted(FILE_KEYS | {f.name for f in dataclasses.fields(AgentConfig)})
    for key in document:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(
                f"config file {path}: unknown key {key!r}{guess} (known keys: {', '.join(known)})"
            )


def _split_urls(value: str) -> list[str]:
    return [url.strip() for url in value.split(",") if url.strip()]


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> AgentSettings:
    """Apply the precedence flag > environment > config file > default."""
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}

    def pick(name: str, flag: Any, from_env: Any, from_file: Any, default: Any) -> Any:
        for source, value in (("flag", flag), ("env", from_env), ("file", from_file)):
            if value not in (None, "", []):
                sources[name] = source
                return value
        sources[name] = "default"
        return default

    def at(name: str, value: Any) -> str:
        """Where setting ``name`` got ``value``, for the error message about it."""
        source = sources.get(name)
        option = OPTIONS_BY_NAME[name]
        if source == "flag":
            return f"{option.flag} {value!r}"
        if source == "env":
            return f"{option.env}={value!r}"
        if source == "file":
            return f"config file {config_path}: {name} = {value!r}"
        return f"{name} {value!r}"

    config_text = pick("config", args.config, env.get(ENV_CONFIG), None, None)
    config_path = Path(config_text) if config_text else None
    document = _read_file(config_path)
    section = {key: document[key] for key in FILE_KEYS if key in document}
    config_data = {key: value for key, value in document.items() if key not in FILE_KEYS}
    _check_known_keys(config_path, document)
    file_urls = section.get("alertmanager_urls")
    if isinstance(file_urls, str):
        file_urls = [file_urls]

    def setting(name: str, default: Any = None) -> Any:
        """The flag, variable or file key ``name`` by precedence, else ``default`` (else the
        option's own default): the option table says which flag and variable."""
        option = OPTIONS_BY_NAME[name]
        from_env = env.get(option.env) if option.env is not None else None
        fallback = option.default if default is None else default
        return pick(name, getattr(args, name, None), from_env, section.get(name), fallback)

    urls = pick(
        "alertmanager_urls",
        args.alertmanager_urls,
        _split_urls(env.get(ENV_ALERTMANAGER, "")),
        file_urls,
        [],
    )
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise SettingsError(f"{at('alertmanager_urls', urls)}: must be a list of URLs")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise SettingsError(
                f"{at('alertmanager_urls', url)}: an Alertmanager URL must start with "
                "http:// or https://"
            )
    runbook_url = setting("runbook_url")
    if runbook_url is not None and (
        not isinstance(runbook_url, str) or not runbook_url.startswith(("http://", "https://"))
    ):
        where = at("runbook_url", runbook_url)
        raise SettingsError(f"{where}: runbook_url must start with http:// or https://")
    external_url = setting("external_url")
    if external_url is not None and (
        not isinstance(external_url, str) or not external_url.startswith(("http://", "https://"))
    ):
        where = at("external_url", external_url)
        raise SettingsError(f"{where}: external_url must start with http:// or https://")
    otlp = setting("otlp")
    http = setting("http")
    level = setting("log_level")
    if str(level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(
            f"{at('log_level', level)}: unknown log level (expected debug, info, warning or error)"
        )
    max_bytes = setting("max_request_bytes")
    try:
        max_request_bytes = int(max_bytes)
    except (TypeError, ValueError):
        where = at("max_request_bytes", max_bytes)
        raise SettingsError(f"{where}: max_request_bytes must be an integer") from None
    if max_request_bytes < 1024:
        where = at("max_request_bytes", max_bytes)
        raise SettingsError(f"{where}: max_request_bytes must be at least 1024")
    token = setting("token")
    token_file = setting("token_file")
    if token is None and token_file is not None:
        from lockscope.agent.web_security import read_token_file

        try:
            token = read_token_file(str(token_file))
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{at('token_file', token_file)}: cannot read it: {exc}") from None
    if token is not None and (not isinstance(token, str) or token != token.strip()):
        where = at("token", "...")  # never echo the secret
        raise SettingsError(f"{where}: the token must be a string without surrounding spaces")
    tls_cert = setting("tls_cert")
    tls_key = setting("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise SettingsError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    metrics_auth = setting("metrics_auth", True)
    if not isinstance(metrics_auth, bool):
        raise SettingsError(f"{at('metrics_auth', metrics_auth)}: metrics_auth must be true/false")
    role = setting("role")
    if role not in ROLES:
        raise SettingsError(f"{at('role', role)}: the role must be one of {', '.join(ROLES)}")
    file_forward = section.get("forward_to")
    if isinstance(file_forward, str):
        file_forward = [file_forward]
    forward_to = pick(
        "forward_to",
        args.forward_to if hasattr(args, "forward_to") else None,
        _split_urls(env.get(ENV_FORWARD_TO, "")),
        file_forward,
        [],
    )
    if not isinstance(forward_to, list) or not all(isinstance(u, str) for u in forward_to):
        raise SettingsError("forward_to must be a list of URLs")
    for url in forward_to:
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"forward_to URL must start with http:// or https://: {url!r}")
    if role == "shard" and not forward_to:
        raise SettingsError("a shard needs --forward-to (the detector agents' OTLP URLs)")
    if role != "shard" and forward_to:
        raise SettingsError(f"--forward-to is for --role shard (the role is {role})")
    try:
        databases = targets_from_settings(
            getattr(args, "watch_databases", None) or (),
            env.get(ENV_WATCH_DATABASES),
            section.get("databases"),
        )
    except DsnError as exc:
        raise SettingsError(str(exc)) from None
    try:
        otlp_address = parse_address(str(otlp), "the OTLP address")
        http_address = parse_address(str(http), "the HTTP address")
    except SettingsError as exc:
        name, value = ("otlp", otlp) if "OTLP" in str(exc) else ("http", http)
        raise SettingsError(f"{at(name, value)}: {exc}") from None
    if otlp_address == http_address and otlp_address[1] != 0:
        raise SettingsError(f"the OTLP and HTTP addresses must differ (both {otlp})")
    return AgentSettings(
        otlp=otlp_address,
        http=http_address,
        config_path=config_path,
        alertmanager_urls=tuple(urls),
        log_level=str(level).upper(),
        max_request_bytes=max_request_bytes,
        config_data=config_data,
        sources=sources,
        token=token,
        tls_cert=Path(tls_cert) if tls_cert is not None else None,
        tls_key=Path(tls_key) if tls_key is not None else None,
        metrics_auth=metrics_auth,
        external_url=external_url,
        runbook_url=runbook_url,
        role=role,
        forward_to=tuple(forward_to),
        databases=databases,
    )


def load_config(settings: AgentSettings) -> AgentConfig:
    """The :class:`AgentConfig` from the config file's detection keys (defaults without a
    file); raises :class:`SettingsError` naming the file and the bad key."""
    from lockscope.agent.config import AgentConfig

    try:
        config = AgentConfig.from_mapping(settings.config_data)
    except ValueError as exc:
        raise SettingsError(f"config file {settings.config_path}: {exc}") from None
    if settings.role == "detector" and "stale_holder_findings" not in settings.config_data:
        # The shards own liveness: a detector that stops hearing from a shard must not call
        # that shard's holders orphaned.
        config = dataclasses.replace(config, stale_holder_findings=False)
    return config


def run(args: argparse.Namespace) -> int:
    """Resolve settings, load the config and serve until SIGTERM/SIGINT."""
    try:
        settings = resolve(args)
        config = load_config(settings)
    except SettingsError as exc:
        print(f"lockscope agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name, source in sorted(settings.sources.items()):
        logging.getLogger("lockscope.agent").debug("setting %s from %s", name, source)

    try:
        from lockscope.agent.app import run_agent
        from lockscope.agent.export_alertmanager import alert_options
        from lockscope.agent.web_security import AccessPolicy, server_ssl_context
    except ImportError as exc:
        print(
            f"lockscope agent: {exc.name or exc} is missing; install the agent extra: "
            "pip install 'lockscope[agent]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from lockscope.agent.cli_address import listener_problem

    problem = listener_problem(
        [
            ("OTLP receiver", f"--otlp / {ENV_OTLP} / config key otlp", settings.otlp),
            ("HTTP API", f"--http / {ENV_HTTP} / config key http", settings.http),
        ]
    )
    if problem is not None:
        print(f"lockscope agent: {problem}", file=sys.stderr)
        return 1
    ssl_context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            ssl_context = server_ssl_context(settings.tls_cert, settings.tls_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            print(f"lockscope agent: cannot load the TLS certificate/key: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return run_agent(
        config,
        access=AccessPolicy(settings.token, protect_metrics=settings.metrics_auth),
        ssl_context=ssl_context,
        otlp=settings.otlp,
        http=settings.http,
        max_request_bytes=settings.max_request_bytes,
        alertmanager_urls=settings.alertmanager_urls,
        http_setup=[
            alert_options(
                external_url=settings.external_url,
                **({"runbook_url": settings.runbook_url} if settings.runbook_url else {}),
            ),
            *_database_setup(settings),
        ],
        forward_to=settings.forward_to,
        forward_headers={"Authorization": f"Bearer {settings.token}"} if settings.token else None,
    )


def _database_setup(settings: AgentSettings) -> list[Any]:
    if not settings.databases:
        return []
    from lockscope.agent.db_watch import setup_database_watchers

    return [setup_database_watchers(settings.databases)]


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    """``python -m lockscope.agent.cli``: the same as ``lockscope agent``."""
    parser = argparse.ArgumentParser(
        prog="lockscope agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
