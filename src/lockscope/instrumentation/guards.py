"""The guard that records a lock built on another lock once, as the outer lock."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["Wrapper", "async_guarded", "guarded", "nested", "reguard", "unguarded"]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
nested: ContextVar[bool] = ContextVar("lockscope_nested", default=False)
"""True while a guarded call runs in this thread or task (the drivers' guarded flavour
reads and sets it too)."""


def guarded(wrapper: Wrapper) -> Wrapper:
    """``wrapper``, but calls made while another guarded call runs in the same thread or
    task pass straight through: a lock built on another lock (kazoo's Semaphore, a
    lockscope lock that delegates) is recorded once, as the outer lock."""

    def outer(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if nested.get():
            return wrapped(*args, **kwargs)
        token = nested.set(True)
        try:
            return wrapper(wrapped, instance, args, kwargs)
        finally:
            nested.reset(token)

    return outer


def async_guarded(wrapper: Wrapper) -> Wrapper:
    """The asyncio flavour of :func:`guarded`."""

    async def outer(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if nested.get():
            return await wrapped(*args, **kwargs)
        token = nested.set(True)
        try:
            return await wrapper(wrapped, instance, args, kwargs)
        finally:
            nested.reset(token)

    return outer


def unguarded() -> Token[bool]:
    """Leave the guard while user code runs inside a guarded call (an election's leader
    function); pass the result to :func:`reguard`."""
    return nested.set(False)


def reguard(token: Token[bool]) -> None:
    """Undo :func:`unguarded`."""
    nested.reset(token)
