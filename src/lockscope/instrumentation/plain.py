"""Plain-function drivers of the acquire and release algorithm, for the hottest targets.

:mod:`.operations`' wrappers are wrapt wrappers: every ``lock.acquire`` look-up binds a
``BoundFunctionWrapper`` and every call goes through wrapt's dispatch before the shim's
code runs.  For redis-py's ``Lock`` (an application's most frequent distributed lock call)
the methods are instead replaced on the class by plain functions (:meth:`Patcher.replace
<lockscope.instrumentation.patching.Patcher.replace>`) that call the original directly,
with the same algorithm and the same driver body (:mod:`.drivers`) as the wrappers, in
fewer Python calls.  ``functools.wraps`` keeps the
original's name, docstring, signature (through ``__wrapped__``) and, for asyncio, its
being a coroutine function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation.adapters import Adapter
from lockscope.instrumentation.drivers import acquire_driver, held_driver

__all__ = [
    "plain_acquire",
    "plain_async_acquire",
    "plain_async_release",
    "plain_release",
]

Maker = Callable[[Callable[..., Any]], Callable[..., Any]]


def _maker(
    adapter: Adapter, release: bool, asyncio_: bool, guarded: bool, refer: bool = False
) -> Maker:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        flavour = {"plain": True, "asyncio_": asyncio_, "guarded": guarded, "refer": refer}
        if release:
            driver = held_driver(adapter, original, None, **flavour)
        else:
            driver = acquire_driver(adapter, original, **flavour)
        return functools.wraps(original)(driver)

    return make


def plain_acquire(adapter: Adapter, *, guarded: bool = False, refer: bool = False) -> Maker:
    """For :meth:`Patcher.replace`: a blocking ``acquire``-like method, recorded
    (``guarded``: recorded once as the outer lock, as :func:`.guards.guarded` does;
    ``refer``: the records name the lock's weak :class:`._holdref.HoldRef`, as
    :func:`._holdref.via_ref` does)."""
    return _maker(adapter, False, False, guarded, refer)


def plain_async_acquire(adapter: Adapter, *, guarded: bool = False) -> Maker:
    """The asyncio flavour of :func:`plain_acquire` (the actor is the current task)."""
    return _maker(adapter, False, True, guarded)


def plain_release(adapter: Adapter, *, guarded: bool = False, refer: bool = False) -> Maker:
    """For :meth:`Patcher.replace`: ``release`` (ends the hold; ``lost`` on a lost-lock
    error), the hold's span current around the call as with the wrapt wrapper;
    ``guarded`` and ``refer`` as for :func:`plain_acquire`."""
    return _maker(adapter, True, False, guarded, refer)


def plain_async_release(adapter: Adapter, *, guarded: bool = False) -> Maker:
    """The asyncio flavour of :func:`plain_release`."""
    return _maker(adapter, True, True, guarded)
