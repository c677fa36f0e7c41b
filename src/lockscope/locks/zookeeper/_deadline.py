"""Deadline and abandon threads: a kazoo acquire that returns by its deadline, whatever
the server does.

kazoo restarts its timeout whenever the predecessor changes, and its calls wait for an
unreachable server indefinitely (its cleanup too). With a deadline the recipe runs on a
thread of its own: at the deadline it is cancelled, and if it is stuck it is abandoned to
finish (and clean up) in the background.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import KazooException

from lockscope.locks._threaded import CancelHandle, start_in_context

CANCEL_GRACE = 1.0
"""Seconds a cancelled kazoo acquire gets to delete its node before it is abandoned."""


class Abandoned(Exception):
    """The recipe did not return in time; it finishes and cleans up in the background."""


class Deadlines:
    """Runs one kazoo acquire under a deadline (a base of the ZooKeeper locks)."""

    _mutex: threading.Lock
    _abandoned: int

    _discard: Callable[[Any], None]  # provided by another base of the lock

    _update_listener: Callable[[], None]  # provided by another base of the lock

    def _recipe_acquire(self, recipe: Any, blocking: bool, timeout: float | None) -> bool:
        return bool(recipe.acquire(blocking=blocking, timeout=timeout))

    def _run_recipe(
        self,
        recipe: Any,
        blocking: bool,
        timeout: float | None,
        deadline: float | None,
        handle: CancelHandle,
    ) -> bool:
        """Run kazoo's acquire, returning by ``deadline`` (plus a grace): see the module."""
        if deadline is None:
            try:
                return self._recipe_acquire(recipe, blocking, timeout)
            finally:
                handle.set_hook(None)
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(self._recipe_acquire(recipe, blocking, timeout))
            except BaseException as exc:
                future.set_exception(exc)

        start_in_context(run, "lockscope-zookeeper-acquire")
        try:
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                handle.cancel()
            try:
                return future.result(timeout=CANCEL_GRACE)
            except concurrent.futures.TimeoutError:
                pass
        except BaseException:
            if future.done():
                raise
            handle.cancel()
            self._abandon(recipe, future)
            raise
        self._abandon(recipe, future)
        raise Abandoned

    def _abandon(self, recipe: Any, future: concurrent.futures.Future[bool]) -> None:
        with self._mutex:
            self._abandoned += 1

        def finish(done: concurrent.futures.Future[bool]) -> None:
            try:
                if done.exception() is None and done.result():
                    with contextlib.suppress(KazooException):
                        recipe.release()
            finally:
                self._discard(recipe)
                with self._mutex:
                    self._abandoned -= 1
                self._update_listener()

        future.add_done_callback(finish)
