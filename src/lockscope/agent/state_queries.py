"""The read side of :class:`~lockscope.agent.state.AgentState`: sizes, metric gauges,
findings and the JSON documents of SPEC's "Agent JSON API" (times RFC 3339 UTC).

A mixin, so the state module keeps only how events change the state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from lockscope.agent.detect_deadlock import DeadlockDetector
from lockscope.agent.findings import (
    DEADLOCK,
    ORDER_INVERSION,
    STALE_HOLDER,
    VIOLATION,
    Finding,
    FindingStore,
    rfc3339,
)
from lockscope.agent.graph import (
    Actor,
    Lock,
    Process,
    actor_label,
    queue_order,
    to_networkx,
    waits_for,
)
from lockscope.agent.model import ProcessInfo

__all__ = ["StateQueries"]


class StateQueries:
    """Queries over the state (mixed into ``AgentState``)."""

    _procs: dict[str, Process]
    _locks: dict[str, Lock]
    _nholds: int
    _nwaits: int
    _waiters: dict[str, int]
    _timeline: deque[tuple[int, str, str, ProcessInfo, str, str | None, str | None, str | None]]
    store: FindingStore
    deadlocks: DeadlockDetector
    counters: Any

    @property
    def hold_count(self) -> int:
        """Holds tracked now."""
        return self._nholds

    @property
    def wait_count(self) -> int:
        """Waits tracked now."""
        return self._nwaits

    @property
    def lock_count(self) -> int:
        """Locks tracked now."""
        return len(self._locks)

    def reporting_processes(self) -> int:
        """Processes alive now (``lockscope_agent_reporting_processes``)."""
        return sum(1 for p in self._procs.values() if p.alive)

    def waiters_by_lock(self) -> dict[str, int]:
        """Current waiters per lock template (``lockscope_lock_waiters{lock}``)."""
        return {k: v for k, v in self._waiters.items() if v}

    def stale_holders_by_reason(self) -> dict[str, int]:
        """Active stale-holder findings per reason (``lockscope_stale_holders{reason}``)."""
        out = {"max_hold": 0, "orphaned": 0, "lease_expired": 0}
        for f in self.store.of_kind(STALE_HOLDER):
            if f.active:
                out[f.labels["reason"]] = out.get(f.labels["reason"], 0) + 1
        return out

    def active_counts(self) -> dict[str, int]:
        """Active findings per kind (``lockscope_deadlocks_active``,
        ``lockscope_lock_order_inversions``...)."""
        return dict(self.store.active_count)

    def findings(self, active_only: bool = False) -> Iterator[Finding]:
        """Every kept finding (for the Alertmanager exporter and ``lockscope status``)."""
        for f in self.store:
            if f.active or not active_only:
                yield f

    def actors(self) -> Iterator[Actor]:
        """Every actor with a reported hold or wait."""
        for proc in self._procs.values():
            yield from proc.actors.values()

    def locks(self) -> Iterator[Lock]:
        """Every lock with a reported hold or wait."""
        return iter(self._locks.values())

    def find_lock(self, name: str) -> Lock | None:
        """A lock by key (``system:namespace/name``) or, failing that, by name."""
        lock = self._locks.get(name)
        if lock is not None:
            return lock
        for lock in self._locks.values():
            if lock.name == name:
                return lock
        return None

    def to_networkx(self) -> Any:
        """The live graph as a ``networkx.MultiDiGraph`` (see :func:`graph.to_networkx`)."""
        return to_networkx(list(self.actors()), list(self._locks.values()))

    # -- JSON API (SPEC "Agent JSON API") -----------------------------------------------------
    def _kind_json(self, kind: str, key: str, active_only: bool) -> dict[str, Any]:
        items = [f.to_json() for f in self.store.of_kind(kind) if f.active or not active_only]
        return {key: items}

    def api_deadlocks(self, active_only: bool = False) -> dict[str, Any]:
        """``{"deadlocks": [...]}``, active first, newest first."""
        return self._kind_json(DEADLOCK, "deadlocks", active_only)

    def api_stale_holders(self, active_only: bool = False) -> dict[str, Any]:
        """``{"stale_holders": [...]}``."""
        return self._kind_json(STALE_HOLDER, "stale_holders", active_only)

    def api_violations(self, active_only: bool = False) -> dict[str, Any]:
        """``{"violations": [...]}``."""
        return self._kind_json(VIOLATION, "violations", active_only)

    def api_order_inversions(self, active_only: bool = False) -> dict[str, Any]:
        """``{"order_inversions": [...]}``."""
        return self._kind_json(ORDER_INVERSION, "order_inversions", active_only)

    def _actor_json(self, actor: Actor) -> dict[str, Any]:
        info = actor.process.info
        return {
            "actor": actor.label,
            "actor_id": actor.actor_id,
            "actor_name": actor.name,
            "service": info.service,
            "host": info.host,
            "pid": info.pid,
            "instance": info.instance,
            "alive": actor.process.alive,
        }

    def _lock_summary(self, lock: Lock) -> dict[str, Any]:
        oldest_hold = min((h.since_ns for h in lock.holds), default=None)
        oldest_wait = min((w.since_ns for w in lock.waits), default=None)
        return {
            "name": lock.name,
            "key": lock.key,
            "system": lock.system,
            "namespace": lock.namespace,
            "template": lock.template,
            "kind": lock.kind,
            "fifo": lock.fifo,
            "reentrant": lock.reentrant,
            "max_leases": lock.max_leases,
            "holder_count": len(lock.holds),
            "waiter_count": len(lock.waits),
            "held_since": rfc3339(oldest_hold),
            "oldest_wait_since": rfc3339(oldest_wait),
        }

    def api_locks(self, limit: int = 1000) -> dict[str, Any]:
        """``{"locks": [...], "total": n}``: the ``limit`` locks with most waiters first."""
        locks = sorted(self._locks.values(), key=lambda lk: (-len(lk.waits), lk.key))[:limit]
        return {"locks": [self._lock_summary(lk) for lk in locks], "total": len(self._locks)}

    def api_lock(self, name: str) -> dict[str, Any] | None:
        """One lock (by key or name): summary plus ``holders``, ``waiters`` (queue order)
        and ``timeline`` (recent events, oldest first); None if not tracked."""
        lock = self.find_lock(name)
        if lock is None:
            return None
        out = self._lock_summary(lock)
        out["holders"] = [
            {
                **self._actor_json(h.actor),
                "mode": h.mode,
                "since": rfc3339(h.since_ns),
                "expires_at": rfc3339(h.expires_at_ns),
                "token": h.token,
                "owner": h.owner,
            }
            for h in sorted(lock.holds, key=lambda h: h.since_ns)
        ]
        waits = queue_order(lock.waits)
        out["waiters"] = [
            {
                **self._actor_json(w.actor),
                "mode": w.mode,
                "since": rfc3339(w.since_ns),
                "ticket": w.ticket,
                "waits_for": sorted({t.label for t, _l, _k in waits_for(w.actor)}),
            }
            for w in waits
        ]
        out["timeline"] = [
            {
                "time": rfc3339(t),
                "event": what,
                "actor": actor_label(info, actor_id, name),
                "mode": mode,
                "detail": detail,
            }
            for t, key, what, info, actor_id, name, mode, detail in self._timeline
            if key == lock.key
        ]
        return out

    def api_graph(self, include_idle: bool = False) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...]}``: locks with waiters, their holders and
        waiters, and the derived ``waits_for`` edges (``include_idle``: every lock)."""
        locks = [lk for lk in self._locks.values() if include_idle or lk.waits]
        actors: dict[Actor, None] = {}
        for lock in locks:
            actors.update(dict.fromkeys(h.actor for h in lock.holds))
            actors.update(dict.fromkeys(w.actor for w in lock.waits))
        in_deadlock = {m for members in self.deadlocks.active_members() for m in members}
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []
        for lock in locks:
            nodes.append(
                {
                    "id": lock.key,
                    "type": "lock",
                    "name": lock.name,
                    "system": lock.system,
                    "template": lock.template,
                    "kind": lock.kind,
                }
            )
            for h in lock.holds:
                edges.append(
                    {"source": lock.key, "target": h.actor.key, "type": "held_by", "mode": h.mode}
                )
            for w in lock.waits:
                edges.append(
                    {"source": w.actor.key, "target": lock.key, "type": "waits", "mode": w.mode}
                )
        for actor in actors:
            nodes.append(
                {
                    "id": actor.key,
                    "type": "actor",
                    **self._actor_json(actor),
                    "deadlocked": actor in in_deadlock,
                }
            )
            for target, lock, kind in waits_for(actor):
                edges.append(
                    {
                        "source": actor.key,
                        "target": target.key,
                        "type": "waits_for",
                        "lock": lock.key,
                        "kind": kind,
                    }
                )
        return {"nodes": nodes, "edges": edges}

    def api_processes(self) -> dict[str, Any]:
        """``{"processes": [...]}`` with liveness and what each reports."""
        out = []
        for p in self._procs.values():
            info = p.info
            out.append(
                {
                    "instance": info.instance,
                    "service": info.service,
                    "host": info.host,
                    "pid": info.pid,
                    "alive": p.alive,
                    "last_seen": rfc3339(p.last_seen_ns),
                    "last_heartbeat": rfc3339(p.last_heartbeat_ns or None),
                    "heartbeat_interval": p.interval,
                    "dead_since": rfc3339(p.dead_since_ns),
                    "holds": sum(len(a.holds) for a in p.actors.values()),
                    "waits": sum(1 for a in p.actors.values() if a.wait is not None),
                    "dropped": p.dropped,
                    "schema_version": p.schema_version,
                }
            )
        out.sort(key=lambda d: (d["service"], d["host"], d["pid"]))
        return {"processes": out}

    def api_status(self) -> dict[str, Any]:
        """Sizes and counters at a glance (for ``/readyz`` details and debugging)."""
        return {
            "processes": len(self._procs),
            "reporting_processes": self.reporting_processes(),
            "locks": len(self._locks),
            "holds": self._nholds,
            "waits": self._nwaits,
            "findings": len(self.store),
            "active": self.active_counts(),
            "deadlock_candidates_rejected": self.deadlocks.counters.candidates_rejected_total,
            "limits_hit": dict(self.counters.limits_hit),
        }
