"""A faster protobuf decoder for OTLP log requests (the agent's hot path).

Reading an attribute through the standard OTLP message classes costs about 0.6 µs in
Python (a wrapper object for the ``KeyValue``, another for the ``AnyValue``, a
``WhichOneof``, a ``getattr``), and a lockscope record carries a dozen.  Most of those
key-value pairs repeat byte for byte from record to record (lock system, namespace,
template, mode, actor name, the names of busy locks), so this module parses requests into
wire-compatible message types that keep each attribute as its *raw bytes* and decodes a
``KeyValue`` once, caching ``raw bytes -> (key, value)``.  The values that never repeat
(timestamps, owner ids) are decoded by the standard ``KeyValue`` class, which also checks
them (UTF-8, nesting depth): a body the standard classes reject is rejected here too.

The resource of a ``ResourceLogs`` is kept as bytes as well and its
:class:`~lockscope.agent.model.ProcessInfo` cached by those bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as _F
from google.protobuf.message import DecodeError as _ProtoDecodeError
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from lockscope import events as ev
from lockscope.agent.model import Event, ProcessInfo

__all__ = ["RawAttrs", "RawLogs", "keep_raw", "parse_logs"]

_PACKAGE: Final = "lockscope.otlp_raw"

# Fields the agent does not read are not declared: protobuf skips them as unknown fields.
_MESSAGES: Final[list[tuple[str, list[tuple[str, int, int, int, str | None]]]]] = [
    # name, [(field, number, type, label, message type)]
    ("Request", [("resource_logs", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ResourceLogs")]),
    (
        "ResourceLogs",
        [
            ("resource", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, None),
            ("scope_logs", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ScopeLogs"),
        ],
    ),
    ("ScopeLogs", [("log_records", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "LogRecord")]),
    (
        "LogRecord",
        [
            ("time_unix_nano", 1, _F.TYPE_FIXED64, _F.LABEL_OPTIONAL, None),
            ("attributes", 6, _F.TYPE_BYTES, _F.LABEL_REPEATED, None),
            ("observed_time_unix_nano", 11, _F.TYPE_FIXED64, _F.LABEL_OPTIONAL, None),
            ("event_name", 12, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ],
    ),
    # An AnyValue read only for its array or key-value list (heartbeat entries).
    (
        "AnyValue",
        [
            ("array_value", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Values"),
            ("kvlist_value", 6, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Values"),
        ],
    ),
    # ArrayValue (raw AnyValues) and KeyValueList (raw KeyValues) alike.
    ("Values", [("values", 1, _F.TYPE_BYTES, _F.LABEL_REPEATED, None)]),
    # A KeyValue with its value as raw AnyValue bytes.
    (
        "KeyValue",
        [
            ("key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
            ("value", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, None),
        ],
    ),
]


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="lockscope/otlp_raw.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            f = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name, _ in _MESSAGES
    }


_TYPES: Final = _build()
_Request: Final = _TYPES["Request"]
_AnyValue: Final = _TYPES["AnyValue"]
_KeyValueView: Final = _TYPES["KeyValue"]
_KeyValue: Final = common_pb2.KeyValue
_StdAnyValue: Final = common_pb2.AnyValue
_Resource: Final = resource_pb2.Resource

_MAX_DEPTH: Final = 100
"""Nesting of arrays and key-value lists accepted (protobuf's own parsing limit)."""

_CACHE_SIZE: Final = 1 << 16
_CACHEABLE: Final = 512
"""Largest encoded key-value or resource the caches keep: 65,536 entries of a few hundred
bytes are a few tens of MiB, while caching what a hostile client sends (12 MB lock names)
would keep gigabytes."""
_PROCESS_CACHE_SIZE: Final = 1 << 14
_CACHEABLE_RESOURCE: Final = 2048
"""Resources (per process) are larger; at most 16,384 of up to 2 KiB are kept."""
_UNIQUE_KEYS: Final = frozenset(
    {
        ev.ATTR_SINCE,
        ev.ATTR_LOCK_EXPIRES_AT,
        ev.ATTR_LOCK_OWNER,
        ev.ATTR_LOCK_TOKEN,
        ev.ATTR_HOLD_DURATION,
        ev.ATTR_WAIT_DURATION,
        ev.ATTR_WAIT_TICKET,
    }
)
"""Keys whose values rarely repeat: not worth a cache entry."""

_kv_cache: dict[bytes, tuple[str, Any]] = {}
_process_cache: dict[bytes, ProcessInfo] = {}


class RawAttrs(dict[str, Any]):
    """A record's decoded attributes plus ``raw``, its ``KeyValue`` s as they came on the wire
    (only while :func:`keep_raw` is on): a shard forwards them without encoding again."""

    __slots__ = ("raw",)

    raw: list[bytes]


_keep_raw = 0


def keep_raw(on: bool = True) -> None:
    """Keep each record's raw attributes (:class:`RawAttrs`) while any caller wants them:
    a shard agent's forwarding turns this on while it runs (it costs a list per record).
    Calls nest: each ``keep_raw(True)`` needs its ``keep_raw(False)``."""
    global _keep_raw
    _keep_raw = max(0, _keep_raw + (1 if on else -1))


class RawLogs:
    """A parsed OTLP logs request: the lockscope events it holds (``untimed``: indexes of
    events whose record had no time, to be stamped with the receive time) and counts."""

    __slots__ = ("events", "ignored", "received", "unknown", "untimed")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.untimed: list[int] = []
        self.received = 0
        self.ignored = 0
        """Records that are not lockscope events."""
        self.unknown = 0
        """Records named ``lockscope.*`` that are not a known event."""


def parse_logs(body: bytes, build_process: Callable[[Any], ProcessInfo]) -> RawLogs:
    """Parse a protobuf ``ExportLogsServiceRequest`` straight into events.

    ``build_process(attributes)`` makes the ProcessInfo of a resource from its standard
    ``KeyValue`` list (once per distinct resource).  Raises
    ``google.protobuf.message.DecodeError`` (or ``ValueError``) for a body the standard
    message classes would reject: every attribute and resource is checked, including
    those of records that are not for lockscope.
    """
    request = _Request.FromString(body)
    out = RawLogs()
    events = out.events
    names = ev.EVENT_NAMES
    received = ignored = unknown = 0
    keep = _keep_raw > 0
    for resource_logs in request.resource_logs:
        process = _process_info(resource_logs.resource, build_process)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                received += 1
                if keep:
                    raws = list(record.attributes)
                    kept = RawAttrs(_attributes(raws, 0))
                    kept.raw = raws
                    attrs: dict[str, Any] = kept
                else:
                    attrs = _attributes(record.attributes, 0)
                name = record.event_name
                if not name:
                    attr_name = attrs.get(ev.ATTR_EVENT_NAME)
                    if not isinstance(attr_name, str):
                        ignored += 1
                        continue
                    name = attr_name
                if name not in names:
                    if name.startswith("lockscope."):
                        unknown += 1
                    else:
                        ignored += 1
                    continue
                time_ns = record.time_unix_nano or record.observed_time_unix_nano
                if not time_ns:
                    out.untimed.append(len(events))
                events.append(Event(name, time_ns, process, attrs))
    out.received = received
    out.ignored = ignored
    out.unknown = unknown
    return out


def _process_info(resource: bytes, build: Callable[[Any], ProcessInfo]) -> ProcessInfo:
    info = _process_cache.get(resource)
    if info is None:
        info = build(_Resource.FromString(resource).attributes)
        if len(resource) > _CACHEABLE_RESOURCE:
            return info
        if len(_process_cache) >= _PROCESS_CACHE_SIZE:
            _process_cache.clear()
        _process_cache[resource] = info
    return info


def _attributes(raw_key_values: Any, depth: int) -> dict[str, Any]:
    # The hot loop: most key-value pairs are found in the cache.
    out: dict[str, Any] = {}
    cache = _kv_cache
    for raw in raw_key_values:
        pair = cache.get(raw)
        if pair is None:
            pair = _key_value(raw, depth)
            if pair is None:
                continue
        out[pair[0]] = pair[1]
    return out


def _key_value(raw: bytes, depth: int) -> tuple[str, Any] | None:
    # The standard class checks the whole value (UTF-8, nesting depth) as before.
    kv = _KeyValue.FromString(raw)
    value = kv.value
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value" or kind == "kvlist_value":
        # Not cached (a list or dict must not be shared between events); its elements are
        # decoded through the cache, which pays off for heartbeat entries.
        return kv.key, _any_value(_KeyValueView.FromString(raw).value, depth + 1)
    pair = (kv.key, getattr(value, kind))
    if pair[0] not in _UNIQUE_KEYS and len(raw) <= _CACHEABLE:
        if len(_kv_cache) >= _CACHE_SIZE:
            _kv_cache.clear()
        _kv_cache[raw] = pair
    return pair


def _any_value(raw: bytes, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _ProtoDecodeError("attribute values nested too deeply")
    value = _StdAnyValue.FromString(raw)
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [
            _any_value(item, depth + 1) for item in _AnyValue.FromString(raw).array_value.values
        ]
    if kind == "kvlist_value":
        return _attributes(_AnyValue.FromString(raw).kvlist_value.values, depth + 1)
    return getattr(value, kind)
