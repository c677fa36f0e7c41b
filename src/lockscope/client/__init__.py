"""The one HTTP client of the agent's JSON API, and the commands built on it.

Everything that reads the agent from outside (``lockscope status``, ``lockscope top``,
``lockscope check``, the demo, :class:`lockscope.testing.agent.InProcessAgent`) goes
through :class:`AgentClient`, so one error type, :class:`AgentError`, says what failed in
the same words everywhere.  It uses only the standard library: a client never needs the
agent's extra (aiohttp).

    from lockscope.client import AgentClient, AgentError

    client = AgentClient("http://127.0.0.1:9477", token=None)
    active = client.findings("/api/v1/deadlocks", "deadlocks", status="active")
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Final, Literal

from lockscope._net import describe_os_error

__all__ = [
    "DEFAULT_HTTP_URL",
    "ENV_HTTP",
    "ENV_TOKEN",
    "AgentClient",
    "AgentError",
    "ErrorKind",
    "add_agent_arguments",
    "address_origin",
    "agent_token",
    "base_url",
    "describe_os_error",
]

DEFAULT_HTTP_URL: Final = "http://127.0.0.1:9477"
ENV_HTTP: Final = "LOCKSCOPE_AGENT_HTTP"
ENV_TOKEN: Final = "LOCKSCOPE_AGENT_TOKEN"
DEFAULT_OTLP_PORT: Final = 4318

ErrorKind = Literal[
    "refused", "timeout", "unresolved", "unreachable", "unauthorized", "http", "bad_answer"
]


class AgentError(Exception):
    """The agent could not be reached, or answered with an error or an unexpected body.

    ``kind`` says which (``refused``, ``timeout``, ``unresolved``, ``unreachable``,
    ``unauthorized``, ``http``, ``bad_answer``); ``status`` is the HTTP status when there
    was one; ``url`` is what was requested.  ``str()`` is a complete sentence for users.
    """

    def __init__(
        self, message: str, *, url: str, kind: ErrorKind, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.kind: ErrorKind = kind
        self.status = status


def add_agent_arguments(
    parser: argparse.ArgumentParser,
    *,
    http_help: str = "the agent's HTTP address",
    token_help: str = "bearer token",
) -> None:
    """The ``--http URL`` and ``--token TOKEN`` flags of a command that reads the agent
    (resolve them with :func:`base_url` and :func:`agent_token`)."""
    parser.add_argument(
        "--http",
        metavar="URL",
        default=None,
        help=f"{http_help} (env {ENV_HTTP}; default {DEFAULT_HTTP_URL})",
    )
    parser.add_argument(
        "--token", metavar="TOKEN", default=None, help=f"{token_help} (env {ENV_TOKEN})"
    )


def agent_token(value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The agent's bearer token: ``value`` (``--token``), else ``LOCKSCOPE_AGENT_TOKEN``,
    else None."""
    env = os.environ if env is None else env
    return value or env.get(ENV_TOKEN) or None


def address_origin(value: str | None, env: Mapping[str, str] | None = None) -> str:
    """`` (LOCKSCOPE_AGENT_HTTP=...)`` when the address came from the variable (so an error
    about it says where to fix it), else empty."""
    env = os.environ if env is None else env
    if value or not env.get(ENV_HTTP):
        return ""
    return f" (the address is {ENV_HTTP}={env[ENV_HTTP]!r})"


def base_url(value: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The agent's HTTP base URL from ``value``, else ``LOCKSCOPE_AGENT_HTTP``, else the
    default; ``HOST:PORT`` gets ``http://``.  Raises ``ValueError`` naming the setting when
    it is not a URL."""
    env = os.environ if env is None else env
    source = "--http" if value else ENV_HTTP
    text = (value or env.get(ENV_HTTP) or DEFAULT_HTTP_URL).strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ValueError(
            f"{source}={value or env.get(ENV_HTTP)!r} is not an agent HTTP address "
            "(expected a URL such as http://127.0.0.1:9477, or HOST:PORT)"
        )
    return text.rstrip("/")


class AgentClient:
    """Reads the agent's JSON API at ``url`` (``token``: its bearer token, when it has one)."""

    def __init__(self, url: str | None = None, *, token: str | None = None, timeout: float = 5.0):
        self.url = base_url(url, {}) if url else base_url(None)
        self.token = token
        self.timeout = timeout

    def _request(self, path: str, timeout: float | None, *, hint: bool = True) -> tuple[int, bytes]:
        full = self.url + path
        request = urllib.request.Request(full)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise self._http_error(full, exc.code, str(exc.reason), hint) from None
        except (urllib.error.URLError, OSError) as exc:
            kind, reason = describe_os_error(exc)
            raise AgentError(
                f"cannot reach the lockscope agent at {self.url}: {reason}", url=full, kind=kind
            ) from None

    def _http_error(self, full: str, code: int, reason: str, hint_otlp: bool) -> AgentError:
        if code in (401, 403):
            hint = (
                "the agent wants a bearer token (--token or LOCKSCOPE_AGENT_TOKEN)"
                if not self.token
                else "the agent did not accept the token"
            )
            return AgentError(
                f"{full}: HTTP {code} {reason}: {hint}", url=full, kind="unauthorized", status=code
            )
        message = f"{full}: HTTP {code} {reason}"
        if code in (404, 405) and hint_otlp and self.looks_like_otlp():
            message += (
                f": {self.url} is an OTLP receiver (where instrumented apps send), not the "
                "agent's HTTP API; that listens on the agent's --http address "
                f"(default {DEFAULT_HTTP_URL})"
            )
        return AgentError(message, url=full, kind="http", status=code)

    def looks_like_otlp(self) -> bool:
        """Whether ``url`` answers like an OTLP/HTTP receiver (``GET /v1/logs`` is 405: the
        path exists for POST only), or is on the OTLP port."""
        if urllib.parse.urlsplit(self.url).port == DEFAULT_OTLP_PORT:
            return True
        try:
            urllib.request.urlopen(self.url + "/v1/logs", timeout=min(self.timeout, 2.0)).close()
        except urllib.error.HTTPError as exc:
            return exc.code == 405
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return False

    def get(self, path: str, timeout: float | None = None, *, hint: bool = True) -> Any:
        """GET ``path`` (``/api/v1/...``) as JSON; :class:`AgentError` if that fails (with
        ``hint``, a 404 from an OTLP port says so)."""
        _status, body = self._request(path, timeout, hint=hint)
        try:
            return json.loads(body)
        except ValueError as exc:
            full = self.url + path
            raise AgentError(f"{full}: not JSON: {exc}", url=full, kind="bad_answer") from None

    def get_text(self, path: str, timeout: float | None = None) -> str:
        """GET ``path`` as text (e.g. ``/metrics``); :class:`AgentError` if that fails."""
        _status, body = self._request(path, timeout, hint=False)
        return body.decode("utf-8", "replace")

    def findings(self, path: str, key: str, status: str = "all") -> list[dict[str, Any]]:
        """One finding list, e.g. ``findings("/api/v1/deadlocks", "deadlocks")``."""
        body = self.get(f"{path}?status={status}")
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            full = self.url + path
            raise AgentError(
                f"{full}: unexpected answer (no {key!r} list)", url=full, kind="bad_answer"
            )
        return [item for item in items if isinstance(item, dict)]

    def lock_detail(self, name: str) -> dict[str, Any] | None:
        """``/api/v1/locks/{name}``, or None while the agent does not know the lock."""
        try:
            path = "/api/v1/locks/" + urllib.parse.quote(name, safe="")
            detail = self.get(path, hint=False)
        except AgentError as exc:
            if exc.status == 404:
                return None
            raise
        return detail if isinstance(detail, dict) else None

    def processes(self) -> list[dict[str, Any]]:
        """``/api/v1/processes``: the processes the agent hears from."""
        return self.findings("/api/v1/processes", "processes")
