"""The ``lock.acquire`` and ``lock.hold`` spans, following the application's sampler.

The wait span starts when the acquire starts and is made current around the wrapped call,
so command spans of other instrumentations (Redis, ZooKeeper) nest under it.  The hold span
starts when the lock is acquired (only when the wait span was sampled, so an unsampled
acquire costs one span start) and ends when it is released; it is current around the
release and extend calls.  The code location of the caller is looked up only for spans
that record.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from types import FrameType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Tracer, get_current_span

from lockscope import __version__, events
from lockscope.instrumentation.recorder import LockInfo, Recorder

__all__ = ["SpanFactory", "caller_location", "is_library_frame"]

_SKIP_DIRS: tuple[str, ...] = ()
_skip_cache: dict[str, bool] = {}


def _skip_dirs() -> tuple[str, ...]:
    global _SKIP_DIRS
    if not _SKIP_DIRS:
        import threading

        import wrapt

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        dirs = [
            os.path.join(here, "instrumentation"),
            os.path.join(here, "locks"),
            os.path.dirname(os.path.abspath(wrapt.__file__)),
            os.path.dirname(os.path.abspath(threading.__file__)) + os.sep + "asyncio",
            os.path.abspath(threading.__file__),
            os.path.join(os.path.dirname(os.path.abspath(threading.__file__)), "contextlib.py"),
        ]
        for name in ("redis", "kazoo", "opentelemetry"):
            module = sys.modules.get(name)
            path = getattr(module, "__file__", None)
            if path:
                dirs.append(os.path.dirname(os.path.abspath(path)))
        _SKIP_DIRS = tuple(dirs)
    return _SKIP_DIRS


def is_library_frame(filename: str) -> bool:
    """Whether code in ``filename`` belongs to lockscope, wrapt or a lock library."""
    return _skipped(filename)


def _skipped(filename: str) -> bool:
    skip = _skip_cache.get(filename)
    if skip is None:
        path = os.path.abspath(filename)
        skip = path.startswith(_skip_dirs()) or filename.startswith("<")
        if len(_skip_cache) < 10_000:
            _skip_cache[filename] = skip
    return skip


def caller_location(frame: FrameType | None = None) -> tuple[str, int, str] | None:
    """(file, line, function) of the first frame outside lockscope, wrapt and the lock
    libraries; ``None`` if there is none within 30 frames."""
    if frame is None:
        frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 30:
        code = frame.f_code
        if not _skipped(code.co_filename):
            return code.co_filename, frame.f_lineno, code.co_qualname
        frame = frame.f_back
        depth += 1
    return None


_ALWAYS_OFF = "AlwaysOffSampler"
_ALWAYS_ON = "AlwaysOnSampler"
_SITES_PER_LOCK = 32
"""Call sites whose merged span attributes are cached per lock (more are built each time)."""

# Decisions a sampler's description makes certain, per parent kind.
_ASK, _DROP, _RECORD = 0, -1, 1


def _decision(description: str | None) -> int:
    if description == _ALWAYS_OFF:
        return _DROP
    if description == _ALWAYS_ON:
        return _RECORD
    return _ASK


def _certain_decisions(tracer_provider: Any) -> tuple[int, int, int, int, int, int]:
    """From the SDK sampler's public description: the decision it surely makes for a span
    that is a root, a child of an (unsampled local, unsampled remote, sampled local, sampled
    remote) parent; and one for all of them if it is the same (``_ASK``: not certain)."""
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
    sampler = getattr(tracer_provider, "sampler", None)
    try:
        description = str(sampler.get_description()) if sampler is not None else ""
    except Exception:
        return _ASK, _ASK, _ASK, _ASK, _ASK, _ASK
    whole = _decision(description)
    if whole != _ASK:
        return whole, whole, whole, whole, whole, whole
    if not description.startswith("ParentBased{"):
        return _ASK, _ASK, _ASK, _ASK, _ASK, _ASK
    parts = dict(re.findall(r"(\w+):([^,{}]+(?:\{[^}]*\})?)", description[len("ParentBased{") :]))
    return (
        _ASK,
        _decision(parts.get("root")),
        _decision(parts.get("localParentNotSampled")),
        _decision(parts.get("remoteParentNotSampled")),
        _decision(parts.get("localParentSampled")),
        _decision(parts.get("remoteParentSampled")),
    )


def _span_key() -> tuple[Callable[[], Any], object] | None:
    """(the current context's getter, the span's key in it), to read the current span
    straight from the SDK's context variable (~0.1 us instead of ~0.3 us for
    :func:`get_current_span` on every unsampled acquire); ``None`` if not found."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.trace.propagation import _SPAN_KEY

        var = _RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
        if not isinstance(var, ContextVar):
            return None
        return var.get, _SPAN_KEY
    except Exception:
        return None


def _public_context() -> dict[object, Any]:
    return {_SPAN: get_current_span()}


_SPAN: object = object()
_context: Callable[[], Any] = _public_context
_found = _span_key()
if _found is not None:
    _context, _SPAN = _found


class SpanFactory:
    """Starts lock spans on the tracer of the app's (global) TracerProvider."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer: Tracer = trace.get_tracer(
            "lockscope.instrumentation", __version__, tracer_provider
        )
        (
            self.always,
            self._root,
            self._local_off,
            self._remote_off,
            self._local_on,
            self._remote_on,
        ) = _certain_decisions(tracer_provider)
        """The decision the sampler surely makes for every span (-1, 1), else 0."""
        self._may_skip = _DROP in (self.always, self._root, self._local_off, self._remote_off)
        self.drops_root = self.always == _DROP or (self.always == _ASK and self._root == _DROP)
        """The sampler surely drops a span started with no current span (the hot paths
        check that themselves, without calling :meth:`certainty`)."""

    def surely_dropped(self) -> bool:
        """Whether the sampler would certainly drop a span started now (so the SDK need
        not be asked: a non-recording span costs it ~4 us, this check ~0.3 us).  True only
        when the sampler's own description says so: AlwaysOff, or ParentBased whose branch
        for the current parent (none / unsampled local / unsampled remote) is AlwaysOff."""
        return self._may_skip and self.certainty() == _DROP

    def certainty(self) -> int:
        """What the sampler surely decides for a span started now, by its own description:
        -1 drop (no SDK call needed), 1 record (the code location can go in the start
        attributes), 0 not certain (ask through ``start_span``)."""
        if self.always != _ASK:
            return self.always
        span = _context().get(_SPAN)
        if span is None:
            return self._root
        context = span.get_span_context()
        if not context.is_valid:
            return self._root
        if context.trace_flags.sampled:
            return self._remote_on if context.is_remote else self._local_on
        return self._remote_off if context.is_remote else self._local_off

    def start_acquire(self, info: LockInfo, recorder: Recorder, certain: bool = False) -> Span:
        """The wait span (linked to the holder's hold span when the holder is in this
        process); the caller makes it current and ends it.  ``certain``: the sampler surely
        records it, so the code location and the link go in at the start, in one call."""
        if certain:
            return self.tracer.start_span(
                events.SPAN_ACQUIRE,
                kind=SpanKind.INTERNAL,
                attributes=_site_attrs(info, sys._getframe(1)),
                links=_holder_link(info, recorder),
            )
        span = self.tracer.start_span(
            events.SPAN_ACQUIRE, kind=SpanKind.INTERNAL, attributes=info.span_attrs
        )
        if span.is_recording():
            where = caller_location(sys._getframe(1))
            if where is not None:
                span.set_attributes(
                    {
                        events.ATTR_CODE_FILE: where[0],
                        events.ATTR_CODE_LINE: where[1],
                        events.ATTR_CODE_FUNCTION: where[2],
                    }
                )
            links = _holder_link(info, recorder)
            if links:
                span.add_link(links[0].context, _HOLDER_LINK)
        return span

    def start_hold(self, info: LockInfo, token: int | None) -> Span:
        """The hold span, a sibling of the sampled wait span (same parent)."""
        attrs = info.span_attrs
        if token is not None:
            attrs = {**attrs, events.ATTR_LOCK_TOKEN: token}
        return self.tracer.start_span(events.SPAN_HOLD, kind=SpanKind.INTERNAL, attributes=attrs)


_HOLDER_LINK = {"lockscope.link": "holder"}


def _holder_link(info: LockInfo, recorder: Recorder) -> list[Link] | None:
    keyed = recorder._by_key.get(info.key)  # Recorder.holder_of, inlined
    holder = next(iter(keyed), None) if keyed else None
    if holder is not None and holder.span is not None:
        context = holder.span.get_span_context()
        if context.is_valid:
            return [Link(context, _HOLDER_LINK)]
    return None


def _site_attrs(info: LockInfo, frame: FrameType | None) -> dict[str, Any]:
    """The lock's span attributes plus the code location of the first frame outside the
    libraries, merged once per (lock, call site) and cached on the LockInfo."""
    depth = 0
    while frame is not None and depth < 30:
        code = frame.f_code
        skip = _skip_cache.get(code.co_filename)  # _skipped, its cache read inlined
        if not (_skipped(code.co_filename) if skip is None else skip):
            break
        frame = frame.f_back
        depth += 1
    else:
        return info.span_attrs
    site = (code, frame.f_lineno)
    sites = info.span_sites
    if sites is None:
        sites = info.span_sites = {}
    attrs = sites.get(site)
    if attrs is None:
        attrs = {
            **info.span_attrs,
            events.ATTR_CODE_FILE: code.co_filename,
            events.ATTR_CODE_LINE: site[1],
            events.ATTR_CODE_FUNCTION: code.co_qualname,
        }
        if len(sites) < _SITES_PER_LOCK:
            sites[site] = attrs
    return attrs
