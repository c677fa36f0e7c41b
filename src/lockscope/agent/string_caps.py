"""A length cap on every string an event brings into the agent (lock names, owners, code
locations, actor names, service and instance names...).

Without it a client could park megabytes per hold: 40 holds with 12 MB names took an agent
from 54 to 582 MiB, and dead processes keep their holds for ``dead_process_retention``.  The
receiver passes every decoded event through :func:`cap_event` before the state sees it.

A string longer than ``limit`` characters is cut to ``limit``: its first
``limit - 17`` characters, ``~`` and 16 hex digits of a BLAKE2b digest of the whole string.
So two long names that share a prefix stay two locks (cutting must never merge two locks,
which could invent a deadlock or a violation), and the same long name from two processes
is still one lock.  Each cut is counted by field
(``lockscope_agent_strings_truncated_total{field}``); the field is one of a fixed set, never
the attribute key itself, so the label stays bounded.

A request whose body is shorter than the limit cannot hold a longer string: the receiver
skips the check for it (most requests), so the common case costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from lockscope import events as ev
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.otlp_decode_metrics import HistogramPoint, SumPoint

__all__ = [
    "DEFAULT_MAX_STRING",
    "FIELDS",
    "MIN_STRING",
    "cap_event",
    "cap_point",
    "cap_string",
    "field_of",
]

DEFAULT_MAX_STRING: Final = 1024
"""Default ``limits.max_string_length``."""
MIN_STRING: Final = 64
"""The smallest allowed limit (room for a prefix and the digest)."""
_DIGEST_CHARS: Final = 16

_FIELDS: Final[dict[str, str]] = {
    ev.ATTR_LOCK_NAME: "lock_name",
    ev.ATTR_LOCK_NAMESPACE: "lock_namespace",
    ev.ATTR_LOCK_TEMPLATE: "lock_template",
    ev.ATTR_LOCK_SYSTEM: "lock_system",
    ev.ATTR_LOCK_OWNER: "owner",
    ev.ATTR_LOCK_HOLDER_OWNER: "owner",
    ev.ATTR_ACTOR_ID: "actor",
    ev.ATTR_ACTOR_NAME: "actor",
    ev.ATTR_CODE_FILE: "code",
    ev.ATTR_CODE_FUNCTION: "code",
    ev.ATTR_ORDER_FIRST: "lock_template",
    ev.ATTR_ORDER_SECOND: "lock_template",
    ev.ATTR_ORDER_SYSTEM_FIRST: "lock_system",
    ev.ATTR_ORDER_SYSTEM_SECOND: "lock_system",
}
FIELDS: Final = frozenset({*_FIELDS.values(), "service", "host", "instance", "other"})
"""The ``field`` label values."""


def field_of(key: str) -> str:
    """The bounded ``field`` label for an attribute key."""
    return _FIELDS.get(key, "other")


def cap_string(value: str, limit: int) -> str:
    """``value`` itself when it fits, else its cut form (see the module docstring)."""
    if len(value) <= limit:
        return value
    digest = hashlib.blake2b(
        value.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_CHARS // 2
    ).hexdigest()
    return f"{value[: max(0, limit - _DIGEST_CHARS - 1)]}~{digest}"


def _too_long(value: Any, limit: int) -> bool:
    cls = value.__class__
    if cls is str or cls is bytes:
        return len(value) > limit
    if cls is list or cls is tuple:
        return any(_too_long(v, limit) for v in value)
    if isinstance(value, Mapping):
        return any(len(k) > limit or _too_long(v, limit) for k, v in value.items())
    return False


def _cap(value: Any, limit: int, key: str, cut: Counter[str]) -> Any:
    cls = value.__class__
    if cls is str:
        if len(value) > limit:
            cut[field_of(key)] += 1
            return cap_string(value, limit)
        return value
    if cls is bytes:
        if len(value) > limit:
            cut[field_of(key)] += 1
            return value[:limit]
        return value
    if cls is list or cls is tuple:
        return [_cap(v, limit, key, cut) for v in value]
    if isinstance(value, Mapping):
        return _cap_attrs(value, limit, cut)
    return value


def _cap_attrs(attrs: Mapping[str, Any], limit: int, cut: Counter[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if len(k) > limit:
            cut["other"] += 1
            k = cap_string(k, limit)
        out[k] = _cap(v, limit, k, cut)
    return out


def _cap_process(info: ProcessInfo, limit: int, cut: Counter[str]) -> ProcessInfo:
    if len(info.service) <= limit and len(info.host) <= limit and len(info.instance) <= limit:
        return info
    fields = {"service": info.service, "host": info.host, "instance": info.instance}
    for name, value in fields.items():
        if len(value) > limit:
            cut[name] += 1
            fields[name] = cap_string(value, limit)
    return ProcessInfo(fields["service"], fields["host"], info.pid, fields["instance"])


def cap_point(
    point: SumPoint | HistogramPoint, limit: int, cut: Counter[str]
) -> SumPoint | HistogramPoint:
    """A metric point with its process and label strings cut like an event's."""
    process = _cap_process(point.process, limit, cut)
    if process is point.process and not any(
        len(k) > limit or len(v) > limit for k, v in point.labels
    ):
        return point
    labels = []
    for k, v in point.labels:
        if len(v) > limit:
            cut["lock_template" if k == ev.ATTR_LOCK_TEMPLATE else "other"] += 1
            v = cap_string(v, limit)
        if len(k) > limit:
            cut["other"] += 1
            k = cap_string(k, limit)
        labels.append((k, v))
    return dataclasses.replace(point, process=process, labels=tuple(sorted(labels)))


def cap_event(event: Event, limit: int, cut: Counter[str]) -> Event:
    """``event`` itself when every string fits, else a copy with the long ones cut (each
    cut counted in ``cut`` by field)."""
    process = event.process
    capped_process = (
        _cap_process(process, limit, cut) if isinstance(process, ProcessInfo) else process
    )
    attrs = event.attrs
    long_attrs = _too_long(attrs, limit)
    if capped_process is process and not long_attrs:
        return event
    new_attrs = _cap_attrs(attrs, limit, cut) if long_attrs else attrs
    return Event(event.name, event.time_ns, capped_process, new_attrs)
