"""Findings: what the detectors report (deadlocks, stale holders, violations, inversions).

A :class:`Finding` has a stable id, a status (``active`` or ``resolved``), what it is about
(lock templates, systems, services, reason: what alerts are labelled and routed by; the
labels themselves are the Alertmanager exporter's) and a one-line text, plus ``data``: the
JSON object the API serves for it.  The :class:`FindingStore` keeps them within
``Limits.max_findings``, resolves one-shot findings when they expire, and tells
subscribers about every change (the Alertmanager exporter and the web view listen).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from lockscope.agent.graph import Actor, Lock
    from lockscope.agent.model import ProcessInfo

__all__ = [
    "ALERT_NAMES",
    "DEADLOCK",
    "KINDS",
    "ORDER_INVERSION",
    "STALE_HOLDER",
    "VIOLATION",
    "Finding",
    "FindingStore",
    "actor_fields",
    "actor_json",
    "lock_fields",
    "lock_finding",
    "rfc3339",
    "stable_id",
]

DEADLOCK: Final = "deadlock"
STALE_HOLDER: Final = "stale_holder"
VIOLATION: Final = "violation"
ORDER_INVERSION: Final = "order_inversion"
KINDS: Final = (DEADLOCK, STALE_HOLDER, VIOLATION, ORDER_INVERSION)

ALERT_NAMES: Final = {
    DEADLOCK: "LockDeadlock",
    STALE_HOLDER: "LockStaleHolder",
    VIOLATION: "LockMutualExclusionViolation",
    ORDER_INVERSION: "LockOrderInversion",
}
"""The Alertmanager alert name of each finding kind (public contract: alert rules and
routes match on it)."""

ACTIVE: Final = "active"
RESOLVED: Final = "resolved"


def rfc3339(ns: int | None) -> str | None:
    """Unix nanoseconds as an RFC 3339 UTC timestamp with microseconds (``...Z``)."""
    if ns is None:
        return None
    dt = datetime.fromtimestamp(ns // 1000 / 1_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def actor_fields(label: str, actor_id: str, info: ProcessInfo) -> dict[str, Any]:
    """Who an actor is, as every finding and API document spells it."""
    return {
        "actor": label,
        "actor_id": actor_id,
        "service": info.service,
        "host": info.host,
        "pid": info.pid,
        "instance": info.instance,
    }


def actor_json(actor: Actor) -> dict[str, Any]:
    """:func:`actor_fields` of a tracked actor."""
    return actor_fields(actor.label, actor.actor_id, actor.process.info)


def lock_fields(lock: Lock) -> dict[str, Any]:
    """Which lock a stale-holder or violation finding is about."""
    return {
        "lock": lock.name,
        "lock_key": lock.key,
        "system": lock.system,
        "namespace": lock.namespace,
        "template": lock.template,
    }


def stable_id(prefix: str, parts: Iterable[str]) -> str:
    """``prefix-<16 hex>`` from the sorted parts, so re-detection (even by a restarted agent)
    of the same situation gives the same id."""
    digest = hashlib.sha256("\x1f".join(sorted(parts)).encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"


@dataclass(slots=True, eq=False)
class Finding:
    """One detected problem."""

    kind: str
    """``deadlock``, ``stale_holder``, ``violation`` or ``order_inversion``."""
    id: str
    text: str
    """One line for people (alert summary, ``lockscope status``)."""
    data: dict[str, Any]
    """The JSON object of the API (without ``id``/``status``/times, added by :meth:`to_json`)."""
    detected_at_ns: int
    templates: tuple[str, ...] = ()
    """Lock-name templates involved (sorted)."""
    systems: tuple[str, ...] = ()
    """Lock systems involved (sorted; empty where the finding does not name them)."""
    services: tuple[str, ...] = ()
    """Services of the actors involved (sorted)."""
    reason: str | None = None
    """The kind's sub-kind (``max_hold``, ``orphaned``, ``overlapping_holds``...)."""
    resolved_at_ns: int | None = None
    resolution: str | None = None
    """Why it resolved (``wait_ended``, ``process_dead``, ``released``, ``expired``...)."""
    expires_at_ns: int | None = field(default=None, repr=False)
    """One-shot findings: when the store resolves it by itself."""

    @property
    def status(self) -> str:
        """``active`` or ``resolved``."""
        return ACTIVE if self.resolved_at_ns is None else RESOLVED

    @property
    def active(self) -> bool:
        """True until resolved."""
        return self.resolved_at_ns is None

    def to_json(self) -> dict[str, Any]:
        """The API object: ``id``, ``status``, ``detected_at``, ``resolved_at`` plus ``data``."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "detected_at": rfc3339(self.detected_at_ns),
            "resolved_at": rfc3339(self.resolved_at_ns),
            "resolution": self.resolution,
        }
        out.update(self.data)
        return out


def lock_finding(
    kind: str,
    lock: Lock,
    reason: str,
    *,
    id_prefix: str,
    id_parts: Iterable[str],
    text: str,
    fields: Mapping[str, Any],
    service: str,
    now_ns: int,
    expires_at_ns: int | None = None,
) -> Finding:
    """A finding about one lock and one service's holder (stale holders, violations).

    Its id is :func:`stable_id` of ``reason``, the lock and ``id_parts``; its data is the
    :func:`lock_fields` followed by ``fields``; it is labelled with the lock's template and
    system and with ``service``.
    """
    return Finding(
        kind,
        stable_id(id_prefix, [reason, lock.key, *id_parts]),
        text,
        {**lock_fields(lock), **fields},
        detected_at_ns=now_ns,
        templates=(lock.template,),
        systems=(lock.system,),
        services=(service,),
        reason=reason,
        expires_at_ns=expires_at_ns,
    )


Subscriber = Callable[[Finding], None]


class FindingStore:
    """Findings by id, bounded, with change notification.

    Subscribers are called synchronously with the finding each time one is added or
    resolved; a subscriber's exception is counted and swallowed (detection must go on).
    """

    def __init__(self, max_findings: int) -> None:
        self._by_id: dict[str, Finding] = {}
        self._max = max_findings
        self._subscribers: list[Subscriber] = []
        self.subscriber_errors = 0
        self.evicted = 0
        self.active_count: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._expiring: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Finding]:
        return iter(list(self._by_id.values()))

    def get(self, finding_id: str) -> Finding | None:
        """The finding with this id, active or resolved."""
        return self._by_id.get(finding_id)

    def active(self, finding_id: str) -> Finding | None:
        """The finding with this id if it is active."""
        f = self._by_id.get(finding_id)
        return f if f is not None and f.active else None

    def of_kind(self, kind: str) -> list[Finding]:
        """All kept findings of one kind, newest first."""
        items = [f for f in self._by_id.values() if f.kind == kind]
        items.sort(key=lambda f: (f.active, f.detected_at_ns), reverse=True)
        return items

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(finding)`` on every change; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def add(self, finding: Finding) -> bool:
        """Store an active finding; False (and nothing changes) if it is already active.

        A resolved finding with the same id is replaced: the situation came back.
        """
        old = self._by_id.get(finding.id)
        if old is not None:
            if old.active:
                return False
            del self._by_id[finding.id]
        if len(self._by_id) >= self._max and not self._evict():
            self.evicted += 1
            return False
        self._by_id[finding.id] = finding
        self.active_count[finding.kind] += 1
        self._notify(finding)
        return True

    def resolve(self, finding_id: str, now_ns: int, resolution: str) -> Finding | None:
        """Resolve an active finding; returns it, or None if it was not active."""
        f = self._by_id.get(finding_id)
        if f is None or not f.active:
            return None
        f.resolved_at_ns = now_ns
        f.resolution = resolution
        self.active_count[f.kind] -= 1
        self._notify(f)
        return f

    def expire_later(self, finding_id: str, when_ns: int) -> None:
        """Resolve the finding (reason ``expired``) at ``when_ns``, via :meth:`expire_due`
        (one-shot findings: a violation, a lost lock)."""
        self._expiring.append((when_ns, finding_id))

    def expire_due(self, now_ns: int) -> None:
        """Resolve the findings whose :meth:`expire_later` time has come."""
        expiring = self._expiring
        while expiring and expiring[0][0] <= now_ns:
            _, fid = expiring.popleft()
            self.resolve(fid, now_ns, "expired")

    def _evict(self) -> bool:
        # Oldest resolved first; active findings are never dropped to make room.
        for fid, f in self._by_id.items():
            if not f.active:
                del self._by_id[fid]
                self.evicted += 1
                return True
        return False

    def _notify(self, finding: Finding) -> None:
        for callback in list(self._subscribers):
            try:
                callback(finding)
            except Exception:
                self.subscriber_errors += 1
