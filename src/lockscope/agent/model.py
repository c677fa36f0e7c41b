"""Decoded events: what the OTLP receiver hands to the agent's state, whatever the wire format.

The receiver turns each OTLP log record that carries a lockscope event name (and each
``lock.acquire``/``lock.hold`` span, translated to the same events) into one :class:`Event`.
Attribute values are plain Python: ``str``, ``int``, ``float``, ``bool``, ``bytes``,
``list`` and ``dict`` (for OTLP arrays and key-value lists).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "ProcessInfo"]


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
