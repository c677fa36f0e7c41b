"""A stand-in for a lock object in the registry that does not keep the lock alive.

The registry keeps each hold's target; a library whose lock objects act when they are
garbage collected (filelock's ``__del__`` releases an abandoned lock, python-redis-lock's
renewal thread stops once its lock is gone) must see them collected exactly as without
lockscope.  Targets therefore register a :class:`HoldRef` (weakly referring to the lock,
kept in the lock's ``__dict__``) in place of the lock.  When a lock is collected while the
registry still has holds of it (nothing released it), those holds end as ``error`` (the
lease, if any, runs out).  That happens on the next lock call of any target using this
module, never inside the garbage collector: the collector may run while the registry's
own lock is taken.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from lockscope.instrumentation import operations, runtime

__all__ = ["HoldRef", "deref", "drain", "ref_of", "via_ref"]

_ATTR = "_lockscope_ref"
_collected: deque[HoldRef] = deque()


class HoldRef:
    """Stands for one lock object; ``obj()`` is the lock, or ``None`` once collected."""

    __slots__ = ("__dict__", "__weakref__", "obj")

    def __init__(self, instance: Any) -> None:
        self.obj = weakref.ref(instance, self._gone)

    def _gone(self, _ref: Any) -> None:
        _collected.append(self)  # one GIL-atomic step: safe inside the collector

    def __repr__(self) -> str:
        return f"<HoldRef {self.obj()!r}>"


def ref_of(instance: Any) -> Any:
    """``instance``'s HoldRef (made once); ``instance`` itself if it cannot have one."""
    if _collected:
        drain()
    try:
        namespace = instance.__dict__
    except AttributeError:
        return instance
    ref = namespace.get(_ATTR)
    if ref is None:
        try:
            ref = namespace[_ATTR] = HoldRef(instance)
        except TypeError:  # not weak-referenceable
            return instance
    return ref


def deref(value: Any) -> Any:
    """The lock a HoldRef stands for (``value`` itself if it is not one)."""
    return value.obj() if type(value) is HoldRef else value


def drain() -> None:
    """End the holds of collected locks (called outside the registry's lock)."""
    shim = runtime.current
    while _collected:
        ref = _collected.popleft()
        if shim is None:
            continue
        try:
            for hold in shim.recorder.holds_matching(_of(ref)):
                shim.recorder.end_hold(hold, "error")
        except Exception:
            operations.failed()


def _of(ref: HoldRef) -> Callable[[Any], bool]:
    def match(hold: Any) -> bool:
        return hold.target is ref

    return match


def via_ref(wrapper: operations.Wrapper) -> operations.Wrapper:
    """``wrapper`` with the lock's HoldRef as its instance (the bound call is unchanged)."""

    def outer(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            ref = ref_of(instance)
        except Exception:
            operations.failed()
            ref = instance
        return wrapper(wrapped, ref, args, kwargs)

    return outer
