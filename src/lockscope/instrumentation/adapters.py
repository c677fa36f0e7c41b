"""What a target tells the shim about its library, and the helpers every wrapper shares.

A target module describes its library with an :class:`Adapter` (how to read a lock's
identity, token and lease; which exceptions mean "lost"); :mod:`.operations` turns it into
wrappers.  Also here: the per-object LockInfo cache (:func:`lock_info`, :func:`skip`),
the suppression check (:data:`fast_enabled`), the executor hand-over (:data:`on_behalf`)
and :func:`failed`, the one way the shim swallows its own errors.  Everything is
re-exported by :mod:`.operations`, the module targets import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from lockscope.instrumentation import runtime
from lockscope.instrumentation.recorder import Hold, LockInfo, Wait

__all__ = [
    "SKIP",
    "Adapter",
    "cached_info",
    "exc_outcome",
    "failed",
    "fast_enabled",
    "forget",
    "is_instrumentation_enabled",
    "lock_info",
    "on_behalf",
    "skip",
    "suppression_keys",
    "sync_task",
]

_log = logging.getLogger("lockscope.instrumentation")
INFO_ATTR = "_lockscope_info"
SKIP = object()
"""Cached in place of a LockInfo on lock objects the shim must not record (an election's
inner lock, for instance)."""
_get_ident = threading.get_ident

on_behalf: dict[int, Any] = {}
"""thread ident -> the asyncio task a worker thread runs a blocking call for (filled by
:mod:`.executor` around ``run_in_executor``/``to_thread`` calls): a lock call made there
is the task's, not the worker thread's."""


def sync_task() -> Any:
    """The asyncio task the current (worker) thread acts for, else ``None``."""
    return on_behalf.get(_get_ident()) if on_behalf else None


class Adapter:
    """How the shim reads one library's lock objects; targets override what differs."""

    def shared(self, instance: Any) -> bool:
        """Whether another thread or task may release the lock (the hold is the object's)."""
        return True

    def info(self, instance: Any) -> LockInfo | None:
        """The lock's identity and kind; ``None`` to leave this object alone."""
        raise NotImplementedError

    def blocking(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this acquire call may wait (a miss is ``timeout`` rather than ``busy``)."""
        value = kwargs["blocking"] if "blocking" in kwargs else (args[0] if args else True)
        return bool(value)

    def outcome(self, result: Any, blocking: bool) -> str:
        """The outcome of an acquire that returned ``result``."""
        if result:
            return "acquired"
        return "timeout" if blocking else "busy"

    def exc_outcome(self, exc: BaseException) -> str:
        """The outcome of an acquire that raised ``exc``."""
        if isinstance(exc, asyncio.CancelledError):
            return "cancelled"
        return "error"

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        """(fencing token, owner id, lease seconds) right after a successful acquire."""
        return None, None, None

    def is_lost(self, exc: BaseException) -> bool:
        """Whether a release/extend error means the lock had been lost."""
        return False

    def holds_after_release_error(self, instance: Any) -> bool:
        """Whether the object still believes it holds the lock after a failed release."""
        return False

    def extension(
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[float | None, bool]:
        """(seconds, replace) of an extend call: the lease now lasts ``seconds`` from now
        (``replace``) or ``seconds`` longer."""
        seconds = kwargs.get("seconds", args[0] if args else None)
        return (float(seconds) if isinstance(seconds, int | float) else None), True

    def probe_for(self, wait: Wait) -> Callable[[Wait], bool | None] | None:
        """For a long wait: a function the reporter's probe thread calls to fill
        ``wait.holder_token``/``holder_owner``/``ticket`` where the library can tell
        cheaply (``None``: nothing to learn).  Its errors are ignored.  It returns
        ``False`` when it could not learn everything yet (the library has not queued the
        waiter yet): it is then called again before each heartbeat while the wait lasts."""
        return None

    by_key = True
    """Whether a release on an object that holds nothing may end another object's hold of
    the same lock (for lock objects that delegate to another); targets whose objects each
    hold for themselves set it false."""

    watches_holds = False
    """Whether :meth:`on_hold` does anything (saves a call per acquire when not)."""

    def on_hold(self, instance: Any, hold: Hold) -> None:
        """Called after a hold is registered, if :attr:`watches_holds` (kazoo watches its
        session here)."""


def suppression_keys() -> tuple[Callable[[], Any], object, object] | None:
    """(the current context's getter, the two suppression keys) that
    :func:`is_instrumentation_enabled` reads, for paths that inline the check (the
    in-process locks); ``None`` if this OpenTelemetry version keeps them elsewhere."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT, _SUPPRESS_INSTRUMENTATION_KEY
        from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN

        var = _RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
        if not isinstance(var, ContextVar):
            return None
        return var.get, _SUPPRESS_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
    except Exception:
        return None


def _fast_enabled_check() -> Callable[[], bool]:
    """:func:`is_instrumentation_enabled`, with the same two keys read straight from the
    current context (saves ~150 ns per call); falls back to the public call."""
    found = suppression_keys()
    if found is None:
        return is_instrumentation_enabled
    get, key, plain = found

    def enabled() -> bool:
        current = get()
        return not (current.get(key) or current.get(plain))

    return enabled


fast_enabled = _fast_enabled_check()


def _public_context() -> dict[object, object]:
    return {} if is_instrumentation_enabled() else {SUPPRESSED: True}


SUPPRESSED: object = object()
SUPPRESSED_PLAIN: object = object()
context_get: Callable[[], Any] = _public_context
"""For hot paths that inline :data:`fast_enabled`: instrumentation is enabled when
``not (c.get(SUPPRESSED) or c.get(SUPPRESSED_PLAIN))`` for ``c = context_get()``."""
_found = suppression_keys()
if _found is not None:
    context_get, SUPPRESSED, SUPPRESSED_PLAIN = _found


def lock_info(adapter: Adapter, instance: Any) -> LockInfo | None:
    """The adapter's LockInfo for ``instance``, cached on the object where possible."""
    try:
        cached = instance.__dict__.get(INFO_ATTR)
    except AttributeError:
        cached = None
    if cached is not None:
        return None if cached is SKIP else cached
    info = adapter.info(instance)
    # Not contextlib.suppress (four calls): a slotted lock (pottery's) comes here each time.
    try:  # noqa: SIM105
        instance.__dict__[INFO_ATTR] = SKIP if info is None else info
    except AttributeError:
        pass
    return info


def cached_info(instance: Any) -> Any:
    """The LockInfo (or :data:`SKIP`) cached on ``instance``, else ``None``."""
    try:
        return instance.__dict__.get(INFO_ATTR)
    except AttributeError:
        return None


def skip(instance: Any) -> None:
    """Never record calls on ``instance`` (its owner records them itself)."""
    with contextlib.suppress(AttributeError):
        instance.__dict__[INFO_ATTR] = SKIP


def forget(instance: Any) -> None:
    """Drop the cached LockInfo (after uninstrumenting)."""
    with contextlib.suppress(AttributeError):
        instance.__dict__.pop(INFO_ATTR, None)


def failed() -> None:
    """Count and log (debug) an internal error the shim swallowed: it never reaches the app."""
    shim = runtime.current
    if shim is not None:
        shim.recorder.errors += 1
    _log.debug("lockscope: internal error (ignored)", exc_info=True)


def exc_outcome(adapter: Adapter, exc: BaseException) -> str:
    """The adapter's outcome for an acquire that raised ``exc`` (``error`` if it fails)."""
    try:
        return adapter.exc_outcome(exc)
    except Exception:
        return "error"
