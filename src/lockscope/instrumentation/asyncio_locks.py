"""Target (opt-in): ``asyncio.Lock``.

``asyncio.Lock`` is a Python class: its ``__init__``, ``acquire`` and ``release`` are
wrapped.  As for threading locks, only locks created by application code are recorded
(those created inside asyncio, site-packages or lockscope pass through with one dict
look-up), each named after its creation site, with the process as namespace; the actor
is the asyncio task.  No spans.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any

from lockscope.instrumentation import operations, runtime
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import LockInfo
from lockscope.instrumentation.threading_locks import _site, is_app_code

__all__ = ["instrument"]

_SITE_ATTR = "_lockscope_site"
_counter = itertools.count(1)


def _info(shim: runtime.Shim, instance: Any) -> LockInfo | None:
    site = instance.__dict__.get(_SITE_ATTR)
    if site is None:
        return None
    cached = instance.__dict__.get("_lockscope_info")
    if cached is not None and cached[0] == shim.generation:
        return cached[1]  # type: ignore[no-any-return]
    info = LockInfo("asyncio", shim.instance_id, site, site.rpartition("#")[0])
    instance.__dict__["_lockscope_info"] = (shim.generation, info)
    return info


def _init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    wrapped(*args, **kwargs)
    try:
        frame = sys._getframe(1)
        if is_app_code(frame.f_code.co_filename):
            instance.__dict__[_SITE_ATTR] = f"{_site(frame)}#{next(_counter)}"
    except Exception:
        operations.failed()


async def _acquire(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    shim = runtime.current
    if shim is None or not operations.fast_enabled():
        return await wrapped(*args, **kwargs)
    try:
        info = _info(shim, instance)
        task = asyncio.current_task()
        wait = None
        if info is not None and task is not None:
            wait = shim.recorder.begin_wait(info, id(task), task, instance)
    except Exception:
        operations.failed()
        wait = None
    if wait is None:
        return await wrapped(*args, **kwargs)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
        try:
            shim.recorder.end_wait(wait, outcome)
        except Exception:
            operations.failed()
        raise
    try:
        shim.recorder.end_wait(wait, "acquired" if result else "busy")
    except Exception:
        operations.failed()
    return result


def _release(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    shim = runtime.current
    if shim is None or _SITE_ATTR not in instance.__dict__:
        return wrapped(*args, **kwargs)
    result = wrapped(*args, **kwargs)
    try:
        hold = shim.recorder.find_hold(instance, 0)
        if hold is not None:
            shim.recorder.end_hold(hold)
    except Exception:
        operations.failed()
    return result


def instrument(patcher: Patcher) -> None:
    """Record ``asyncio.Lock`` objects that application code creates."""
    cls = asyncio.locks.Lock
    patcher.wrap(cls, "__init__", _init)
    patcher.wrap(cls, "acquire", _acquire)
    patcher.wrap(cls, "release", _release)
