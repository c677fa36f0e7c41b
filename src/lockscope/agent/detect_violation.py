"""Mutual-exclusion violations: overlapping holds of an exclusive lock, fencing tokens
going backwards.

Overlap is judged on evidence only: a hold is known to be held from its ``since`` to the
newest time its holder asserted it (hold event, extension, heartbeat).  Two holders of
one exclusive (or write/read-vs-write) lock whose known intervals overlap by more than the
tolerated clock skew both believed they held it at once - whatever the lock server thinks.
A hold whose release event was lost is never asserted again, so it cannot cause one.
"""

from __future__ import annotations

from typing import Any, Final

from lockscope.agent.findings import ALERT_NAMES, VIOLATION, Finding, rfc3339, stable_id
from lockscope.agent.graph import READ, SEMAPHORE, Hold, Lock

__all__ = [
    "FENCING_TOKEN_BACKWARDS",
    "OVERLAPPING_HOLDS",
    "TokenHistory",
    "overlap_ns",
    "violation_finding",
]

OVERLAPPING_HOLDS: Final = "overlapping_holds"
FENCING_TOKEN_BACKWARDS: Final = "fencing_token_backwards"

_HISTORY = 8


def overlap_ns(a: Hold, b: Hold) -> int:
    """How long both holds were, on evidence, held at once (<= 0: not at all)."""
    return min(a.asserted_ns, b.asserted_ns) - max(a.since_ns, b.since_ns)


def conflicting(a: Hold, b: Hold) -> bool:
    """Whether two holds of one lock by different actors must never overlap."""
    if a.mode == SEMAPHORE or b.mode == SEMAPHORE:
        return False
    return not (a.mode == READ and b.mode == READ)


class TokenHistory:
    """The newest few ``(since, token, who)`` of one lock, to spot a token going backwards."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, dict[str, Any]]] = []

    def check_and_add(
        self, since_ns: int, token: int, who: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Record a hold's token; returns the earlier hold it went backwards from, if any."""
        worse = None
        for s, t, w in self.entries:
            if s < since_ns and t > token and (worse is None or t > worse[1]):
                worse = (s, t, w)
        self.entries.append((since_ns, token, who))
        self.entries.sort(key=lambda e: e[0])
        del self.entries[:-_HISTORY]
        if worse is None:
            return None
        return {**worse[2], "since": rfc3339(worse[0]), "token": worse[1]}


def hold_json(h: Hold) -> dict[str, Any]:
    """Who holds: the API's actor fields for one hold."""
    info = h.actor.process.info
    return {
        "actor": h.actor.label,
        "actor_id": h.actor.actor_id,
        "service": info.service,
        "host": info.host,
        "pid": info.pid,
        "instance": info.instance,
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
    fid = stable_id("viol", [reason, lock.key, *id_parts])
    data: dict[str, Any] = {
        "lock": lock.name,
        "lock_key": lock.key,
        "system": lock.system,
        "namespace": lock.namespace,
        "template": lock.template,
        **hold_json(hold),
        "reason": reason,
        "other": other,
        "detail": detail,
    }
    labels = {
        "alertname": ALERT_NAMES[VIOLATION],
        "kind": VIOLATION,
        "id": fid,
        "lock": lock.template,
        "system": lock.system,
        "service": hold.actor.process.info.service,
        "reason": reason,
        "severity": "critical",
    }
    text = f"{lock.name} ({lock.system}): {detail}"
    return Finding(
        VIOLATION, fid, labels, text, data, detected_at_ns=now_ns, expires_at_ns=now_ns + ttl_ns
    )
