"""Stale holders: held too long, orphaned by a dead process, or held past the lease.

The kinds of stale holder become findings with ``reason``:

* ``max_hold`` - the holder still reports the hold (in a heartbeat or event sent) more
  than ``max_hold`` seconds after it began (per-template override);
* ``orphaned`` - the holder's process stopped heartbeating while it held the lock;
* ``exited_holding`` - the holder's process exited (it said so) while holding a lock that
  outlives it (a lease, a key with a TTL, a session node); resolved when the lease ends;
* ``lease_expired`` - the holder still reported the hold ``lease_grace`` after its lease
  ended, or told us it lost the lock (``lockscope.lock.lost``).

Every check runs when a hold is asserted (so a hold whose release event was lost cannot
raise one: its holder no longer asserts it), never by scanning all holds.
:class:`StaleHolderDetector` receives the store's changes; its findings about a hold
resolve when the hold ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from lockscope.agent.config import AgentConfig
from lockscope.agent.db_binding import is_binding
from lockscope.agent.detect_base import FindingDetector
from lockscope.agent.findings import (
    STALE_HOLDER,
    Finding,
    FindingStore,
    actor_json,
    lock_finding,
    rfc3339,
)
from lockscope.agent.graph import Actor, Hold, Lock
from lockscope.agent.store_changes import (
    HoldAsserted,
    HoldDropped,
    HoldExtended,
    LockLost,
    ProcessDied,
    ProcessRevived,
)

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = [
    "EXITED_HOLDING",
    "LEASE_EXPIRED",
    "MAX_HOLD",
    "ORPHANED",
    "REASONS",
    "StaleCounters",
    "StaleHolderDetector",
    "stale_finding",
]

MAX_HOLD: Final = "max_hold"
ORPHANED: Final = "orphaned"
EXITED_HOLDING: Final = "exited_holding"
LEASE_EXPIRED: Final = "lease_expired"
REASONS: Final = (MAX_HOLD, ORPHANED, LEASE_EXPIRED, EXITED_HOLDING)
_NS: Final = 1_000_000_000


@dataclass(slots=True)
class StaleCounters:
    """Counters the metrics exporter reads (dicts are label value -> count)."""

    stale_holders_detected: dict[str, int] = field(default_factory=dict)
    """By reason."""
    locks_lost: dict[str, int] = field(default_factory=dict)
    """By lock template (``lockscope_locks_lost_total{lock}``)."""


class StaleHolderDetector(FindingDetector):
    """Finds stale holders from the holds the store reports (a store detector)."""

    def __init__(self, findings: FindingStore, config: AgentConfig) -> None:
        super().__init__(findings, config)
        self._grace_ns = int(config.lease_grace * _NS)
        self._by_hold: dict[Hold, list[str]] = {}
        """Hold -> ids of its active findings (resolved when the hold ends)."""
        self.counters = StaleCounters()

    def subscribe(self, store: LockStore) -> None:
        """Subscribe to the store's hold and process changes."""
        store.subscribe(HoldAsserted, self._asserted)
        store.subscribe(HoldExtended, self._extended)
        store.subscribe(HoldDropped, self._dropped)
        store.subscribe(LockLost, self._lost)
        store.subscribe(ProcessDied, self._died)
        store.subscribe(ProcessRevived, self._revived)

    @property
    def _now(self) -> int:
        return self.store.now_ns

    # -- changes ---------------------------------------------------------------------------
    def _asserted(self, c: HoldAsserted) -> None:
        h, t = c.hold, c.at_ns
        if is_binding(h.lock):
            return  # a session in use (a long transaction), not a lock anyone waits for
        if h.expires_at_ns is not None and t > h.expires_at_ns + self._grace_ns:
            self._stale(LEASE_EXPIRED, h, "still held after its lease ended")
        max_hold = self._config.max_hold_for(h.lock.template)
        if max_hold > 0 and t - h.since_ns > max_hold * _NS:
            self._stale(MAX_HOLD, h, f"held longer than {max_hold:g}s")

    def _extended(self, c: HoldExtended) -> None:
        self._resolve(c.hold, "extended", only=(LEASE_EXPIRED,))

    def _dropped(self, c: HoldDropped) -> None:
        self._resolve(c.hold, c.reason)
        self._by_hold.pop(c.hold, None)

    def _died(self, c: ProcessDied) -> None:
        if c.exited:
            reason, detail = EXITED_HOLDING, "holder process exited while holding it"
        else:
            reason, detail = ORPHANED, "holder process stopped heartbeating"
        now = self._now
        for actor in list(c.process.actors.values()):
            for hold in list(actor.holds.values()):
                ends = hold.expires_at_ns
                if c.exited and ends is not None and ends + self._grace_ns <= now:
                    continue  # its lease is over already: nothing outlives the process
                self._stale(reason, hold, detail)

    def _revived(self, c: ProcessRevived) -> None:
        for actor in c.process.actors.values():
            for hold in actor.holds.values():
                self._resolve(hold, "process_back", only=(ORPHANED, EXITED_HOLDING))

    def _lost(self, c: LockLost) -> None:
        lock, h, now = c.lock, c.hold, self._now
        label = self.store.label(lock.template)
        self.counters.locks_lost[label] = self.counters.locks_lost.get(label, 0) + 1
        ongoing = self._take_lease_expired(h) if h is not None else None
        if ongoing is not None:
            # The agent already saw this hold outlive its lease: the holder's own word that
            # it lost the lock continues that finding (one alert per lost lock, not two).
            ongoing.data["detail"] = "the holder lost the lock"
            self._findings.expire_later(ongoing.id, now + self._ttl_ns)
            return
        f = stale_finding(
            LEASE_EXPIRED,
            lock,
            c.actor,
            since_ns=c.at_ns if c.since_ns is None else c.since_ns,
            now_ns=now,
            hold=h,
            detail="the holder lost the lock",
            expires_in_ns=self._ttl_ns,
            id_extra="lost",
        )
        if self._findings.add(f):
            self._count(LEASE_EXPIRED)
            self._findings.expire_later(f.id, now + self._ttl_ns)

    # -- findings of a hold ----------------------------------------------------------------
    def _count(self, reason: str) -> None:
        counts = self.counters.stale_holders_detected
        counts[reason] = counts.get(reason, 0) + 1

    def _stale(self, reason: str, h: Hold, detail: str) -> None:
        if not self._config.stale_holder_findings:
            return  # a detector agent: the shard that owns the process reports these
        f = stale_finding(
            reason, h.lock, h.actor, since_ns=h.since_ns, now_ns=self._now, hold=h, detail=detail
        )
        if self._findings.add(f):
            self._count(reason)
            self._by_hold.setdefault(h, []).append(f.id)

    def _resolve(self, h: Hold, reason: str, only: tuple[str, ...] | None = None) -> None:
        ids = self._by_hold.get(h)
        if not ids:
            return
        keep = []
        for fid in ids:
            f = self._findings.active(fid)
            if f is None:
                continue
            if only is not None and f.reason not in only:
                keep.append(fid)
                continue
            self._findings.resolve(fid, self._now, reason)
        if keep:
            self._by_hold[h] = keep
        else:
            del self._by_hold[h]

    def _take_lease_expired(self, h: Hold) -> Finding | None:
        """Detach ``h``'s active ``lease_expired`` finding (so dropping ``h`` keeps it)."""
        ids = self._by_hold.get(h, [])
        for fid in ids:
            f = self._findings.active(fid)
            if f is not None and f.reason == LEASE_EXPIRED:
                ids.remove(fid)
                return f
        return None


def stale_finding(
    reason: str,
    lock: Lock,
    actor: Actor,
    *,
    since_ns: int,
    now_ns: int,
    hold: Hold | None = None,
    detail: str | None = None,
    expires_in_ns: int | None = None,
    id_extra: str = "",
) -> Finding:
    """A stale-holder finding about ``actor``'s hold of ``lock`` that began at ``since_ns``
    (``expires_in_ns``: a one-shot finding, resolved by the store after that long)."""
    fields: dict[str, Any] = {
        **actor_json(actor),
        "reason": reason,
        "since": rfc3339(since_ns),
        "mode": hold.mode if hold is not None else None,
        "expires_at": rfc3339(hold.expires_at_ns) if hold is not None else None,
        "token": hold.token if hold is not None else None,
        "detail": detail,
    }
    text = f"{actor.label} holds {lock.name} ({lock.system}) since {rfc3339(since_ns)}: {reason}"
    if detail:
        text += f" ({detail})"
    return lock_finding(
        STALE_HOLDER,
        lock,
        reason,
        id_prefix="stale",
        id_parts=[actor.key, str(since_ns), id_extra],
        text=text,
        fields=fields,
        service=actor.process.info.service,
        now_ns=now_ns,
        expires_at_ns=None if expires_in_ns is None else now_ns + expires_in_ns,
    )
