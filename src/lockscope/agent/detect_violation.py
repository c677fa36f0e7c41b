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
from lockscope.agent.graph import READ, SEMAPHORE, Actor, Hold, Lock, actor_label
from lockscope.agent.model import ProcessInfo

__all__ = [
    "FENCING_TOKEN_BACKWARDS",
    "OVERLAPPING_HOLDS",
    "ActorRef",
    "TokenEntry",
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


def overlap_ns(a: Hold, b: Hold) -> int:
    """How long both holds were, on evidence, held at once (<= 0: not at all)."""
    return min(a.asserted_ns, b.asserted_ns) - max(a.since_ns, b.since_ns)


def conflicting(a: Hold, b: Hold) -> bool:
    """Whether two holds of one lock by different actors must never overlap."""
    if a.mode == SEMAPHORE or b.mode == SEMAPHORE:
        return False
    return not (a.mode == READ and b.mode == READ)


ActorRef = tuple[ProcessInfo, str, str | None]
"""An actor as plain values, ``(process info, actor id, name)``, for records that outlive
it (see :func:`actor_ref_json`)."""


def actor_ref(actor: Actor) -> ActorRef:
    """The :data:`ActorRef` of ``actor``."""
    return (actor.process.info, actor.actor_id, actor.name)


def actor_ref_json(ref: ActorRef) -> dict[str, Any]:
    """:func:`actor_json` of the actor an :data:`ActorRef` was taken from."""
    info, actor_id, name = ref
    return {
        "actor": actor_label(info, actor_id, name),
        "actor_id": actor_id,
        "service": info.service,
        "host": info.host,
        "pid": info.pid,
        "instance": info.instance,
    }


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


def actor_json(actor: Actor) -> dict[str, Any]:
    """The API's actor fields."""
    info = actor.process.info
    return {
        "actor": actor.label,
        "actor_id": actor.actor_id,
        "service": info.service,
        "host": info.host,
        "pid": info.pid,
        "instance": info.instance,
    }


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
