"""The demo's agent: one started in this process, or an external one reached over HTTP.

Either way the demo only talks to it as any client would: the workers send OTLP to
:attr:`AgentLink.otlp_url`, and the demo reads findings from the JSON API at
:attr:`AgentLink.http_url`.  So what the terminal shows is exactly what the agent found.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["AgentError", "AgentLink", "ExternalAgent", "LocalAgent"]


class AgentError(Exception):
    """The agent could not be started or reached."""


class AgentLink:
    """Where the agent is and how to read its JSON API."""

    otlp_url: str
    http_url: str
    token: str | None = None
    """The agent's bearer token (``lockscope agent --token``), if it has one."""

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``path`` (``/api/v1/...``) as JSON; :class:`AgentError` if unreachable."""
        url = self.http_url + path
        request = urllib.request.Request(url)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise AgentError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentError(f"cannot reach the lockscope agent at {url}: {reason}") from None
        except ValueError as exc:
            raise AgentError(f"{url}: not JSON: {exc}") from None

    def lock_detail(self, name: str) -> dict[str, Any] | None:
        """``/api/v1/locks/{name}``, or None while the agent does not know the lock."""
        try:
            detail = self.get("/api/v1/locks/" + urllib.parse.quote(name, safe=""))
        except AgentError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        return detail if isinstance(detail, dict) else None

    def findings(self, path: str, key: str, status: str = "all") -> list[dict[str, Any]]:
        """One finding list, e.g. ``findings("/api/v1/deadlocks", "deadlocks")``."""
        body = self.get(f"{path}?status={status}")
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise AgentError(f"{self.http_url}{path}: unexpected answer (no {key!r} list)")
        return [item for item in items if isinstance(item, dict)]

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
                        f"the agent is not ready after {timeout:.0f} s: {exc}"
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
            raise AgentError(
                f"the agent needs the 'agent' extra ({exc.name} is missing): "
                "pip install 'lockscope[agent]'"
            ) from None
        self._runner = AgentRunner(otlp=otlp, http=http)
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> LocalAgent:
        """Bind both listeners; raises :class:`AgentError` (e.g. a port in use)."""
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                await self._runner.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            await self._stop.wait()
            await self._runner.stop()

        def thread_main() -> None:
            try:
                self._loop.run_until_complete(main())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=thread_main, name="lockscope-agent", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise AgentError("the in-process agent did not start")
        if failure:
            self._thread.join()
            self._thread = None
            exc = failure[0]
            raise AgentError(f"cannot start the agent: {exc}") from exc
        self.otlp_url = self._runner.otlp_url
        self.http_url = self._runner.http_url
        return self

    def close(self) -> None:
        """Stop the agent (in-flight requests finish) and join its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(15.0)


def _base(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")
