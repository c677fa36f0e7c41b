"""Stale holders: held too long, orphaned by a dead process, or held past the lease.

The three kinds of SPEC's "Detection semantics" become findings with ``reason``:

* ``max_hold`` - the holder still reports the hold (in a heartbeat or event sent) more
  than ``max_hold`` seconds after it began (per-template override);
* ``orphaned`` - the holder's process stopped heartbeating while it held the lock;
* ``lease_expired`` - the holder still reported the hold ``lease_grace`` after its lease
  ended, or told us it lost the lock (``lockscope.lock.lost``).

Every check runs when a hold is asserted (so a hold whose release event was lost cannot
raise one: its holder no longer asserts it), never by scanning all holds.
"""

from __future__ import annotations

from typing import Any, Final

from lockscope.agent.findings import ALERT_NAMES, STALE_HOLDER, Finding, rfc3339, stable_id
from lockscope.agent.graph import Actor, Hold, Lock

__all__ = ["LEASE_EXPIRED", "MAX_HOLD", "ORPHANED", "REASONS", "stale_finding"]

MAX_HOLD: Final = "max_hold"
ORPHANED: Final = "orphaned"
LEASE_EXPIRED: Final = "lease_expired"
REASONS: Final = (MAX_HOLD, ORPHANED, LEASE_EXPIRED)


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
    info = actor.process.info
    fid = stable_id("stale", [reason, lock.key, actor.key, str(since_ns), id_extra])
    data: dict[str, Any] = {
        "lock": lock.name,
        "lock_key": lock.key,
        "system": lock.system,
        "namespace": lock.namespace,
        "template": lock.template,
        "actor": actor.label,
        "actor_id": actor.actor_id,
        "service": info.service,
        "host": info.host,
        "pid": info.pid,
        "instance": info.instance,
        "reason": reason,
        "since": rfc3339(since_ns),
        "mode": hold.mode if hold is not None else None,
        "expires_at": rfc3339(hold.expires_at_ns) if hold is not None else None,
        "token": hold.token if hold is not None else None,
        "detail": detail,
    }
    labels = {
        "alertname": ALERT_NAMES[STALE_HOLDER],
        "kind": STALE_HOLDER,
        "id": fid,
        "lock": lock.template,
        "system": lock.system,
        "service": info.service,
        "reason": reason,
        "severity": "warning",
    }
    text = f"{actor.label} holds {lock.name} ({lock.system}) since {rfc3339(since_ns)}: {reason}"
    if detail:
        text += f" ({detail})"
    return Finding(
        STALE_HOLDER,
        fid,
        labels,
        text,
        data,
        detected_at_ns=now_ns,
        expires_at_ns=None if expires_in_ns is None else now_ns + expires_in_ns,
    )
