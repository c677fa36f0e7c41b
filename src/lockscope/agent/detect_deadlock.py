"""Deadlock detection: incremental cycle search, graph reduction, confirmation, resolution.

The store tells the detector which actors changed during an event (its changes become
:meth:`touched` calls), then calls :meth:`flush`.  For each changed actor that someone may
wait for, a depth-first search from it looks for a path back to it (so an edge insertion
costs the path explored, not the graph).  Only when that finds a cycle - or reaches an
actor already known to be stuck - does the detector run graph reduction over the reachable
part, which settles semaphores (a cycle is necessary, not sufficient) and yields the
deadlocked groups.  Each candidate is then
confirmed against the current state (after ``confirm_after``), and every deadlock whose
participants or dependencies change is re-checked, so it resolves as soon as any
participant's wait ends or its process dies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockscope.agent.findings import (
    DEADLOCK,
    Finding,
    FindingStore,
    actor_json,
    rfc3339,
    stable_id,
)
from lockscope.agent.graph import (
    HOLD_EDGE,
    Actor,
    ExploreLimit,
    Reduction,
    find_cycle,
    has_predecessors,
    reduce,
    upstream,
)
from lockscope.agent.store_changes import (
    ActorRemoved,
    HoldAdded,
    HoldDropped,
    ProcessDied,
    ProcessRevived,
    SnapshotApplied,
    WaitAdded,
    WaitChanged,
    WaitDropped,
)

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["DeadlockCounters", "DeadlockDetector", "deadlock_id"]

_MAX_LISTED = 50
"""A participant's holds listed in a finding (an actor may hold thousands)."""


def deadlock_id(members: Iterable[Actor]) -> str:
    """Stable id of a deadlock: a hash of its participants and the locks they wait for."""
    parts = []
    for m in members:
        parts.append("a:" + m.key)
        if m.wait is not None:
            parts.append("l:" + m.wait.lock.key)
    return stable_id("dl", parts)


@dataclass(slots=True, eq=False)
class _Active:
    members: frozenset[Actor]
    waits: dict[Actor, tuple[str, int]]
    support: set[Actor]
    finding: Finding


@dataclass(slots=True)
class DeadlockCounters:
    """Counters the metrics exporter reads."""

    detected_total: int = 0
    """Deadlocks reported (``lockscope_deadlocks_detected_total``)."""
    candidates_rejected_total: int = 0
    """Candidates that failed confirmation against current state (false positives)."""
    searches_total: int = 0
    """Cycle searches run (actors that someone may wait for and changed)."""
    explore_limit_hits: int = 0
    resolved_total: dict[str, int] = field(default_factory=dict)


class DeadlockDetector:
    """Finds, confirms and resolves deadlocks in the live wait-for graph."""

    def __init__(
        self,
        store: FindingStore,
        *,
        budget: int,
        confirm_after_ns: int,
        evidence_timeout_ns: int = 2_500_000_000,
        on_limit: Callable[[str], None] | None = None,
        semaphores_waited: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._budget = budget
        self._wait_outcomes: dict[tuple[str, str, int], str] = {}
        """(actor key, lock key, since) -> how a wait ended, when the store was told."""
        self._confirm_after_ns = confirm_after_ns
        self._evidence_timeout_ns = evidence_timeout_ns
        self._semaphores_waited = semaphores_waited
        self._on_limit = on_limit or (lambda _name: None)
        self._active: dict[str, _Active] = {}
        self._index: dict[Actor, set[str]] = {}
        """Actor -> ids of active deadlocks it participates in or that depend on it."""
        self._pending: dict[str, tuple[frozenset[Actor], int]] = {}
        """Candidates waiting for ``confirm_after`` or fresh evidence:
        id -> (members, first seen)."""
        self._changed: dict[Actor, None] = {}
        self._dirty: set[str] = set()
        self._snapshot = False
        self.counters = DeadlockCounters()

    # -- input from the store -------------------------------------------------------------
    def attach(self, store: LockStore) -> None:
        """Subscribe to every change of an actor's wait or holds and of process liveness;
        count exploration limits with the store's limits."""
        self._on_limit = store.limit_hit
        self._semaphores_waited = lambda: store.semaphore_wait_count > 0
        store.subscribe(HoldAdded, self._hold_changed)
        store.subscribe(HoldDropped, self._hold_changed)
        store.subscribe(WaitAdded, self._wait_changed)
        store.subscribe(WaitChanged, self._wait_changed)
        store.subscribe(WaitDropped, self._wait_changed)
        store.subscribe(ProcessDied, self._process_changed)
        store.subscribe(ProcessRevived, self._process_changed)
        store.subscribe(ActorRemoved, lambda c: self.forget(c.actor))
        store.subscribe(SnapshotApplied, self._snapshot_applied)

    def _hold_changed(self, c: HoldAdded | HoldDropped) -> None:
        self.touched(c.hold.actor)

    def _wait_changed(self, c: WaitAdded | WaitChanged | WaitDropped) -> None:
        if isinstance(c, WaitDropped) and c.outcome is not None:
            # How the wait ended resolves its deadlock with that reason (a database that
            # aborted its victim: "deadlock_victim").  Rare, so a small bounded map.
            w = c.wait
            if len(self._wait_outcomes) >= 1_000:
                self._wait_outcomes.clear()
            self._wait_outcomes[(w.actor.key, w.lock.key, w.since_ns)] = c.outcome
        self.touched(c.wait.actor)

    def _process_changed(self, c: ProcessDied | ProcessRevived) -> None:
        for actor in c.process.actors.values():
            self.touched(actor)

    def _snapshot_applied(self, _c: SnapshotApplied) -> None:
        self._snapshot = True  # fresh evidence may confirm a pending candidate (flush)

    def touched(self, actor: Actor) -> None:
        """The actor's wait or holds changed (call for every change, before :meth:`flush`)."""
        self._changed[actor] = None
        ids = self._index.get(actor)
        if ids:
            self._dirty.update(ids)

    def flush(self, now_ns: int) -> None:
        """Re-check affected deadlocks, then search from every changed actor (and, after a
        heartbeat snapshot, re-check pending candidates)."""
        changed, self._changed = self._changed, {}
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for did in sorted(dirty):
                self._revalidate(did, now_ns)
        for actor in changed:
            self._search(actor, now_ns)
        if self._snapshot:
            self._snapshot = False
            self.tick(now_ns)

    def tick(self, now_ns: int) -> None:
        """Re-check pending candidates (call periodically and after each heartbeat)."""
        if not self._pending:
            return
        for did, (members, first_seen) in list(self._pending.items()):
            if did in self._active:
                self._pending.pop(did, None)
                continue
            try:
                red = reduce(members, self._budget)
            except ExploreLimit:
                self._limit()
                continue
            if not self._confirmed(members, red):
                self._pending.pop(did, None)
                if not any(members <= group for group in red.deadlocked_sets()):
                    self.counters.candidates_rejected_total += 1
                self._register(red, now_ns)  # whatever it turned into
                continue
            self._decide(did, members, red, now_ns, first_seen)

    # -- queries ----------------------------------------------------------------------------
    @property
    def active_count(self) -> int:
        """Deadlocks currently active (``lockscope_deadlocks_active``)."""
        return len(self._active)

    def active_members(self) -> list[frozenset[Actor]]:
        """Participants of each active deadlock."""
        return [a.members for a in self._active.values()]

    # -- internals ----------------------------------------------------------------------------
    def _limit(self) -> None:
        self.counters.explore_limit_hits += 1
        self._on_limit("max_explore")

    def _search(self, actor: Actor, now_ns: int) -> None:
        # A cycle through `actor` needs an edge into it and one out of it.
        if actor.wait is None or not actor.process.alive or not has_predecessors(actor):
            return
        self.counters.searches_total += 1
        try:
            path, hit = find_cycle(actor, self._budget, self._index)
            # Without a cycle through `actor`, only a semaphore knot upstream of it can be
            # new (when it got stuck behind a known deadlock); with no semaphore waits at all
            # there is nothing to do.
            if path is None and not (hit and self._semaphores_waited()):
                return
            red = reduce([actor], self._budget)
            if actor in red.residual and self._semaphores_waited():
                # `actor` is stuck now; semaphore waiters upstream of it may be stuck too.
                seeds = upstream([actor], self._budget)
                if len(seeds) > 1:
                    red = reduce(seeds, self._budget)
        except ExploreLimit:
            self._limit()
            return
        self._register(red, now_ns)

    def _register(self, red: Reduction, now_ns: int) -> None:
        for group in red.deadlocked_sets():
            members = frozenset(group)
            did = deadlock_id(members)
            active = self._active.get(did)
            if active is not None:
                self._set_support(did, active, red.downstream(members))
                continue
            self._decide(did, members, red, now_ns, self._pending.get(did, (members, now_ns))[1])

    def _decide(
        self, did: str, members: frozenset[Actor], red: Reduction, now_ns: int, first_seen: int
    ) -> None:
        """Report, keep pending, or reject (count a false candidate) one candidate."""
        if not self._confirmed(members, red):
            self._pending.pop(did, None)
            self.counters.candidates_rejected_total += 1
            return
        age = now_ns - first_seen
        if age < self._confirm_after_ns or (
            age < self._evidence_timeout_ns and not self._fresh(members, red)
        ):
            self._pending.setdefault(did, (members, first_seen))
            return
        self._pending.pop(did, None)
        self._report(members, red, now_ns)

    def _confirmed(self, members: frozenset[Actor], red: Reduction) -> bool:
        """Every participant alive and still waiting, every one of them still stuck, and
        the group still strongly connected by live edges."""
        for m in members:
            if not m.process.alive or m.wait is None or m not in red.residual:
                return False
            # every participant must still have an edge to another participant (or itself)
            if not any(t in members for t, _l, _k in red.edges.get(m, ())):
                return False
        return any(group == members for group in red.deadlocked_sets())

    @staticmethod
    def _fresh(members: frozenset[Actor], red: Reduction) -> bool:
        """Whether the evidence shows the whole group stuck at one instant.

        Let t* be when the last participant began waiting.  Every participant's wait must
        have been asserted (event or heartbeat) at or after t*, and every hold the group's
        edges rest on too - or the waiter saw that holder named by the lock server
        (``holder_owner``/``holder_token``) when it reported at or after t*.  Then at t*
        every wait and every hold of the cycle existed at once: a deadlock, which nothing
        but a timeout dissolves.  Evidence older than t* may describe a hold already
        released, its end event lost or still in flight; the next heartbeats settle it
        (``evidence_timeout`` bounds the wait, for senders that never heartbeat).
        """
        t_star = 0
        for m in members:
            w = m.wait
            assert w is not None
            t_star = max(t_star, w.since_ns)
        for m in members:
            w = m.wait
            assert w is not None
            if w.asserted_ns < t_star:
                return False
            for target, lock, kind in red.edges.get(m, ()):
                if target not in members or kind != HOLD_EDGE:
                    continue  # a queued target is a participant: its wait is checked
                h = target.holds.get(lock.key)
                if h is None or h.asserted_ns >= t_star:
                    continue
                named = (w.holder_owner is not None and w.holder_owner == h.owner) or (
                    w.holder_token is not None and w.holder_token == h.token
                )
                if not (named and w.probed_ns >= t_star):
                    return False
        return True

    def _report(self, members: frozenset[Actor], red: Reduction, now_ns: int) -> None:
        did = deadlock_id(members)
        # A deadlock that grew (a new participant joined the cycle) supersedes the old one.
        for other_id in {i for m in members for i in self._index.get(m, ())}:
            other = self._active.get(other_id)
            if other is not None and other.members & members:
                self._resolve(other_id, now_ns, "superseded")
        finding = _finding(did, members, red, now_ns)
        if not self._store.add(finding):
            existing = self._store.active(did)
            if existing is None:
                return  # store full of active findings: counted by the store
            finding = existing
        active = _Active(
            members=members,
            waits={m: (m.wait.lock.key, m.wait.since_ns) for m in members if m.wait is not None},
            support=set(),
            finding=finding,
        )
        self._active[did] = active
        self._set_support(did, active, red.downstream(members))
        self.counters.detected_total += 1

    def _set_support(self, did: str, active: _Active, support: set[Actor]) -> None:
        for a in active.support - support:
            ids = self._index.get(a)
            if ids is not None:
                ids.discard(did)
                if not ids:
                    del self._index[a]
        for a in support:
            self._index.setdefault(a, set()).add(did)
        active.support = support

    def _revalidate(self, did: str, now_ns: int) -> None:
        active = self._active.get(did)
        if active is None:
            return
        reason = self._broken(active)
        red: Reduction | None = None
        if reason is None:
            try:
                red = reduce(active.members, self._budget)
            except ExploreLimit:
                self._limit()
                return
            groups = red.deadlocked_sets()
            if any(group == active.members for group in groups):
                self._set_support(did, active, red.downstream(active.members))
                return
            grew = any(active.members < group for group in groups)
            reason = "superseded" if grew else "released"
        self._resolve(did, now_ns, reason)
        # What is left of it may still be deadlocked (a smaller cycle inside the old group).
        try:
            remaining = [m for m in active.members if m.wait is not None and m.process.alive]
            if remaining:
                self._register(reduce(remaining, self._budget), now_ns)
        except ExploreLimit:
            self._limit()

    def _broken(self, active: _Active) -> str | None:
        for m in active.members:
            if not m.process.alive:
                return "process_dead"
        for m, (lock_key, since) in active.waits.items():
            w = m.wait
            if w is None or w.lock.key != lock_key or w.since_ns != since:
                return self._wait_outcomes.pop((m.key, lock_key, since), "wait_ended")
        return None

    def _resolve(self, did: str, now_ns: int, reason: str) -> None:
        active = self._active.pop(did, None)
        if active is None:
            return
        self._set_support(did, active, set())
        self._store.resolve(did, now_ns, reason)
        self.counters.resolved_total[reason] = self.counters.resolved_total.get(reason, 0) + 1

    def forget(self, actor: Actor) -> None:
        """The actor record is being dropped: nothing may keep it alive here."""
        self._changed.pop(actor, None)


def _code(code: tuple[str | None, int | None, str | None] | None) -> dict[str, Any] | None:
    if code is None:
        return None
    return {"file": code[0], "line": code[1], "function": code[2]}


def _finding(did: str, members: frozenset[Actor], red: Reduction, now_ns: int) -> Finding:
    ordered = sorted(members, key=lambda m: (m.wait.since_ns if m.wait else 0, m.key))
    victim = max(ordered, key=lambda m: (m.wait.since_ns if m.wait else 0, m.key))
    locks: dict[str, Any] = {}
    participants = []
    lines = []
    for m in ordered:
        w = m.wait
        assert w is not None
        targets = sorted({t.label for t, _l, _k in red.edges.get(m, ()) if t in members})
        for t, lock, _k in red.edges.get(m, ()):
            if t in members:
                locks[lock.key] = lock
        participants.append(
            {
                **actor_json(m),
                "actor_name": m.name,
                "waits_for": w.lock.name,
                "waits_for_key": w.lock.key,
                "waits_for_system": w.lock.system,
                "mode": w.mode,
                "waits_for_actors": targets,
                "holds": sorted(h.lock.name for h in m.holds.values())[:_MAX_LISTED],
                "hold_keys": sorted(m.holds)[:_MAX_LISTED],
                "waiting_since": rfc3339(w.since_ns),
                "code": _code(w.code),
            }
        )
        lines.append(f"{m.label} waits for {w.lock.name} held by {', '.join(targets)}")
    lock_list = sorted(locks.values(), key=lambda lk: lk.key)
    templates = sorted({lk.template for lk in lock_list})
    data = {
        "locks": [lk.name for lk in lock_list],
        "lock_keys": [lk.key for lk in lock_list],
        "lock_templates": [lk.template for lk in lock_list],
        "systems": sorted({lk.system for lk in lock_list}),
        "participants": participants,
        "victim": victim.label,
    }
    text = f"deadlock of {len(members)}: " + "; ".join(lines)
    return Finding(
        DEADLOCK,
        did,
        text,
        data,
        detected_at_ns=now_ns,
        templates=tuple(templates),
        systems=tuple(data["systems"]),
        services=tuple(sorted({m.process.info.service for m in members})),
    )
