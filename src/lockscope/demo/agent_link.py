"""The demo's agent: one started in this process, or an external one reached over HTTP.

Either way the demo only talks to it as any client would: the workers send OTLP to
:attr:`AgentLink.otlp_url`, and the demo reads findings from the JSON API at
:attr:`AgentLink.http_url`.  So what the terminal shows is exactly what the agent found.
"""

from __future__ import annotations

import time
from typing import Any

from lockscope.agent.app_thread import AgentStartTimeout, AgentThread
from lockscope.client import AgentClient, AgentError

__all__ = ["AgentError", "AgentLink", "ExternalAgent", "LocalAgent"]


class AgentLink:
    """Where the agent is and how to read its JSON API (through
    :class:`~lockscope.client.AgentClient`; errors are :class:`~lockscope.client.AgentError`)."""

    otlp_url: str
    http_url: str
    token: str | None = None
    """The agent's bearer token (``lockscope agent --token``), if it has one."""

    def client(self) -> AgentClient:
        """A client of this agent's JSON API."""
        return AgentClient(self.http_url, token=self.token)

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``path`` (``/api/v1/...``) as JSON; :class:`AgentError` if unreachable."""
        return self.client().get(path, timeout)

    def lock_detail(self, name: str) -> dict[str, Any] | None:
        """``/api/v1/locks/{name}``, or None while the agent does not know the lock."""
        return self.client().lock_detail(name)

    def findings(self, path: str, key: str, status: str = "all") -> list[dict[str, Any]]:
        """One finding list, e.g. ``findings("/api/v1/deadlocks", "deadlocks")``."""
        return self.client().findings(path, key, status)

    def close(self) -> None:
        """Stop the agent if this process started it."""


class ExternalAgent(AgentLink):
    """An agent that runs elsewhere (``lockscope agent``, the compose stack)."""

    def __init__(self, otlp_url: str, http_url: str, token: str | None = None) -> None:
        self.otlp_url = _base(otlp_url)
        self.http_url = _base(http_url)
        self.token = token

    def wait_ready(self, timeout: float) -> None:
        """Poll ``/readyz`` until it answers 200 (compose starts services in any order)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/readyz", timeout=2.0)
                return
            except AgentError as exc:
                if time.monotonic() >= deadline:
                    raise AgentError(
                        f"the agent is not ready after {timeout:.0f} s: {exc}",
                        url=exc.url,
                        kind=exc.kind,
                        status=exc.status,
                    ) from None
            time.sleep(0.5)


class LocalAgent(AgentLink):
    """A full agent (:class:`~lockscope.agent.app.AgentRunner`) on a background thread.

    ``otlp``/``http`` are ``(host, port)``; port 0 picks a free port.
    """

    def __init__(self, otlp: tuple[str, int], http: tuple[str, int]) -> None:
        try:
            from lockscope.agent.app import AgentRunner
        except ImportError as exc:
            raise _start_error(
                f"the agent needs the 'agent' extra ({exc.name} is missing): "
                "pip install 'lockscope[agent]'"
            ) from None
        self._thread = AgentThread(lambda: AgentRunner(otlp=otlp, http=http))

    def start(self, timeout: float = 10.0) -> LocalAgent:
        """Bind both listeners; raises :class:`AgentError` (e.g. a port in use)."""
        try:
            runner = self._thread.start(timeout)
        except AgentStartTimeout:
            raise _start_error("the in-process agent did not start") from None
        except Exception as exc:
            raise _start_error(f"cannot start the agent: {exc}") from exc
        self.otlp_url = runner.otlp_url
        self.http_url = runner.http_url
        return self

    def close(self) -> None:
        """Stop the agent (in-flight requests finish) and join its thread."""
        self._thread.stop(15.0)


def _start_error(message: str) -> AgentError:
    return AgentError(message, url="", kind="unreachable")


def _base(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")
