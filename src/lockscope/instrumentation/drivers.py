"""The drivers of the acquire and held-call algorithms: one source text, eight flavours.

A driver is the function that stands in for a library's method: it begins the record
(:func:`.acquire.enter`), calls the original and passes
its result or exception through unchanged (principle 4), then records the outcome.  There
are eight flavours of each: sync or asyncio (``await`` in front of the call, the current
task as the actor), wrapt wrapper or plain function (``wrapped(*args, **kwargs)`` or
``original(self, *args, **kwargs)``, see :mod:`.plain`), and guarded or not (the nested-lock
guard of :mod:`.guards` built in, for a lock built on another lock).  Python cannot share one body
between a function and a coroutine function without an extra call per lock operation on
the hot path, so, as :mod:`dataclasses` does for the methods it writes, the body is
written once below and compiled once per flavour at import; each flavour is a factory
(``make(adapter, original_or_after)``) whose result closes over its arguments as a
hand-written closure would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from lockscope.instrumentation import runtime
from lockscope.instrumentation._holdref import ref_of
from lockscope.instrumentation.acquire import enter
from lockscope.instrumentation.adapters import Adapter, failed
from lockscope.instrumentation.guards import nested
from lockscope.instrumentation.held import After, held_call_done

__all__ = ["acquire_driver", "held_driver"]

_ACQUIRE = """
def make(adapter, original):
    {async_}def acquire({params}):
        if nested.get():  # guard
            return {await_}{call}  # guard
        guard = nested.set(True)  # guard
        try:  # guard
            shim = runtime.current
            ref = ref_of({this})  # ref
            op = None if shim is None else enter(shim, adapter, {obj}, args, kwargs, {task}, False)
            if op is None:
                return {await_}{call}
            try:
                result = {await_}{call}
            except BaseException as exc:
                op.raised(exc)
                raise
            if op.context is not None:  # the wait span's context, left first
                detach(op.context)
                op.context = None
            if result is not True:
                op.done(op.outcome_of(result))
                return result
            try:  # op.done("acquired"), inlined: the common case
                token, owner, ttl = adapter.hold_fields({obj})
                hold = shim.recorder.end_wait(op, "acquired", token=token, owner=owner, ttl=ttl)
                if op.span is not None:
                    op.end_span(hold, "acquired", token, None)
                if hold is not None and adapter.watches_holds:
                    adapter.on_hold({obj}, hold)
            except Exception:
                failed()
            return result
        finally:  # guard
            nested.reset(guard)  # guard

    return acquire
"""

_HELD = """
def make(adapter, original, after):
    {async_}def held_call({params}):
        if nested.get():  # guard
            return {await_}{call}  # guard
        guard = nested.set(True)  # guard
        try:  # guard
            shim = runtime.current
            ref = ref_of({this})  # ref
            hold = None if shim is None else enter(shim, adapter, {obj}, None, None, {task}, True)
            if hold is None or shim is None:
                return {await_}{call}
            token = attach(set_span(hold.span)) if hold.span is not None else None
            try:
                result = {await_}{call}
            except BaseException as exc:
                held_call_done(adapter, after, {obj}, hold, args, kwargs, exc, token)
                raise
            if after is None and token is None and hold.span is None:
                try:  # the common case, a release without a span: the hold ends in one call
                    shim.recorder.end_hold(hold, "released")
                except Exception:
                    failed()
            else:
                held_call_done(adapter, after, {obj}, hold, args, kwargs, None, token)
            return result
        finally:  # guard
            nested.reset(guard)  # guard

    return held_call
"""

_NAMESPACE: dict[str, Any] = {
    "runtime": runtime,
    "enter": enter,
    "failed": failed,
    "held_call_done": held_call_done,
    "attach": otel_context.attach,
    "detach": otel_context.detach,
    "set_span": trace.set_span_in_context,
    "current_task": asyncio.current_task,
    "nested": nested,
    "ref_of": ref_of,
}
# (plain function?) -> the parameters, the instance's name and the original call.
_SHAPES = {
    True: ("self, *args, **kwargs", "self", "original(self, *args, **kwargs)"),
    False: ("wrapped, instance, args, kwargs", "instance", "wrapped(*args, **kwargs)"),
}


def _first_line(variable: str) -> int:
    """How many lines of this file come before ``variable``'s template, so that compiled
    code keeps the template's line numbers (tracebacks and profiles point at it here);
    0 if the source cannot be read."""
    try:
        with open(__file__, encoding="utf-8") as file:
            text = file.read()
        return text.count("\n", 0, text.index(f'\n{variable} = """') + 1)
    except (OSError, ValueError):
        return 0


def _flavour(source: str, guarded: bool, refer: bool) -> str:
    """The template as one flavour: ``guarded`` keeps the lines marked ``# guard`` (the
    body runs inside :data:`.guards.nested`'s guard, as :func:`.guards.guarded` does); else
    they become blank lines and the body moves out of their ``try``.  ``refer`` keeps the
    line marked ``# ref`` (the records name the lock's :class:`._holdref.HoldRef`, which
    refers to it weakly, as :func:`._holdref.via_ref` does); else it becomes a blank line.
    Every line stays where it is, so the compiled code keeps this file's line numbers."""
    if not refer:
        source = "\n".join("" if line.endswith("# ref") else line for line in source.split("\n"))
    if guarded:
        return source
    lines = []
    for line in source.split("\n"):
        if line.endswith("# guard"):
            line = ""
        elif line.startswith(" " * 12):
            line = line[4:]
        lines.append(line)
    return "\n".join(lines)


def _compile(
    source: str, variable: str, plain: bool, asyncio_: bool, guarded: bool, refer: bool = False
) -> Callable[..., Any]:
    params, this, call = _SHAPES[plain]
    text = "\n" * _first_line(variable) + _flavour(source, guarded, refer).format(
        async_="async " if asyncio_ else "",
        await_="await " if asyncio_ else "",
        task="current_task()" if asyncio_ else "None",
        params=params,
        this=this,
        obj="ref" if refer else this,
        call=call,
    )
    namespace: dict[str, Any] = {}
    # Compiled as this file: the frames are lockscope's to every frame walk that skips
    # the shim's own code (the span's code location, portalocker's warning level).
    exec(compile(text, __file__, "exec"), dict(_NAMESPACE), namespace)
    maker: Callable[..., Any] = namespace["make"]
    return maker


_FLAVOURS = [(p, a, g) for p in (True, False) for a in (True, False) for g in (True, False)]
_ACQUIRE_MAKERS = {flavour: _compile(_ACQUIRE, "_ACQUIRE", *flavour) for flavour in _FLAVOURS}
_HELD_MAKERS = {flavour: _compile(_HELD, "_HELD", *flavour) for flavour in _FLAVOURS}
# The ``refer`` flavours (python-redis-lock's): compiled on first use.
_REF_MAKERS: dict[tuple[str, bool, bool, bool], Callable[..., Any]] = {}


def _ref_maker(variable: str, plain: bool, asyncio_: bool, guarded: bool) -> Callable[..., Any]:
    key = (variable, plain, asyncio_, guarded)
    maker = _REF_MAKERS.get(key)
    if maker is None:
        source = _ACQUIRE if variable == "_ACQUIRE" else _HELD
        maker = _REF_MAKERS[key] = _compile(source, variable, plain, asyncio_, guarded, True)
    return maker


def acquire_driver(
    adapter: Adapter,
    original: Callable[..., Any] | None,
    *,
    plain: bool,
    asyncio_: bool,
    guarded: bool = False,
    refer: bool = False,
) -> Callable[..., Any]:
    """The acquire driver for ``adapter``: a plain function calling ``original`` (the
    class's method, ``plain``) or a wrapt wrapper (``original`` ``None``); ``guarded``:
    with :func:`.guards.guarded`'s guard built in (one call, not two); ``refer``: the
    records name the lock's :class:`._holdref.HoldRef` (as :func:`._holdref.via_ref`)."""
    if refer:
        maker = _ref_maker("_ACQUIRE", plain, asyncio_, guarded)
    else:
        maker = _ACQUIRE_MAKERS[plain, asyncio_, guarded]
    driver: Callable[..., Any] = maker(adapter, original)
    return driver


def held_driver(
    adapter: Adapter,
    original: Callable[..., Any] | None,
    after: After | None,
    *,
    plain: bool,
    asyncio_: bool,
    guarded: bool = False,
    refer: bool = False,
) -> Callable[..., Any]:
    """The driver of a call on a held lock (``after`` ``None``: a release, see
    :func:`.held.held_call_done`), as :func:`acquire_driver`."""
    if refer:
        maker = _ref_maker("_HELD", plain, asyncio_, guarded)
    else:
        maker = _HELD_MAKERS[plain, asyncio_, guarded]
    driver: Callable[..., Any] = maker(adapter, original, after)
    return driver
