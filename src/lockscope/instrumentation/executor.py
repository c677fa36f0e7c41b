"""Target: asyncio's executors, so a blocking lock call run for a task is that task's wait.

Supported: ``loop.run_in_executor`` of the standard event loops (``asyncio.BaseEventLoop``,
Python 3.11 to 3.14) with the default executor or any ``ThreadPoolExecutor``,
``asyncio.to_thread`` (which goes through ``run_in_executor``), and
``anyio.to_thread.run_sync`` (anyio 4) on its asyncio backend, and uvloop's loop
(``uvloop.Loop``: its ``run_in_executor`` is compiled, but the class is a Python subclass
whose attribute the shim wraps).  Not covered: process pools (the call runs in another
process).

How: the function handed to the worker thread is wrapped so that, while it runs, the
worker thread's ident maps to the submitting task in :data:`operations.on_behalf`.  The
shim's sync wrappers look the current thread up there (one dict truthiness test when no
executor call is in flight), so a kazoo or redis-py lock taken in the worker is recorded
with the task as its actor: its holds and waits join the task's own (a ``redis.asyncio``
lock it holds), and the cycle "task holds A, waits for B through an executor; another
holds B, waits for A" closes in the agent.  The mapping is per call, not per context
variable: ``run_in_executor`` does not copy the context and ``to_thread`` runs the call in
a copy the task's later changes never reach, while the worker thread is the one fact
both share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import operations
from lockscope.instrumentation.patching import Patcher

__all__ = ["SUPPORTED", "instrument", "on_behalf_of"]

SUPPORTED = {"anyio": ">=4.0,<5", "uvloop": ">=0.17,<1"}
"""Instrumented library versions besides the standard library's asyncio."""

_get_ident = threading.get_ident
_on_behalf = operations.on_behalf
# A forked child has none of its parent's worker threads (their idents may be reused).
os.register_at_fork(after_in_child=_on_behalf.clear)


class _OnBehalf:
    """``func`` run in a worker thread as the asyncio ``task``'s act."""

    __slots__ = ("func", "task")

    def __init__(self, task: asyncio.Task[Any], func: Callable[..., Any]) -> None:
        self.task = task
        self.func = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ident = _get_ident()
        previous = _on_behalf.get(ident)
        _on_behalf[ident] = self.task
        try:
            return self.func(*args, **kwargs)
        finally:
            if previous is None:
                _on_behalf.pop(ident, None)
            else:
                _on_behalf[ident] = previous


def on_behalf_of(task: asyncio.Task[Any], func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, such that lock calls it makes in any thread are recorded as ``task``'s
    (for executors lockscope does not wrap itself)."""
    return _OnBehalf(task, func)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None


def _run_in_executor(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        if len(args) >= 2 and not kwargs and callable(args[1]):
            executor = args[0]
            # A closure cannot be pickled to a process pool: threads only.
            if executor is None or isinstance(executor, concurrent.futures.ThreadPoolExecutor):
                task = _current_task()
                if task is not None:
                    args = (executor, _OnBehalf(task, args[1]), *args[2:])
    except Exception:
        operations.failed()
    return wrapped(*args, **kwargs)


async def _anyio_run_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        if args and callable(args[0]):
            task = _current_task()
            if task is not None:
                args = (_OnBehalf(task, args[0]), *args[1:])
    except Exception:
        operations.failed()
    return await wrapped(*args, **kwargs)


def instrument(patcher: Patcher) -> None:
    """Carry the task's identity into ``run_in_executor``, ``to_thread`` and anyio workers."""
    patcher.wrap(asyncio.BaseEventLoop, "run_in_executor", _run_in_executor)

    def anyio_to_thread(module: Any) -> None:
        patcher.wrap(module, "run_sync", _anyio_run_sync)

    def uvloop(module: Any) -> None:
        patcher.wrap(module.Loop, "run_in_executor", _run_in_executor)

    patcher.when_imported("anyio.to_thread", anyio_to_thread)
    patcher.when_imported("uvloop", uvloop)
