"""Decoded events: what the OTLP receiver hands to the agent's state, whatever the wire format.

The receiver turns each OTLP log record that carries a lockscope event name (and each
``lock.acquire``/``lock.hold`` span, translated to the same events) into one :class:`Event`.
Attribute values are plain Python: ``str``, ``int``, ``float``, ``bool``, ``bytes``,
``list`` and ``dict`` (for OTLP arrays and key-value lists).

The ``attr_*`` functions read one attribute with its type checked: every consumer of
events (the store's event handlers, detectors handling their own event names, other event
sources) validates the same way and rejects bad input with :class:`RejectedEvent`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from lockscope import events as ev

__all__ = [
    "EXCLUSIVE",
    "Code",
    "Event",
    "ProcessInfo",
    "RejectedEvent",
    "attr_bool",
    "attr_code",
    "attr_float",
    "attr_int",
    "attr_mode",
    "attr_str",
]

EXCLUSIVE: Final = "exclusive"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The reporting process, from the OTLP resource attributes."""

    service: str
    host: str
    pid: int
    instance: str
    """``service.instance.id``: unique per process start; the key of a process."""


@dataclass(frozen=True, slots=True)
class Event:
    """One lock event (see :mod:`lockscope.events` for names and attribute keys)."""

    name: str
    time_ns: int
    process: ProcessInfo
    attrs: Mapping[str, Any] = field(default_factory=dict)


class RejectedEvent(ValueError):
    """The event cannot be applied; ``reason`` is the metric label (``invalid``, ``limit``,
    ``unknown_event``)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


Code = tuple[str | None, int | None, str | None]
"""A code location: ``(file, line, function)``."""


# -- attribute parsing: each returns the value or None, or raises RejectedEvent -------------
def attr_str(attrs: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    """A string attribute (``default`` when absent)."""
    v = attrs.get(key)
    if v.__class__ is str:  # the common case first: these run ~10 times per event
        return v
    if v is None:
        return default
    if not isinstance(v, str):
        raise RejectedEvent(f"{key} must be a string, not {type(v).__name__}")
    return v


def attr_int(attrs: Mapping[str, Any], key: str) -> int | None:
    """An integer attribute (a finite float is truncated; a bool is rejected)."""
    v = attrs.get(key)
    if v.__class__ is int:
        return v
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RejectedEvent(f"{key} must be an integer, not {type(v).__name__}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise RejectedEvent(f"{key} must be finite")
        return int(v)
    return v


def attr_float(attrs: Mapping[str, Any], key: str) -> float | None:
    """A finite number attribute."""
    v = attrs.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RejectedEvent(f"{key} must be a finite number, not {v!r}")
    return float(v)


def attr_bool(attrs: Mapping[str, Any], key: str) -> bool | None:
    """A boolean attribute."""
    v = attrs.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise RejectedEvent(f"{key} must be a boolean, not {type(v).__name__}")
    return v


def attr_code(attrs: Mapping[str, Any]) -> Code | None:
    """The code location of an event or heartbeat entry, if it has one."""
    file = attr_str(attrs, ev.ATTR_CODE_FILE)
    line = attr_int(attrs, ev.ATTR_CODE_LINE)
    func = attr_str(attrs, ev.ATTR_CODE_FUNCTION)
    if file is None and line is None and func is None:
        return None
    return (sys.intern(file) if file else None, line, sys.intern(func) if func else None)


def attr_mode(attrs: Mapping[str, Any], key: str = ev.ATTR_LOCK_MODE) -> str:
    """A lock mode (one of :data:`lockscope.events.MODES`; default exclusive)."""
    mode = attr_str(attrs, key, EXCLUSIVE) or EXCLUSIVE
    if mode not in ev.MODES:
        raise RejectedEvent(f"{key} must be one of {', '.join(ev.MODES)}, not {mode!r}")
    return mode
