"""A whole agent (:class:`~lockscope.agent.app.AgentRunner`) serving from a background
thread with its own event loop, for callers that are not asyncio programs: the demo's
local agent and the tests' :class:`~lockscope.testing.agent.InProcessAgent`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from lockscope.agent.app import AgentRunner

__all__ = ["AgentStartTimeout", "AgentThread"]

T = TypeVar("T")


class AgentStartTimeout(TimeoutError):
    """The agent's listeners were not up in time."""


class AgentThread:
    """Starts the runner ``make_runner()`` builds (on the agent's loop) and stops it."""

    def __init__(self, make_runner: Callable[[], AgentRunner]) -> None:
        self._make_runner = make_runner
        self.runner: AgentRunner | None = None
        """The running agent (None when stopped)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """True from a successful :meth:`start` until :meth:`stop`."""
        return self._thread is not None

    def start(self, timeout: float) -> AgentRunner:
        """Bind both listeners and return the runner; raises :class:`AgentStartTimeout` when it
        is not up within ``timeout`` seconds, or what the runner raised when it could not
        start (a port in use...)."""
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            runner = self._make_runner()
            self._stop = asyncio.Event()
            try:
                await runner.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            self.runner = runner
            started.set()
            await self._stop.wait()
            await runner.stop()

        def thread_main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=thread_main, name="lockscope-agent", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise AgentStartTimeout(f"the agent did not start within {timeout} s")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        assert self.runner is not None
        return self.runner

    def stop(self, timeout: float) -> None:
        """Stop the agent (in-flight requests finish) and join its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)
        self.runner = None

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn`` on the agent's event loop thread and return its result."""
        loop = self._loop
        if loop is None or self.runner is None:
            raise RuntimeError("the agent is not running")

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)
