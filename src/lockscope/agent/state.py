"""The agent's live state: processes, actors, locks, holds and waits, and the detectors.

:class:`AgentState` is pure (no I/O, no threads): the receiver calls :meth:`AgentState.apply`
for each decoded event and :meth:`AgentState.tick` about every 100 ms; the HTTP side reads
the ``api_*`` methods, :meth:`AgentState.findings` and the counters.  Call it from one
thread (the agent's event loop).

Healing (SPEC principle 3).  Events can be lost or arrive out of order, so:

* an ended hold or wait is remembered for ``tombstone_ttl`` (by actor, lock and ``since``):
  a late start event for it is ignored;
* an actor waits for one lock at a time: a newer wait replaces an older one, and a hold of
  the lock ends the wait that led to it;
* a start event older than the process's newest heartbeat is ignored unless that heartbeat
  listed the hold/wait;
* each heartbeat is the full truth about its process: every hold and wait it does not list
  and that was last asserted before it is removed; what it lists is (re)created.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.db_binding import bound_actor, bound_since, bound_wait_since
from lockscope.agent.detect_deadlock import DeadlockDetector
from lockscope.agent.detect_order import OrderGraph, OrderPair, inversion_finding
from lockscope.agent.detect_stale import LEASE_EXPIRED, MAX_HOLD, ORPHANED, stale_finding
from lockscope.agent.detect_violation import (
    FENCING_TOKEN_BACKWARDS,
    OVERLAPPING_HOLDS,
    ActorRef,
    TokenEntry,
    actor_ref,
    actor_ref_json,
    conflicting,
    hold_json,
    overlap_ns,
    token_went_backwards,
    violation_finding,
)
from lockscope.agent.findings import (
    Finding,
    FindingStore,
    rfc3339,
)
from lockscope.agent.graph import (
    EXCLUSIVE,
    READ,
    SEMAPHORE,
    Actor,
    Hold,
    Lock,
    Process,
    Wait,
    actor_label,
)
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.state_queries import StateQueries
from lockscope.naming import LockNameTemplater

__all__ = ["AgentState", "RejectedEvent", "StateCounters"]

OTHER_LABEL = "{other}"
_NS = 1_000_000_000


class RejectedEvent(ValueError):
    """The event cannot be applied; ``reason`` is the metric label (``invalid``, ``limit``,
    ``unknown_event``)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class StateCounters:
    """Monotonic counters for the metrics exporter (dicts are label value -> count)."""

    events_applied: dict[str, int] = field(default_factory=dict)
    """By event name."""
    events_ignored: dict[str, int] = field(default_factory=dict)
    """Valid events that changed nothing, by why: ``tombstoned`` (late start of an ended
    hold/wait), ``older_than_heartbeat``, ``superseded`` (older than what is known),
    ``stale_heartbeat`` (an older snapshot than the newest applied)."""
    heartbeat_entries_rejected: int = 0
    healed: dict[str, int] = field(default_factory=dict)
    """Holds/waits removed because a heartbeat no longer listed them (lost end events)."""
    limits_hit: dict[str, int] = field(default_factory=dict)
    """By limit name (``max_locks``, ``max_holds``, ...)."""
    violations: dict[str, int] = field(default_factory=dict)
    """By lock template (``lockscope_mutual_exclusion_violations_total{lock}``)."""
    locks_lost: dict[str, int] = field(default_factory=dict)
    """By lock template (``lockscope_locks_lost_total{lock}``)."""
    stale_holders_detected: dict[str, int] = field(default_factory=dict)
    """By reason."""
    inversions_detected: int = 0
    processes_presumed_dead: int = 0


def _inc(counter: dict[str, int], key: str, n: int = 1) -> None:
    counter[key] = counter.get(key, 0) + n


# -- attribute parsing --------------------------------------------------------------------
def _str(attrs: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    v = attrs.get(key)
    if v.__class__ is str:  # the common case first: these run ~10 times per event
        return v
    if v is None:
        return default
    if not isinstance(v, str):
        raise RejectedEvent(f"{key} must be a string, not {type(v).__name__}")
    return v


def _int(attrs: Mapping[str, Any], key: str) -> int | None:
    v = attrs.get(key)
    if v.__class__ is int:
        return v
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RejectedEvent(f"{key} must be an integer, not {type(v).__name__}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise RejectedEvent(f"{key} must be finite")
        return int(v)
    return v


def _float(attrs: Mapping[str, Any], key: str) -> float | None:
    v = attrs.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RejectedEvent(f"{key} must be a finite number, not {v!r}")
    return float(v)


def _bool(attrs: Mapping[str, Any], key: str) -> bool | None:
    v = attrs.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise RejectedEvent(f"{key} must be a boolean, not {type(v).__name__}")
    return v


def _code(attrs: Mapping[str, Any]) -> tuple[str | None, int | None, str | None] | None:
    file = _str(attrs, ev.ATTR_CODE_FILE)
    line = _int(attrs, ev.ATTR_CODE_LINE)
    func = _str(attrs, ev.ATTR_CODE_FUNCTION)
    if file is None and line is None and func is None:
        return None
    return (sys.intern(file) if file else None, line, sys.intern(func) if func else None)


def _mode(attrs: Mapping[str, Any]) -> str:
    mode = _str(attrs, ev.ATTR_LOCK_MODE, EXCLUSIVE)
    assert mode is not None
    if mode not in ev.MODES:
        raise RejectedEvent(
            f"{ev.ATTR_LOCK_MODE} must be one of {', '.join(ev.MODES)}, not {mode!r}"
        )
    return mode


class AgentState(StateQueries):
    """Locks, actors, processes, the wait-for graph and every detector (queries and JSON
    documents: :class:`~lockscope.agent.state_queries.StateQueries`)."""

    def __init__(
        self, config: AgentConfig | None = None, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.config = config = config or AgentConfig()
        self._clock = clock
        self._limits = config.limits
        self._templater = LockNameTemplater(config.template_rules)
        self._procs: dict[str, Process] = {}
        self._locks: dict[str, Lock] = {}
        self._nholds = 0
        self._nwaits = 0
        self._semaphore_waits = 0
        self._waiters: dict[str, int] = {}
        self._labels: set[str] = set()
        self._tombstones: OrderedDict[tuple[str, str, str, int], int] = OrderedDict()
        self._healed: dict[tuple[str, str, str, int], int] = {}
        """Tombstones left by a heartbeat that did not list the hold or wait -> that
        heartbeat's time: a newer heartbeat listing it again brings it back."""
        self._liveness: list[tuple[int, int, str]] = []
        self._timers: list[tuple[int, int, str, Any]] = []
        self._expiring: deque[tuple[int, str]] = deque()
        self._seq = itertools.count()
        # Both histories hold plain values (lock key, actor id...), not Lock and Actor
        # objects, so the actors and locks of ended holds are freed.
        self._timeline: deque[
            tuple[int, str, str, ProcessInfo, str, str | None, str | None, str | None]
        ] = deque(maxlen=self._limits.timeline_size)
        """(time, lock key, what, actor's process, actor id, actor name, mode, detail)."""
        self._sourced: dict[str, set[Actor]] = {}
        """Instance -> other processes' actors whose holds/waits it reported (bindings)."""
        self._tokens: dict[str, list[TokenEntry]] = {}
        """Lock key -> recent fencing tokens; survives the lock going idle (LRU-bounded)."""
        self.store = FindingStore(self._limits.max_findings)
        self.counters = StateCounters()
        self.on_process_forgotten: list[Callable[[str], None]] = []
        """Called with the ``service.instance.id`` of every process the state forgets
        (dead for ``dead_process_retention``), e.g. to drop its metric series."""
        self.deadlocks = DeadlockDetector(
            self.store,
            budget=self._limits.max_explore,
            confirm_after_ns=int(config.confirm_after * _NS),
            evidence_timeout_ns=int(config.evidence_timeout * _NS),
            on_limit=self._limit_hit,
            semaphores_waited=lambda: self._semaphore_waits > 0,
        )
        self.order = OrderGraph(self._limits.max_order_pairs, config.order_self_pairs)
        self._now = clock()
        self._handlers: dict[str, Callable[[Event, Process], None]] = {
            ev.EVENT_WAIT_START: self._on_wait_start,
            ev.EVENT_WAIT_END: self._on_wait_end,
            ev.EVENT_HOLD_START: self._on_hold_start,
            ev.EVENT_HOLD_END: self._on_hold_end,
            ev.EVENT_HOLD_EXTEND: self._on_hold_extend,
            ev.EVENT_LOCK_LOST: self._on_lock_lost,
            ev.EVENT_ORDER_PAIR: self._on_order_pair,
            ev.EVENT_HEARTBEAT: self._on_heartbeat,
        }

    # == input ==============================================================================
    def apply(self, event: Event, now_ns: int | None = None) -> None:
        """Apply one decoded event.  ``now_ns`` is the agent's receive time (default: now).

        Raises :class:`RejectedEvent` (a ``ValueError``) for an event that cannot be applied
        - unknown name, missing lock name or actor, wrong attribute types, a limit hit - and
        then changes nothing but the sending process's liveness.
        """
        handler = self._handlers.get(event.name)
        if handler is None:
            raise RejectedEvent(f"unknown event name {event.name!r}", "unknown_event")
        if isinstance(event.time_ns, bool) or not isinstance(event.time_ns, int):
            raise RejectedEvent("event time must be integer nanoseconds")
        now = self._clock() if now_ns is None else now_ns
        self._now = now
        proc = self._process(event.process, now)
        handler(event, proc)
        _inc(self.counters.events_applied, event.name)
        self.deadlocks.flush(now)
        if event.name == ev.EVENT_HEARTBEAT:
            self.deadlocks.tick(now)  # fresh evidence may confirm a pending candidate

    def tick(self, now_ns: int | None = None) -> None:
        """Time-driven work (call about every 100 ms): heartbeat liveness, orphaned holds
        whose lease ran out, forgetting dead processes, expiring one-shot findings and
        tombstones, confirming deadlock candidates."""
        now = self._clock() if now_ns is None else now_ns
        self._now = now
        liveness = self._liveness
        while liveness and liveness[0][0] <= now:
            wake, _, instance = heapq.heappop(liveness)
            proc = self._procs.get(instance)
            if proc is None or not proc.alive or proc.wake_ns != wake:
                continue
            if proc.deadline_ns > now:
                self._schedule_liveness(proc)
                continue
            self._process_died(proc, now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, payload = heapq.heappop(timers)
            if kind == "forget":
                self._forget(*payload)
            elif kind == "orphan_expiry":
                hold: Hold = payload
                if hold.actor.holds.get(hold.lock.key) is hold and not hold.actor.process.alive:
                    self._drop_hold(hold, tombstone=False, reason="lease_expired")
        tombs = self._tombstones
        while tombs:
            key, expiry = next(iter(tombs.items()))
            if expiry > now:
                break
            tombs.popitem(last=False)
            self._healed.pop(key, None)
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            _, fid = expiring.popleft()
            self.store.resolve(fid, now, "expired")
        self.deadlocks.tick(now)
        self.deadlocks.flush(now)

    def subscribe(self, callback: Callable[[Finding], None]) -> Callable[[], None]:
        """Call ``callback(finding)`` whenever a finding is added or resolved (synchronously,
        from :meth:`apply`/:meth:`tick`); returns an unsubscribe function."""
        return self.store.subscribe(callback)

    # == processes ==========================================================================
    def _process(self, info: ProcessInfo, now: int) -> Process:
        if not isinstance(info, ProcessInfo):
            raise RejectedEvent("event has no process")
        proc = self._procs.get(info.instance)
        if proc is None:
            if len(self._procs) >= self._limits.max_processes:
                self._limit_hit("max_processes")
                raise RejectedEvent("too many processes (limits.max_processes)", "limit")
            proc = Process(info, now)
            self._procs[info.instance] = proc
            proc.deadline_ns = now + int(self.config.liveness_timeout(None) * _NS)
            self._schedule_liveness(proc)
            return proc
        proc.last_seen_ns = now
        timeout = self.config.liveness_timeout(proc.interval if proc.last_heartbeat_ns else None)
        proc.deadline_ns = now + int(timeout * _NS)
        if not proc.alive:
            self._revive(proc)
        return proc

    def _schedule_liveness(self, proc: Process) -> None:
        # One live heap entry per process (wake_ns marks it); a later deadline is handled
        # by re-scheduling when the entry comes due, an earlier one needs a new entry.
        proc.wake_ns = proc.deadline_ns
        heapq.heappush(self._liveness, (proc.deadline_ns, next(self._seq), proc.info.instance))

    def _revive(self, proc: Process) -> None:
        proc.alive = True
        proc.dead_since_ns = None
        self._schedule_liveness(proc)
        for actor in proc.actors.values():
            for hold in actor.holds.values():
                self._resolve_hold_findings(hold, "process_back", only=ORPHANED)
            self.deadlocks.touched(actor)

    def _process_died(self, proc: Process, now: int) -> None:
        proc.alive = False
        proc.dead_since_ns = now
        self.counters.processes_presumed_dead += 1
        in_process = self.config.in_process_systems
        for actor in list(proc.actors.values()):
            if actor.wait is not None:
                self._drop_wait(actor.wait, tombstone=False)
            for hold in list(actor.holds.values()):
                if hold.lock.system in in_process or hold.lock.process_bound:
                    self._drop_hold(hold, tombstone=False, reason="process_dead")
                    continue
                self._stale(ORPHANED, hold, hold.since_ns, "holder process stopped heartbeating")
                if hold.expires_at_ns is not None:
                    when = hold.expires_at_ns + int(self.config.lease_grace * _NS)
                    self._timer(max(when, now), "orphan_expiry", hold)
            self.deadlocks.touched(actor)
        retention = int(self.config.dead_process_retention * _NS)
        self._timer(now + retention, "forget", (proc, now))
        self.deadlocks.flush(now)

    def _forget(self, proc: Process, dead_since: int) -> None:
        if proc.alive or proc.dead_since_ns != dead_since:
            return
        for actor in list(proc.actors.values()):
            for hold in list(actor.holds.values()):
                self._drop_hold(hold, tombstone=False, reason="forgotten")
        if self._procs.get(proc.info.instance) is proc:
            del self._procs[proc.info.instance]
            for callback in list(self.on_process_forgotten):
                callback(proc.info.instance)

    def _timer(self, when: int, kind: str, payload: Any) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), kind, payload))

    # == records ============================================================================
    def _limit_hit(self, name: str) -> None:
        _inc(self.counters.limits_hit, name)

    def _label(self, template: str) -> str:
        """A metric label value for a template, within ``max_label_values``."""
        if template in self._labels:
            return template
        if len(self._labels) >= self._limits.max_label_values:
            self._limit_hit("max_label_values")
            return OTHER_LABEL
        self._labels.add(template)
        return template

    def _lock(self, attrs: Mapping[str, Any]) -> Lock:
        get = attrs.get
        name = get(ev.ATTR_LOCK_NAME)
        system = get(ev.ATTR_LOCK_SYSTEM)
        namespace = get(ev.ATTR_LOCK_NAMESPACE)
        template = get(ev.ATTR_LOCK_TEMPLATE)
        lock = None
        # Events about a tracked lock (most of them) skip the full validation: plain
        # strings that name it are all it takes.
        if (
            name.__class__ is str
            and system.__class__ is str
            and namespace.__class__ is str
            and (template is None or template.__class__ is str)
            and name
            and system
        ):
            lock = self._locks.get(f"{system}:{namespace}/{name}")
        fifo = get(ev.ATTR_LOCK_FIFO)
        if fifo is not None:
            fifo = _bool(attrs, ev.ATTR_LOCK_FIFO)
        reentrant = get(ev.ATTR_LOCK_REENTRANT)
        if reentrant is not None:
            reentrant = _bool(attrs, ev.ATTR_LOCK_REENTRANT)
        max_leases = get(ev.ATTR_LOCK_MAX_LEASES)
        if max_leases is not None:
            max_leases = _int(attrs, ev.ATTR_LOCK_MAX_LEASES)
        bound = get(ev.ATTR_LOCK_PROCESS_BOUND)
        if bound is not None:
            bound = _bool(attrs, ev.ATTR_LOCK_PROCESS_BOUND)
        if lock is None:
            lock = self._new_lock(attrs)
        if fifo is not None:
            lock.fifo = fifo
        if reentrant is not None:
            lock.reentrant = reentrant
        if max_leases is not None and max_leases > 0:
            lock.max_leases = max_leases
        if bound is not None:
            lock.process_bound = bound
        return lock

    def _new_lock(self, attrs: Mapping[str, Any]) -> Lock:
        """The lock named by ``attrs`` when it is not tracked yet (or the names are odd)."""
        name = _str(attrs, ev.ATTR_LOCK_NAME)
        if not name:
            raise RejectedEvent(f"missing {ev.ATTR_LOCK_NAME}")
        system = _str(attrs, ev.ATTR_LOCK_SYSTEM, "unknown") or "unknown"
        namespace = _str(attrs, ev.ATTR_LOCK_NAMESPACE, "") or ""
        template = _str(attrs, ev.ATTR_LOCK_TEMPLATE)
        key = ev.lock_key(system, namespace, name)
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) >= self._limits.max_locks:
                self._limit_hit("max_locks")
                raise RejectedEvent("too many locks (limits.max_locks)", "limit")
            lock = Lock(
                key,
                sys.intern(system),
                sys.intern(namespace),
                name,
                sys.intern(template or self._templater(name)),
            )
            self._locks[key] = lock
        return lock

    def _target(self, proc: Process, attrs: Mapping[str, Any]) -> tuple[Lock, Actor]:
        """The lock and actor an event is about (validated before anything is created)."""
        actor_id = attrs.get(ev.ATTR_ACTOR_ID)
        if actor_id.__class__ is not str:
            actor_id = _str(attrs, ev.ATTR_ACTOR_ID)
        if not actor_id:
            raise RejectedEvent(f"missing {ev.ATTR_ACTOR_ID}")
        actor_name = attrs.get(ev.ATTR_ACTOR_NAME)
        if actor_name is not None and actor_name.__class__ is not str:
            actor_name = _str(attrs, ev.ATTR_ACTOR_NAME)
        lock = self._lock(attrs)
        actor = proc.actors.get(actor_id)
        if actor is None:
            actor = Actor(proc, sys.intern(actor_id), actor_name)
            proc.actors[actor.actor_id] = actor
        return lock, actor

    def _entry_target(self, proc: Process, attrs: Mapping[str, Any]) -> tuple[Lock, Actor]:
        """As :meth:`_target`, but a database session that an instrumented actor uses (it
        holds the session's binding lock) is that actor: its database waits and holds
        join the actor's application locks in one node of the graph."""
        bound = bound_actor(self._locks, attrs)
        if bound is None or bound.process is proc or not bound.process.alive:
            return self._target(proc, attrs)
        return self._lock(attrs), bound

    def _gc(self, actor: Actor, lock: Lock) -> None:
        if actor.wait is None and not actor.holds:
            proc = actor.process
            if proc.actors.get(actor.actor_id) is actor:
                del proc.actors[actor.actor_id]
            self.deadlocks.forget(actor)
        self._gc_lock(lock)

    def _gc_lock(self, lock: Lock) -> None:
        if not lock.holds and not lock.waits and self._locks.get(lock.key) is lock:
            del self._locks[lock.key]

    def _tombstone(self, kind: str, actor: Actor, lock: Lock, since: int) -> None:
        tombs = self._tombstones
        if len(tombs) >= self._limits.max_tombstones:
            oldest, _expiry = tombs.popitem(last=False)
            self._healed.pop(oldest, None)
            self._limit_hit("max_tombstones")
        key = (kind, actor.key, lock.key, since)
        tombs[key] = self._now + int(self.config.tombstone_ttl * _NS)
        self._healed.pop(key, None)

    def _tombstoned(self, kind: str, actor: Actor, lock: Lock, since: int, asserted: int) -> bool:
        """Whether the hold or wait ended (or a snapshot dropped it) and this evidence is
        not newer than that.

        A heartbeat lists only what was already reported when it was taken; delivered
        after the report of a new wait or hold (reordered), it drops that entry.  Evidence
        asserted after that heartbeat (the next snapshot listing it) brings it back:
        otherwise a reordered pair would hide a live wait, and a deadlock, for
        ``tombstone_ttl``.
        """
        key = (kind, actor.key, lock.key, since)
        if key not in self._tombstones:
            return False
        healed_at = self._healed.get(key)
        if healed_at is not None and asserted > healed_at:
            del self._tombstones[key]
            del self._healed[key]
            return False
        return True

    def _timeline_add(
        self, t: int, lock: Lock, what: str, actor: Actor, mode: str | None, detail: str | None
    ) -> None:
        self._timeline.append(
            (t, lock.key, what, actor.process.info, actor.actor_id, actor.name, mode, detail)
        )

    # -- waits ------------------------------------------------------------------------------
    def _put_wait(
        self,
        actor: Actor,
        lock: Lock,
        mode: str,
        since: int,
        asserted: int,
        attrs: Mapping[str, Any],
        probed: bool = False,
    ) -> Wait | None:
        if self._tombstoned("w", actor, lock, since, asserted):
            _inc(self.counters.events_ignored, "tombstoned")
            return None
        # ...and a wait that began before one of the actor's holds was over by then.
        for h in actor.holds.values():
            if h.since_ns > since or (h.lock is lock and h.since_ns == since):
                _inc(self.counters.events_ignored, "superseded")
                return None
        ticket = _int(attrs, ev.ATTR_QUEUE_POSITION)
        cur = actor.wait
        if cur is not None:
            if cur.lock is lock and cur.since_ns == since:
                cur.asserted_ns = max(cur.asserted_ns, asserted)
                if ticket is not None and ticket != cur.ticket:
                    cur.ticket = ticket
                    self.deadlocks.touched(actor)
                return cur
            if cur.since_ns > since:
                _inc(self.counters.events_ignored, "superseded")
                return None
            self._drop_wait(cur, tombstone=True, gc=False)
            if cur.lock is not lock:
                self._gc_lock(cur.lock)
        if self._nwaits >= self._limits.max_waits:
            self._limit_hit("max_waits")
            raise RejectedEvent("too many waits (limits.max_waits)", "limit")
        w = Wait(lock, actor, mode, since, asserted)
        w.ticket = ticket
        w.code = _code(attrs)
        w.holder_owner = _str(attrs, ev.ATTR_LOCK_HOLDER_OWNER)
        w.holder_token = _int(attrs, ev.ATTR_LOCK_HOLDER_TOKEN)
        if probed:  # a wait.start: the shim looked the holder up when it sent it
            w.probed_ns = asserted
        actor.wait = w
        lock.add_wait(w)
        self._nwaits += 1
        if mode == SEMAPHORE:
            self._semaphore_waits += 1
        label = self._label(lock.template)
        self._waiters[label] = self._waiters.get(label, 0) + 1
        self.deadlocks.touched(actor)
        return w

    def _drop_wait(self, w: Wait, tombstone: bool, gc: bool = True) -> None:
        actor, lock = w.actor, w.lock
        if actor.wait is not w:
            return
        actor.wait = None
        lock.remove_wait(w)
        self._nwaits -= 1
        if w.mode == SEMAPHORE:
            self._semaphore_waits -= 1
        label = self._label(lock.template)
        self._waiters[label] -= 1
        if tombstone:
            self._tombstone("w", actor, lock, w.since_ns)
        # The waiters queued behind lose a soft edge: removals never create a deadlock, and
        # one that used the edge had this waiter as a participant (re-checked via touched).
        self.deadlocks.touched(actor)
        if gc:
            self._gc(actor, lock)

    # -- holds ------------------------------------------------------------------------------
    def _put_hold(
        self,
        actor: Actor,
        lock: Lock,
        mode: str,
        since: int,
        asserted: int,
        attrs: Mapping[str, Any],
    ) -> tuple[Hold | None, bool]:
        if self._tombstoned("h", actor, lock, since, asserted):
            _inc(self.counters.events_ignored, "tombstoned")
            return None, False
        # An actor blocked in one acquire cannot acquire anything else: whatever it waited
        # for before this hold began is over (acquired, timed out, cancelled).
        w = actor.wait
        if w is not None and (w.since_ns < since or (w.lock is lock and w.since_ns == since)):
            self._drop_wait(w, tombstone=True, gc=False)
            if w.lock is not lock:
                self._gc_lock(w.lock)
        expires = _int(attrs, ev.ATTR_LOCK_EXPIRES_AT)
        token = _int(attrs, ev.ATTR_LOCK_TOKEN)
        cur = actor.holds.get(lock.key)
        if cur is not None:
            if cur.since_ns == since:
                if asserted >= cur.asserted_ns:  # a late, older report must not roll back
                    cur.asserted_ns = asserted
                    if expires is not None:
                        cur.expires_at_ns = expires
                    if token is not None:
                        cur.token = token
                return cur, False
            if cur.since_ns > since:
                _inc(self.counters.events_ignored, "superseded")
                return None, False
            self._drop_hold(cur, tombstone=True, reason="released", gc=False)
        if mode != SEMAPHORE and (mode != READ or lock.exclusive_holds):
            # Evidence older than another actor's conflicting acquisition says nothing
            # about now (a late report of a hold already released).
            skew = int(self.config.clock_skew * _NS)
            for other in lock.holds:
                if (
                    other.actor is not actor
                    and other.mode != SEMAPHORE
                    and not (mode == READ and other.mode == READ)
                    and other.since_ns > asserted + skew
                ):
                    _inc(self.counters.events_ignored, "superseded")
                    return None, False
        if self._nholds >= self._limits.max_holds:
            self._limit_hit("max_holds")
            raise RejectedEvent("too many holds (limits.max_holds)", "limit")
        h = Hold(lock, actor, mode, since, asserted)
        h.expires_at_ns = expires
        h.token = token
        h.owner = _str(attrs, ev.ATTR_LOCK_OWNER)
        h.code = _code(attrs)
        actor.holds[lock.key] = h
        lock.add_hold(h)
        self._nholds += 1
        self.deadlocks.touched(actor)
        self._new_hold(h)
        return h, True

    def _drop_hold(self, h: Hold, tombstone: bool, reason: str, gc: bool = True) -> None:
        actor, lock = h.actor, h.lock
        if actor.holds.get(lock.key) is not h:
            return
        del actor.holds[lock.key]
        lock.remove_hold(h)
        self._nholds -= 1
        if tombstone:
            self._tombstone("h", actor, lock, h.since_ns)
        self._resolve_hold_findings(h, reason)
        self.deadlocks.touched(actor)
        if gc:
            self._gc(actor, lock)

    def _resolve_hold_findings(self, h: Hold, reason: str, only: str | None = None) -> None:
        if not h.findings:
            return
        keep = []
        for fid in h.findings:
            f = self.store.get(fid)
            if f is None or not f.active:
                continue
            if only is not None and f.data.get("reason") != only:
                keep.append(fid)
                continue
            self.store.resolve(fid, self._now, reason)
        h.findings = keep or None

    def _take_lease_expired_finding(self, h: Hold) -> Finding | None:
        """Detach ``h``'s active ``lease_expired`` finding (so dropping ``h`` keeps it)."""
        for fid in h.findings or ():
            f = self.store.active(fid)
            if f is not None and f.data.get("reason") == LEASE_EXPIRED:
                h.findings = [x for x in h.findings or () if x != fid] or None
                return f
        return None

    def _new_hold(self, h: Hold) -> None:
        """Checks for a hold instance seen for the first time."""
        lock = h.lock
        if h.token is not None:
            tokens = self._tokens
            history = tokens.pop(lock.key, None)  # re-inserted: most recent last
            if history is None:
                history = []
                if len(tokens) >= self._limits.max_token_history:
                    del tokens[next(iter(tokens))]
            tokens[lock.key] = history
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
        # Someone else took the lock after the last evidence of a conflicting hold: that
        # hold evidently ended (its release event was lost, or its holder died).  No
        # tombstone: if its holder still asserts it later, it comes back and the overlap
        # becomes a violation.
        if h.mode == SEMAPHORE or (h.mode == READ and lock.exclusive_holds == 0):
            return  # nothing conflicts (and readers of a busy read lock cost nothing here)
        skew = int(self.config.clock_skew * _NS)
        for gone in list(lock.holds):
            if gone is not h and conflicting(h, gone) and gone.asserted_ns + skew < h.since_ns:
                _inc(self.counters.healed, "superseded_hold")
                self._drop_hold(gone, tombstone=False, reason="released")

    def _asserted(self, h: Hold, t: int) -> None:
        """Checks each time a holder says it still holds ``h`` (at sender time ``t``)."""
        cfg = self.config
        if h.expires_at_ns is not None and t > h.expires_at_ns + int(cfg.lease_grace * _NS):
            self._stale(LEASE_EXPIRED, h, h.since_ns, "still held after its lease ended")
        max_hold = cfg.max_hold_for(h.lock.template)
        if max_hold > 0 and t - h.since_ns > max_hold * _NS:
            self._stale(MAX_HOLD, h, h.since_ns, f"held longer than {max_hold:g}s")
        self._check_overlap(h)

    def _check_overlap(self, h: Hold) -> None:
        """A violation if another actor's conflicting hold overlaps ``h`` on evidence."""
        lock = h.lock
        if h.mode == SEMAPHORE or (h.mode == READ and lock.exclusive_holds == 0):
            return
        skew = int(self.config.clock_skew * _NS)
        for other in h.lock.holds:
            if other is h or not conflicting(h, other):
                continue
            if overlap_ns(h, other) > skew:
                a, b = sorted((h, other), key=lambda x: (x.since_ns, x.actor.key))
                self._violation(
                    OVERLAPPING_HOLDS,
                    b,
                    hold_json(a),
                    [a.actor.key, str(a.since_ns), b.actor.key, str(b.since_ns)],
                    f"{a.actor.label} and {b.actor.label} both held it "
                    f"(overlap {overlap_ns(h, other) / _NS:.3f}s)",
                )

    def _stale(self, reason: str, h: Hold, since: int, detail: str) -> None:
        if not self.config.stale_holder_findings:
            return  # a detector agent: the shard that owns the process reports these
        f = stale_finding(
            reason, h.lock, h.actor, since_ns=since, now_ns=self._now, hold=h, detail=detail
        )
        if self.store.add(f):
            _inc(self.counters.stale_holders_detected, reason)
            if h.findings is None:
                h.findings = []
            h.findings.append(f.id)

    def _violation(
        self, reason: str, h: Hold, other: dict[str, Any], id_parts: list[str], detail: str
    ) -> None:
        ttl = int(self.config.finding_ttl * _NS)
        f = violation_finding(
            reason, h.lock, h, other, id_parts=id_parts, now_ns=self._now, ttl_ns=ttl, detail=detail
        )
        if self.store.add(f):
            _inc(self.counters.violations, self._label(h.lock.template))
            self._expiring.append((self._now + ttl, f.id))

    # == event handlers =====================================================================
    def _since(self, event: Event, attrs: Mapping[str, Any]) -> int:
        since = _int(attrs, ev.ATTR_SINCE)
        return event.time_ns if since is None else since

    def _on_wait_start(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        mode = _mode(attrs)
        since = self._since(event, attrs)
        lock, actor = self._target(proc, attrs)
        try:
            cur = actor.wait
            known = cur is not None and cur.lock is lock and cur.since_ns == since
            if event.time_ns < proc.last_heartbeat_ns and not known:
                _inc(self.counters.events_ignored, "older_than_heartbeat")
                return
            if (
                self._put_wait(actor, lock, mode, since, event.time_ns, attrs, True) is not None
                and not known
            ):
                self._timeline_add(since, lock, "wait", actor, mode, None)
        finally:
            self._gc(actor, lock)

    def _on_wait_end(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        since = _int(attrs, ev.ATTR_SINCE)
        outcome = _str(attrs, ev.ATTR_OUTCOME)
        lock, actor = self._target(proc, attrs)
        w = actor.wait
        if w is not None and w.lock is lock and (since is None or w.since_ns == since):
            self._drop_wait(w, tombstone=True)
            self._timeline_add(event.time_ns, lock, "wait_end", actor, w.mode, outcome)
        else:
            if since is not None:
                self._tombstone("w", actor, lock, since)
            self._gc(actor, lock)

    def _on_hold_start(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        mode = _mode(attrs)
        since = self._since(event, attrs)
        lock, actor = self._target(proc, attrs)
        try:
            cur = actor.holds.get(lock.key)
            known = cur is not None and cur.since_ns == since
            if event.time_ns < proc.last_heartbeat_ns and not known:
                _inc(self.counters.events_ignored, "older_than_heartbeat")
                return
            h, new = self._put_hold(actor, lock, mode, since, event.time_ns, attrs)
            if h is not None:
                if new:
                    self._timeline_add(since, lock, "hold", actor, mode, None)
                self._asserted(h, event.time_ns)
        finally:
            self._gc(actor, lock)

    def _on_hold_end(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        since = _int(attrs, ev.ATTR_SINCE)
        outcome = _str(attrs, ev.ATTR_OUTCOME)
        lock, actor = self._target(proc, attrs)
        h = actor.holds.get(lock.key)
        if h is not None and (since is None or h.since_ns == since):
            self._drop_hold(h, tombstone=True, reason="released")
            self._timeline_add(event.time_ns, lock, "release", actor, h.mode, outcome)
        else:
            if since is not None:
                self._tombstone("h", actor, lock, since)
            self._gc(actor, lock)

    def _on_hold_extend(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        since = _int(attrs, ev.ATTR_SINCE)
        lock, actor = self._target(proc, attrs)
        h = actor.holds.get(lock.key)
        if h is not None and (since is None or h.since_ns == since):
            expires = _int(attrs, ev.ATTR_LOCK_EXPIRES_AT)
            if event.time_ns < h.asserted_ns:
                return  # an older extension than what we know (reordered delivery)
            if expires is not None:
                h.expires_at_ns = expires
            h.asserted_ns = event.time_ns
            self._resolve_hold_findings(h, "extended", only=LEASE_EXPIRED)
            self._timeline_add(event.time_ns, lock, "extend", actor, h.mode, None)
            self._asserted(h, event.time_ns)
            return
        # The hold.start was lost (or never sent): the extension tells us about the hold.
        self._on_hold_start(event, proc)

    def _on_lock_lost(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        since = _int(attrs, ev.ATTR_SINCE)
        lock, actor = self._target(proc, attrs)
        _inc(self.counters.locks_lost, self._label(lock.template))
        self._timeline_add(event.time_ns, lock, "lost", actor, None, None)
        h = actor.holds.get(lock.key)
        if h is not None and (since is None or h.since_ns == since):
            # The holder believed it held the lock until now.
            h.asserted_ns = max(h.asserted_ns, event.time_ns)
            self._check_overlap(h)
            since = h.since_ns
        ttl = int(self.config.finding_ttl * _NS)
        ongoing = self._take_lease_expired_finding(h) if h is not None else None
        if ongoing is not None:
            # The agent already saw this hold outlive its lease: the holder's own word that
            # it lost the lock continues that finding (one alert per lost lock, not two).
            ongoing.data["detail"] = "the holder lost the lock"
            self._expiring.append((self._now + ttl, ongoing.id))
        else:
            f = stale_finding(
                LEASE_EXPIRED,
                lock,
                actor,
                since_ns=event.time_ns if since is None else since,
                now_ns=self._now,
                hold=h,
                detail="the holder lost the lock",
                expires_in_ns=ttl,
                id_extra="lost",
            )
            if self.store.add(f):
                _inc(self.counters.stale_holders_detected, LEASE_EXPIRED)
                self._expiring.append((self._now + ttl, f.id))
        if h is not None and actor.holds.get(lock.key) is h and h.since_ns == since:
            self._drop_hold(h, tombstone=True, reason="lost")
        self._gc(actor, lock)

    def _on_order_pair(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        first = _str(attrs, ev.ATTR_ORDER_FIRST)
        second = _str(attrs, ev.ATTR_ORDER_SECOND)
        if not first or not second:
            raise RejectedEvent(f"missing {ev.ATTR_ORDER_FIRST} or {ev.ATTR_ORDER_SECOND}")
        first_mode = _str(attrs, ev.ATTR_ORDER_FIRST_MODE, EXCLUSIVE) or EXCLUSIVE
        second_mode = _str(attrs, ev.ATTR_ORDER_SECOND_MODE, EXCLUSIVE) or EXCLUSIVE
        for m in (first_mode, second_mode):
            if m not in ev.MODES:
                raise RejectedEvent(
                    f"order pair mode must be one of {', '.join(ev.MODES)}, not {m!r}"
                )
        sys1 = _str(attrs, ev.ATTR_ORDER_SYSTEM_FIRST, "") or ""
        sys2 = _str(attrs, ev.ATTR_ORDER_SYSTEM_SECOND, "") or ""
        pair = OrderPair(
            first=(sys.intern(sys1), sys.intern(first)),
            second=(sys.intern(sys2), sys.intern(second)),
            first_mode=first_mode,
            second_mode=second_mode,
            service=proc.info.service,
            pid=proc.info.pid,
            instance=proc.info.instance,
            actor=_str(attrs, ev.ATTR_ACTOR_ID),
            seen_at_ns=event.time_ns,
        )
        before = self.order.limit_hits
        for cycle in self.order.add(pair):
            if self.store.add(inversion_finding(cycle, self._now)):
                self.counters.inversions_detected += 1
        if self.order.limit_hits != before:
            self._limit_hit("max_order_pairs")

    def _on_heartbeat(self, event: Event, proc: Process) -> None:
        attrs = event.attrs
        interval = _float(attrs, ev.ATTR_HEARTBEAT_INTERVAL)
        holds = attrs.get(ev.ATTR_HOLDS) or []
        waits = attrs.get(ev.ATTR_WAITS) or []
        if not isinstance(holds, list | tuple) or not isinstance(waits, list | tuple):
            raise RejectedEvent(f"{ev.ATTR_HOLDS} and {ev.ATTR_WAITS} must be arrays")
        dropped = _int(attrs, ev.ATTR_DROPPED)
        schema = _int(attrs, ev.ATTR_SCHEMA_VERSION)
        if interval is not None and interval > 0:
            proc.interval = interval
        elif proc.interval is None:
            proc.interval = self.config.heartbeat_interval
        first = proc.last_heartbeat_ns == 0
        if dropped is not None:
            proc.dropped = dropped
        if schema is not None:
            proc.schema_version = schema
        t = event.time_ns
        if first:
            proc.deadline_ns = self._now + int(self.config.liveness_timeout(proc.interval) * _NS)
            if proc.deadline_ns < proc.wake_ns:
                self._schedule_liveness(proc)
        if t < proc.last_heartbeat_ns:
            _inc(self.counters.events_ignored, "stale_heartbeat")
            return
        proc.last_heartbeat_ns = t
        budget = self._limits.max_heartbeat_entries
        if len(holds) + len(waits) > budget:
            self._limit_hit("max_heartbeat_entries")
        seen_holds: set[Hold] = set()
        seen_waits: set[Wait] = set()
        foreign: set[Actor] = set()
        touched: list[tuple[Actor, Lock]] = []
        for entry in itertools.islice(holds, budget):
            try:
                if not isinstance(entry, Mapping):
                    raise RejectedEvent("heartbeat hold entry is not a key-value list")
                mode = _mode(entry)
                since = _int(entry, ev.ATTR_SINCE)
                if since is None:
                    raise RejectedEvent(f"heartbeat hold without {ev.ATTR_SINCE}")
                lock, actor = self._entry_target(proc, entry)
                touched.append((actor, lock))
                if actor.process is not proc:
                    since = bound_since(self._locks, entry, actor, since)
                h, new = self._put_hold(actor, lock, mode, since, t, entry)
                if h is not None:
                    seen_holds.add(h)
                    if actor.process is not proc:
                        h.source = proc.info.instance
                        foreign.add(actor)
                    if new:
                        self._timeline_add(since, lock, "hold", actor, mode, "heartbeat")
                    self._asserted(h, t)
            except RejectedEvent:
                self.counters.heartbeat_entries_rejected += 1
        for entry in itertools.islice(waits, max(0, budget - len(holds))):
            try:
                if not isinstance(entry, Mapping):
                    raise RejectedEvent("heartbeat wait entry is not a key-value list")
                mode = _mode(entry)
                since = _int(entry, ev.ATTR_SINCE)
                if since is None:
                    raise RejectedEvent(f"heartbeat wait without {ev.ATTR_SINCE}")
                lock, actor = self._entry_target(proc, entry)
                touched.append((actor, lock))
                if actor.process is not proc:
                    since = bound_wait_since(actor, since)
                w = self._put_wait(actor, lock, mode, since, t, entry)
                if w is not None:
                    seen_waits.add(w)
                    if actor.process is not proc:
                        w.source = proc.info.instance
                        foreign.add(actor)
            except RejectedEvent:
                self.counters.heartbeat_entries_rejected += 1
        # Whatever the snapshot does not list and nobody asserted after it is gone: of the
        # process's own actors, what it reported itself; of other processes' actors (a
        # database session bound to an instrumented actor), what this process reported.
        instance = proc.info.instance
        previous = self._sourced.pop(instance, set())
        if foreign:
            self._sourced[instance] = foreign
        for actor in [*proc.actors.values(), *(previous - foreign), *foreign]:
            own = None if actor.process is proc else instance
            w = actor.wait
            if w is not None and w.source == own and w not in seen_waits and w.asserted_ns < t:
                _inc(self.counters.healed, "wait")
                self._drop_wait(w, tombstone=True)
                self._healed[("w", actor.key, w.lock.key, w.since_ns)] = t
            for h in list(actor.holds.values()):
                if h.source == own and h not in seen_holds and h.asserted_ns < t:
                    _inc(self.counters.healed, "hold")
                    self._drop_hold(h, tombstone=True, reason="released")
                    self._healed[("h", actor.key, h.lock.key, h.since_ns)] = t
        for actor, lock in touched:
            self._gc(actor, lock)
