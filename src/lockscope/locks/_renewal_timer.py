"""The sync watchdog's clock: one timer thread for every renewal in the process.

Due renewals are handed to a small worker pool, so that one slow or dead server delays
only the renewals of its own locks. After ``fork()`` the child starts with a fresh timer
(no thread yet, no renewals): it owns none of its parent's locks.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["schedule"]

_WORKERS = 4


class _Timer:
    """One daemon thread for every renewal in the process, plus a small worker pool."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def schedule(self, when: float, job: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), job))
            if self._thread is None:
                self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="lockscope-renew")
                self._thread = threading.Thread(
                    target=self._run, name="lockscope-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        assert self._pool is not None
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                _, _, job = heapq.heappop(self._heap)
            try:
                self._pool.submit(job)
            except RuntimeError:  # interpreter shutting down: leases simply run out
                return


_timer = _Timer()


def schedule(when: float, job: Callable[[], None]) -> None:
    """Run ``job`` on a worker thread at monotonic time ``when``."""
    _timer.schedule(when, job)


def _new_timer_after_fork() -> None:
    # A forked child has no timer thread and owns none of its parent's locks.
    global _timer
    _timer = _Timer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_timer_after_fork)
