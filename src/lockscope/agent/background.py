"""A background loop the agent starts and stops: one named asyncio task at a time.

The durable-state saver, the connection guard's sweeper and the agent's ticker each run a
loop until the agent stops; this is their shared life cycle (start once, stop by
cancelling and waiting), so shutdown ordering stays the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["BackgroundTask", "cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished; its cancellation is not re-raised."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BackgroundTask:
    """A loop run as the asyncio task ``name``, started at most once at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the loop was started and not stopped since."""
        return self.task is not None

    def start(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``loop()`` in a task (inside the event loop); no-op while one runs."""
        if self.task is None:
            self.task = asyncio.create_task(loop(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait for it to finish; no-op when not started."""
        if self.task is not None:
            await cancel_and_wait(self.task)
            self.task = None
