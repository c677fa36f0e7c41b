"""The event vocabulary shared by the shim (which sends) and the agent (which receives).

docs/events.md is the prose version of this module, for apps in other languages.

Transport: OTLP/HTTP logs (``POST /v1/logs``).  Each event is one ``LogRecord`` whose
``event_name`` field (and, for older SDKs, the ``event.name`` attribute) is one of the
``EVENT_*`` names below; its attributes use the ``ATTR_*`` keys.  The ``Resource`` of the
batch names the process: ``service.name``, ``host.name``, ``process.pid`` and
``service.instance.id`` (unique per process start, so a reused pid or a forked child is a
new process).  ``time_unix_nano`` of the record is when the event happened.

Lock identity is the triple (``lockscope.lock.system``, ``lockscope.lock.namespace``,
``lockscope.lock.name``); see :func:`lock_key`.

Lock spans (``lock.acquire`` and ``lock.hold``) carrying the same attributes are accepted on
``/v1/traces`` as an alternative way to feed the agent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

SCHEMA_VERSION: Final = 1
"""Bumped on an incompatible change; sent as ``lockscope.schema_version`` on heartbeats."""

# -- event names --------------------------------------------------------------------------
EVENT_WAIT_START: Final = "lockscope.wait.start"
"""An acquire has waited longer than ``report_after``.  Sent after a ``hold.start`` for
every lock the waiter holds that the agent has not yet been told about (principle 2)."""
EVENT_WAIT_END: Final = "lockscope.wait.end"
"""A reported wait ended; ``lockscope.outcome`` says how."""
EVENT_HOLD_START: Final = "lockscope.hold.start"
"""A hold the agent should know: older than ``report_after``, or held by a reported waiter."""
EVENT_HOLD_END: Final = "lockscope.hold.end"
"""A reported hold was released (or given up because it was lost)."""
EVENT_HOLD_EXTEND: Final = "lockscope.hold.extend"
"""A reported hold's lease was extended; carries the new ``lockscope.lock.expires_at``."""
EVENT_LOCK_LOST: Final = "lockscope.lock.lost"
"""The holder learned it had lost the lock (release/extend found another owner or none,
ZooKeeper session lost, renewal failed).  Carries the hold's ``lockscope.since``."""
EVENT_ORDER_PAIR: Final = "lockscope.order.pair"
"""First time this process acquired ``lockscope.order.second`` while holding
``lockscope.order.first`` (lock-name templates), as Linux lockdep records."""
EVENT_HEARTBEAT: Final = "lockscope.heartbeat"
"""Every ``LOCKSCOPE_HEARTBEAT`` seconds: the full set of this process's reported waits and
holds, as ``lockscope.waits`` and ``lockscope.holds`` (arrays of key-value lists whose keys
are the per-event attributes below).  The agent replaces its view of the process with it."""

EVENT_NAMES: Final = frozenset(
    {
        EVENT_WAIT_START,
        EVENT_WAIT_END,
        EVENT_HOLD_START,
        EVENT_HOLD_END,
        EVENT_HOLD_EXTEND,
        EVENT_LOCK_LOST,
        EVENT_ORDER_PAIR,
        EVENT_HEARTBEAT,
    }
)

# -- resource attributes (OpenTelemetry semantic conventions) -----------------------------
RES_SERVICE_NAME: Final = "service.name"
RES_SERVICE_INSTANCE: Final = "service.instance.id"
RES_HOST_NAME: Final = "host.name"
RES_PROCESS_PID: Final = "process.pid"

# -- record attributes --------------------------------------------------------------------
ATTR_EVENT_NAME: Final = "event.name"
ATTR_SCHEMA_VERSION: Final = "lockscope.schema_version"

ATTR_LOCK_SYSTEM: Final = "lockscope.lock.system"
"""``redis``, ``redlock``, ``zookeeper``, ``database``, ``threading``, ``asyncio``..."""
ATTR_LOCK_NAMESPACE: Final = "lockscope.lock.namespace"
"""Server address / database / path prefix, so equal names on two servers are two locks."""
ATTR_LOCK_NAME: Final = "lockscope.lock.name"
ATTR_LOCK_TEMPLATE: Final = "lockscope.lock.template"
"""The templated name (``order:{id}``), used for metric labels and lock-order pairs."""
ATTR_LOCK_MODE: Final = "lockscope.lock.mode"
"""``exclusive`` (default), ``read``, ``write`` or ``semaphore``."""
ATTR_LOCK_FIFO: Final = "lockscope.lock.fifo"
"""True when waiters are served in queue order (ZooKeeper, FairLock): soft edges apply."""
ATTR_LOCK_REENTRANT: Final = "lockscope.lock.reentrant"
"""True when the holder may acquire again without waiting (RLock): no self-deadlock."""
ATTR_LOCK_PROCESS_BOUND: Final = "lockscope.lock.process_bound"
"""True when the operating system releases the lock when its holder's process dies (flock
file locks, pooled connections): a dead holder is not an orphaned hold."""
ATTR_LOCK_MAX_LEASES: Final = "lockscope.lock.max_leases"
"""Semaphores: how many holders at once."""
ATTR_LOCK_TTL: Final = "lockscope.lock.ttl"
"""Lease length in seconds (double), where the lock has one."""
ATTR_LOCK_SESSION_TIMEOUT: Final = "lockscope.lock.session_timeout"
"""Seconds (double): the hold lasts while its holder's session with the lock server does,
and the server ends a session this long after it last heard from the holder (ZooKeeper's
ephemeral nodes).  The agent resolves an orphaned hold when that time has passed."""
ATTR_LOCK_EXPIRES_AT: Final = "lockscope.lock.expires_at"
"""Unix nanoseconds when the holder's lease ends, as the holder believes."""
ATTR_LOCK_TOKEN: Final = "lockscope.lock.token"
"""Fencing token (int) of this hold."""
ATTR_LOCK_HOLDER_TOKEN: Final = "lockscope.lock.holder_token"
"""On a wait: the fencing token of the current holder, where the shim learned it cheaply."""
ATTR_LOCK_OWNER: Final = "lockscope.lock.owner"
"""Opaque owner id of this hold (e.g. the Redis value), to match a waiter to its holder."""
ATTR_LOCK_HOLDER_OWNER: Final = "lockscope.lock.holder_owner"
"""On a wait: the owner id currently stored on the server, where known."""
ATTR_WAIT_TICKET: Final = "lockscope.wait.ticket"
"""FIFO locks: the waiter's ticket, ordering it in the queue (e.g. the ZooKeeper sequence
number of its node): not a position (1st, 2nd...), a number that only orders."""
ATTR_QUEUE_POSITION: Final = ATTR_WAIT_TICKET
"""Deprecated name of :data:`ATTR_WAIT_TICKET` (what it holds is a ticket, not a position)."""

ATTR_ACTOR_ID: Final = "lockscope.actor.id"
"""Unique within the process: ``thread:<ident>`` or ``task:<id>``."""
ATTR_ACTOR_NAME: Final = "lockscope.actor.name"
"""Thread or task name, for people."""

ATTR_SINCE: Final = "lockscope.since"
"""Unix nanoseconds when the wait began or the hold was acquired."""
ATTR_OUTCOME: Final = "lockscope.outcome"
"""``acquired``, ``timeout``, ``busy`` (non-blocking miss), ``cancelled``, ``error``,
``released``, ``lost``."""
ATTR_WAIT_DURATION: Final = "lockscope.wait.duration"
ATTR_HOLD_DURATION: Final = "lockscope.hold.duration"

ATTR_ORDER_FIRST: Final = "lockscope.order.first"
ATTR_ORDER_FIRST_MODE: Final = "lockscope.order.first_mode"
ATTR_ORDER_SECOND: Final = "lockscope.order.second"
ATTR_ORDER_SECOND_MODE: Final = "lockscope.order.second_mode"
ATTR_ORDER_SYSTEM_FIRST: Final = "lockscope.order.first_system"
ATTR_ORDER_SYSTEM_SECOND: Final = "lockscope.order.second_system"

ATTR_HOLDS: Final = "lockscope.holds"
ATTR_WAITS: Final = "lockscope.waits"
ATTR_HEARTBEAT_INTERVAL: Final = "lockscope.heartbeat.interval"
"""Seconds between heartbeats; the agent presumes the process dead after a few missed."""
ATTR_EXITING: Final = "lockscope.process.exiting"
"""On the last heartbeat of a process that exits cleanly (its exit flush): True.  It lists
every hold still held, however young: what it lists outlives the process."""
ATTR_DROPPED: Final = "lockscope.dropped"
"""On heartbeats: events this process has dropped so far (queue full, agent down)."""
ATTR_SEQUENCE: Final = "lockscope.seq"
"""On every event: its place in the order this process incarnation sent its events (1, 2,
3...; gaps where events were dropped).  The agent orders a process's heartbeats and events
by it rather than by their timestamps, which a stepped clock can move backwards."""

# OpenTelemetry code attributes (semantic conventions 1.30+).
ATTR_CODE_FILE: Final = "code.file.path"
ATTR_CODE_LINE: Final = "code.line.number"
ATTR_CODE_FUNCTION: Final = "code.function.name"

# -- spans --------------------------------------------------------------------------------
SPAN_ACQUIRE: Final = "lock.acquire"
SPAN_HOLD: Final = "lock.hold"

# -- OTel metrics the shim exports (the agent maps them to Prometheus names) -------------
METRIC_ACQUISITIONS: Final = "lockscope.lock.acquisitions"
"""Counter; attributes ``lockscope.lock.template``, ``.system`` and ``lockscope.outcome``."""
METRIC_WAIT_DURATION: Final = "lockscope.lock.wait.duration"
"""Histogram, seconds; attributes template and system."""
METRIC_HOLD_DURATION: Final = "lockscope.lock.hold.duration"
"""Histogram, seconds; attributes template and system."""
METRIC_LOCKS_LOST: Final = "lockscope.lock.lost"
"""Counter; attributes template and system."""

MODES: Final = ("exclusive", "read", "write", "semaphore")
OUTCOMES: Final = ("acquired", "timeout", "busy", "cancelled", "error", "released", "lost")

__all__ = [
    *sorted(n for n in list(globals()) if n.isupper() and not n.startswith("_")),
    "lock_key",
    "zookeeper_namespace",
]


def lock_key(system: str, namespace: str, name: str) -> str:
    """The lock's identity as one string: ``system:namespace/name`` (used as a graph node id)."""
    return f"{system}:{namespace}/{name}"


def zookeeper_namespace(hosts: Iterable[tuple[str, int]], chroot: str | None = None) -> str:
    """The namespace of a ZooKeeper lock: the ensemble's ``host:port`` list, sorted and
    without duplicates, plus the chroot.  Every ZooKeeper target (kazoo recipes,
    lockscope's own locks) spells it this way, so one lock has one identity however each
    client lists its servers."""
    return ",".join(sorted({f"{host}:{port}" for host, port in hosts})) + (chroot or "")
