"""Mutual-exclusion violations: overlapping holds of an exclusive lock, fencing tokens
going backwards.

Overlap is judged on evidence only: a hold is known to be held from its ``since`` to the
newest time its holder asserted it (hold event, extension, heartbeat).  Two holders of
one exclusive (or write/read-vs-write) lock whose known intervals overlap by more than the
tolerated clock skew both believed they held it at once - whatever the lock server thinks.
A hold whose release event was lost is never asserted again, so it cannot cause one.

:class:`ViolationDetector` receives the store's changes: each new hold's fencing token is
checked against the lock's recent tokens, each assertion of a hold (and each lost lock)
against the other holders.  Violations are one-shot findings: active for ``finding_ttl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from lockscope.agent.config import AgentConfig
from lockscope.agent.detect_base import FindingDetector
from lockscope.agent.findings import (
    VIOLATION,
    Finding,
    FindingStore,
    actor_fields,
    actor_json,
    lock_finding,
    rfc3339,
)
from lockscope.agent.graph import READ, SEMAPHORE, Actor, Hold, Lock, actor_label
from lockscope.agent.model import ProcessInfo
from lockscope.agent.store import LockStore, conflicting
from lockscope.agent.store_changes import HoldAdded, HoldAsserted, LockLost

__all__ = [
    "FENCING_TOKEN_BACKWARDS",
    "OVERLAPPING_HOLDS",
    "ActorRef",
    "TokenEntry",
    "ViolationCounters",
    "ViolationDetector",
    "actor_json",
    "actor_ref",
    "actor_ref_json",
    "overlap_ns",
    "token_went_backwards",
    "violation_finding",
]

OVERLAPPING_HOLDS: Final = "overlapping_holds"
FENCING_TOKEN_BACKWARDS: Final = "fencing_token_backwards"

_HISTORY = 8
_NS: Final = 1_000_000_000


@dataclass(slots=True)
class ViolationCounters:
    """Counters the metrics exporter reads."""

    violations: dict[str, int] = field(default_factory=dict)
    """By lock template (``lockscope_mutual_exclusion_violations_total{lock}``)."""


class ViolationDetector(FindingDetector):
    """Finds overlapping holds and fencing tokens going backwards (a store detector)."""

    def __init__(self, findings: FindingStore, config: AgentConfig) -> None:
        super().__init__(findings, config)
        self._skew_ns = int(config.clock_skew * _NS)
        self._max_history = config.limits.max_token_history
        self._tokens: dict[str, list[TokenEntry]] = {}
        """Lock key -> recent fencing tokens; survives the lock going idle (LRU-bounded)."""
        self.counters = ViolationCounters()

    def subscribe(self, store: LockStore) -> None:
        """Subscribe to new holds, assertions and lost locks."""
        store.subscribe(HoldAdded, self._added)
        store.subscribe(HoldAsserted, lambda c: self._check_overlap(c.hold))
        store.subscribe(LockLost, self._lost)

    def _lost(self, c: LockLost) -> None:
        if c.hold is not None:
            self._check_overlap(c.hold)

    def _added(self, c: HoldAdded) -> None:
        h = c.hold
        if h.token is None:
            return
        key = h.lock.key
        tokens = self._tokens
        history = tokens.pop(key, None)  # re-inserted: most recent last
        if history is None:
            history = []
            if len(tokens) >= self._max_history:
                del tokens[next(iter(tokens))]
        tokens[key] = history
        earlier = token_went_backwards(history, h.since_ns, h.token, actor_ref(h.actor))
        if earlier is not None:
            e_since, e_token, e_info, e_id, e_name = earlier
            e_actor: ActorRef = (e_info, e_id, e_name)
            other = {**actor_ref_json(e_actor), "since": rfc3339(e_since), "token": e_token}
            self._violation(
                FENCING_TOKEN_BACKWARDS,
                h,
                other,
                [h.actor.key, str(h.since_ns), str(h.token)],
                f"fencing token {h.token} of {h.actor.label} is lower than token "
                f"{e_token} of {actor_label(*e_actor)} acquired before it",
            )

    def _check_overlap(self, h: Hold) -> None:
        """A violation if another actor's conflicting hold overlaps ``h`` on evidence."""
        lock = h.lock
        if h.mode == SEMAPHORE or (h.mode == READ and lock.exclusive_holds == 0):
            return  # nothing conflicts (and readers of a busy read lock cost nothing here)
        for other in lock.holds:
            if other is h or not conflicting(h, other):
                continue
            overlap = overlap_ns(h, other)
            if overlap > self._skew_ns:
                a, b = sorted((h, other), key=lambda x: (x.since_ns, x.actor.key))
                self._violation(
                    OVERLAPPING_HOLDS,
                    b,
                    hold_json(a),
                    [a.actor.key, str(a.since_ns), b.actor.key, str(b.since_ns)],
                    f"{a.actor.label} and {b.actor.label} both held it "
                    f"(overlap {overlap / _NS:.3f}s)",
                )

    def _violation(
        self, reason: str, h: Hold, other: dict[str, Any], id_parts: list[str], detail: str
    ) -> None:
        now = self.store.now_ns
        f = violation_finding(
            reason,
            h.lock,
            h,
            other,
            id_parts=id_parts,
            now_ns=now,
            ttl_ns=self._ttl_ns,
            detail=detail,
        )
        if self._findings.add(f):
            label = self.store.label(h.lock.template)
            self.counters.violations[label] = self.counters.violations.get(label, 0) + 1
            self._findings.expire_later(f.id, now + self._ttl_ns)


def overlap_ns(a: Hold, b: Hold) -> int:
    """How long both holds were, on evidence, held at once (<= 0: not at all)."""
    return min(a.asserted_ns, b.asserted_ns) - max(a.since_ns, b.since_ns)


ActorRef = tuple[ProcessInfo, str, str | None]
"""An actor as plain values, ``(process info, actor id, name)``, for records that outlive
it (see :func:`actor_ref_json`)."""


def actor_ref(actor: Actor) -> ActorRef:
    """The :data:`ActorRef` of ``actor``."""
    return (actor.process.info, actor.actor_id, actor.name)


def actor_ref_json(ref: ActorRef) -> dict[str, Any]:
    """:func:`actor_json` of the actor an :data:`ActorRef` was taken from."""
    info, actor_id, name = ref
    return actor_fields(actor_label(info, actor_id, name), actor_id, info)


TokenEntry = tuple[int, int, ProcessInfo, str, str | None]
"""``(since, token, *actor ref)``: one hold in a lock's fencing-token history."""


def token_went_backwards(
    history: list[TokenEntry], since_ns: int, token: int, actor: ActorRef
) -> TokenEntry | None:
    """Record a hold's fencing token in a lock's short ``(since, token, *actor)`` history
    (newest few, by ``since``); returns the earlier hold with a higher token, if any."""
    worse = None
    for entry in history:
        if entry[0] < since_ns and entry[1] > token and (worse is None or entry[1] > worse[1]):
            worse = entry
    history.append((since_ns, token, *actor))
    if len(history) > 1:
        history.sort(key=lambda e: e[0])
        del history[:-_HISTORY]
    return worse


def hold_json(h: Hold) -> dict[str, Any]:
    """Who holds: the API's actor fields for one hold."""
    return {
        **actor_json(h.actor),
        "since": rfc3339(h.since_ns),
        "token": h.token,
        "mode": h.mode,
    }


def violation_finding(
    reason: str,
    lock: Lock,
    hold: Hold,
    other: dict[str, Any],
    *,
    id_parts: list[str],
    now_ns: int,
    ttl_ns: int,
    detail: str,
) -> Finding:
    """A one-shot violation finding (active for ``ttl_ns``)."""
    return lock_finding(
        VIOLATION,
        lock,
        reason,
        id_prefix="viol",
        id_parts=id_parts,
        text=f"{lock.name} ({lock.system}): {detail}",
        fields={**hold_json(hold), "reason": reason, "other": other, "detail": detail},
        service=hold.actor.process.info.service,
        now_ns=now_ns,
        expires_at_ns=now_ns + ttl_ns,
    )
