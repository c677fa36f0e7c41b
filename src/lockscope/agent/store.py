"""The agent's store of facts: processes, actors, locks, holds, waits and tombstones.

The store keeps what processes report and heals it (below); it holds no detection policy.
Detectors and exporters learn what changed from the store's typed changes.

Subscription API (for new detectors and event sources)
-------------------------------------------------------
* ``store.subscribe(ChangeType, callback)`` -> unsubscribe function: ``callback(change)``
  is called synchronously for every change of that type (the types and when they happen:
  :mod:`lockscope.agent.store_changes`).  Subscribers read the store freely and change it
  only through its public operations (``drop_hold``...).
* ``store.attach(detector)``: a :class:`~lockscope.agent.store_changes.Detector` subscribes
  in its ``attach(store)``; the store then calls ``detector.flush(now_ns)`` after every
  applied event and tick, and ``detector.tick(now_ns)`` on every tick.  The standard set
  (deadlock, stale holder, violation, order) is attached by
  :class:`~lockscope.agent.state.AgentState`.
* ``store.handle(event_name, handler)``: ``handler(event, process)`` applies one more event
  name (the order detector handles ``lockscope.order.pair`` so); raise
  :class:`~lockscope.agent.model.RejectedEvent` for bad input.
* An event source (the OTLP receiver, a database-lock watcher...) calls
  ``store.apply(event)`` with :class:`~lockscope.agent.model.Event` s in the lockscope
  event vocabulary (:mod:`lockscope.events`): a full snapshot of what a source sees is a
  heartbeat event (``lockscope.heartbeat`` with ``holds``/``waits`` entries), so lost
  updates heal as for any process.  The built-in handlers: :mod:`.store_events`.
* ``store.check_invariants()`` recounts every hand-kept counter and index (tests call it).

Healing (lost and reordered events; the rules: :mod:`.store_events`): tombstones of ended
holds and waits, one wait per actor, and heartbeat snapshots as the full truth.

Call it from one thread (the agent's event loop); it does no I/O.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.graph import READ, SEMAPHORE, Actor, Hold, Lock, Process, Wait
from lockscope.agent.model import Event, ProcessInfo, RejectedEvent, attr_int, attr_str
from lockscope.agent.store_changes import (
    ActorRemoved,
    Change,
    Detector,
    HoldAdded,
    HoldAsserted,
    HoldDropped,
    WaitAdded,
    WaitChanged,
    WaitDropped,
)
from lockscope.agent.store_processes import Processes
from lockscope.agent.store_reads import OTHER_LABEL, StoreReads
from lockscope.agent.store_records import StoreCounters, Tombstones, code_of, conflicting, inc
from lockscope.naming import LockNameTemplater

__all__ = ["OTHER_LABEL", "LockStore", "StoreCounters", "conflicting"]

NS = 1_000_000_000
C = TypeVar("C", bound=Change)
Handler = Callable[[Event, Process], None]
Attrs = Mapping[str, Any]
"""A report's attributes (an event's or a heartbeat entry's)."""
TimelineEntry = tuple[int, str, str, ProcessInfo, str, str | None, str | None, str | None]
"""(time, lock key, what, actor's process, actor id, actor name, mode, detail)."""


class LockStore(StoreReads):
    """Processes, locks, actors, holds and waits as reported, healed; emits changes."""

    def __init__(
        self, config: AgentConfig | None = None, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.config = config = config or AgentConfig()
        self._clock = clock
        self._limits = config.limits
        self.templater = LockNameTemplater(config.template_rules)
        self.procs = Processes(self)
        self._locks: dict[str, Lock] = {}
        self._nholds = 0
        self._nwaits = 0
        self._semaphore_waits = 0
        self._waiters: dict[str, int] = {}
        self._labels: set[str] = set()
        self._tombstones = Tombstones(self._limits.max_tombstones)
        # The timeline holds plain values (lock key, actor id...), not Lock and Actor
        # objects, so the actors and locks of ended holds are freed.
        self.timeline: deque[TimelineEntry] = deque(maxlen=self._limits.timeline_size)
        self.counters = StoreCounters()
        self.on_process_forgotten: list[Callable[[str], None]] = []
        """Called with the ``service.instance.id`` of every process the store forgets
        (dead for ``dead_process_retention``), e.g. to drop its metric series."""
        self._subscribers: dict[type, list[Callable[[Any], None]]] = {}
        self._detectors: list[Detector] = []
        # The detectors whose flush does something: apply() flushes only these after each
        # event (one call per detector per event is measurable on the ingest path).
        self._flushers: list[Detector] = []
        self._handlers: dict[str, Handler] = {}
        self.now_ns = clock()
        """Agent time of the event or tick being applied."""
        from lockscope.agent.store_events import LockEvents

        LockEvents(self).install()

    # == the subscription API ================================================================
    def subscribe(self, kind: type[C], callback: Callable[[C], None]) -> Callable[[], None]:
        """Call ``callback(change)`` for every change of type ``kind``; returns a function
        that unsubscribes."""
        subs = self._subscribers.setdefault(kind, [])
        subs.append(callback)

        def unsubscribe() -> None:
            if callback in subs:
                subs.remove(callback)

        return unsubscribe

    def emit(self, change: Change) -> None:
        """Deliver ``change`` to its subscribers (event sources may emit their own)."""
        for callback in self._subscribers.get(type(change), ()):
            callback(change)

    def attach(self, detector: Detector) -> None:
        """Let ``detector`` subscribe, then flush and tick it with the store."""
        detector.attach(self)
        self._detectors.append(detector)
        if getattr(detector, "batches", True):
            self._flushers.append(detector)

    def handle(self, event_name: str, handler: Handler) -> None:
        """Apply events named ``event_name`` with ``handler(event, process)``."""
        self._handlers[event_name] = handler

    # == input ================================================================================
    def apply(self, event: Event, now_ns: int | None = None) -> None:
        """Apply one decoded event.  ``now_ns`` is the agent's receive time (default: now).

        Raises :class:`RejectedEvent` (a ``ValueError``) for an event that cannot be applied
        - unknown name, missing lock name or actor, wrong attribute types, a limit hit - and
        then changes nothing but the sending process's liveness.
        """
        name = event.name
        handler = self._handlers.get(name)
        if handler is None:
            raise RejectedEvent(f"unknown event name {name!r}", "unknown_event")
        t = event.time_ns
        if t.__class__ is not int and (isinstance(t, bool) or not isinstance(t, int)):
            raise RejectedEvent("event time must be integer nanoseconds")
        now = self._clock() if now_ns is None else now_ns
        self.now_ns = now
        handler(event, self.procs.reported(event.process, now))
        applied = self.counters.events_applied  # inc(), inline: once per event
        applied[name] = applied.get(name, 0) + 1
        for d in self._flushers:
            d.flush(now)

    def tick(self, now_ns: int | None = None) -> None:
        """Time-driven work (call about every 100 ms): heartbeat liveness, holds of gone
        processes whose lease ran out, forgetting dead processes, expiring tombstones, and
        every detector's timers."""
        now = self._clock() if now_ns is None else now_ns
        self.now_ns = now
        self.procs.tick(now)
        self._tombstones.expire(now)
        for d in self._detectors:
            d.tick(now)
        for d in self._detectors:
            d.flush(now)

    # == processes ============================================================================
    def process(self, info: ProcessInfo, now: int) -> Process:
        """The process ``info`` names, created or revived: it just reported."""
        return self.procs.reported(info, now)

    def process_gone(self, proc: Process, exited: bool = False) -> None:
        """The process stopped (``exited``: it said so); see :meth:`Processes.gone`."""
        self.procs.gone(proc, exited)

    # == locks and actors =====================================================================
    def limit_hit(self, name: str) -> None:
        """Count a limit hit (``lockscope_agent_limits_hit_total{limit}``)."""
        inc(self.counters.limits_hit, name)

    def label(self, template: str) -> str:
        """A metric label value for a template, within ``max_label_values``."""
        if template in self._labels:
            return template
        if len(self._labels) >= self._limits.max_label_values:
            self.limit_hit("max_label_values")
            return OTHER_LABEL
        self._labels.add(template)
        return template

    def lock(
        self, system: str, namespace: str, name: str, template: str | None, key: str | None = None
    ) -> Lock:
        """The lock with this identity, created if new (within ``max_locks``); ``key``: its
        :func:`~lockscope.events.lock_key`, when the caller has it."""
        if key is None:
            key = ev.lock_key(system, namespace, name)
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) >= self._limits.max_locks:
                self.limit_hit("max_locks")
                raise RejectedEvent("too many locks (limits.max_locks)", "limit")
            lock = Lock(
                key,
                sys.intern(system),
                sys.intern(namespace),
                name,
                sys.intern(template or self.templater(name)),
            )
            self._locks[key] = lock
        return lock

    def actor(self, proc: Process, actor_id: str, name: str | None) -> Actor:
        """The actor ``actor_id`` of ``proc``, created if new."""
        actor = proc.actors.get(actor_id)
        if actor is None:
            actor = Actor(proc, sys.intern(actor_id), name)
            proc.actors[actor.actor_id] = actor
        return actor

    def gc(self, actor: Actor, lock: Lock) -> None:
        """Drop ``actor`` and ``lock`` if nothing holds or waits through them any more."""
        if actor.wait is None and not actor.holds:
            proc = actor.process
            if proc.actors.get(actor.actor_id) is actor:
                del proc.actors[actor.actor_id]
            self.emit(ActorRemoved(actor))
        self.gc_lock(lock)

    def gc_lock(self, lock: Lock) -> None:
        """Drop ``lock`` if it has no hold and no wait."""
        if not lock.holds and not lock.waits and self._locks.get(lock.key) is lock:
            del self._locks[lock.key]

    def timeline_add(
        self, t: int, lock: Lock, what: str, actor: Actor, mode: str | None, detail: str | None
    ) -> None:
        """Record a lock's event for ``/api/v1/locks/{name}``'s timeline."""
        self.timeline.append(
            (t, lock.key, what, actor.process.info, actor.actor_id, actor.name, mode, detail)
        )

    # == tombstones ===========================================================================
    def tombstone(self, kind: str, actor: Actor, lock: Lock, since: int) -> None:
        """Remember that ``kind`` (``h`` hold, ``w`` wait) of ``actor`` on ``lock`` since
        ``since`` ended, for ``tombstone_ttl`` (a late start report of it is ignored)."""
        expires = self.now_ns + int(self.config.tombstone_ttl * NS)
        if not self._tombstones.add((kind, actor.key, lock.key, since), expires):
            self.limit_hit("max_tombstones")

    def _tombstoned(self, kind: str, actor: Actor, lock: Lock, since: int, asserted: int) -> bool:
        """Whether ``kind`` of ``actor`` on ``lock`` since ``since`` ended after ``asserted``
        (a late report of it: counted as ignored)."""
        if self._tombstones.covers((kind, actor.key, lock.key, since), asserted):
            self.ignored("tombstoned")
            return True
        return False

    def ignored(self, why: str) -> None:
        """Count a valid event (or entry) that changed nothing."""
        inc(self.counters.events_ignored, why)

    # == waits ================================================================================
    def put_wait(
        self,
        actor: Actor,
        lock: Lock,
        mode: str,
        since: int,
        asserted: int,
        attrs: Attrs,
        probed: bool = False,
    ) -> Wait | None:
        """Record (or re-assert at sender time ``asserted``) ``actor``'s wait for ``lock``;
        ``attrs`` are the report's attributes (ticket, code, holder seen).  None: the
        report is older than what is known (counted)."""
        if self._tombstoned("w", actor, lock, since, asserted):
            return None
        # ...and a wait that began before one of the actor's holds was over by then.
        for h in actor.holds.values():
            if h.since_ns > since or (h.lock is lock and h.since_ns == since):
                self.ignored("superseded")
                return None
        ticket = attrs.get(ev.ATTR_WAIT_TICKET)
        if ticket is not None and ticket.__class__ is not int:
            ticket = attr_int(attrs, ev.ATTR_WAIT_TICKET)
        cur = actor.wait
        if cur is not None:
            if cur.lock is lock and cur.since_ns == since:
                cur.asserted_ns = max(cur.asserted_ns, asserted)
                changed = ticket is not None and ticket != cur.ticket
                if changed:
                    cur.ticket = ticket
                if cur.holder_owner is None and cur.holder_token is None:
                    # The shim's look-up finished after its first report (a loaded host):
                    # a heartbeat brings it.  It ran some time after the wait began,
                    # which is all that can be said of when: since_ns is its lower bound.
                    cur.holder_owner = attr_str(attrs, ev.ATTR_LOCK_HOLDER_OWNER)
                    cur.holder_token = attr_int(attrs, ev.ATTR_LOCK_HOLDER_TOKEN)
                    if cur.holder_owner is not None or cur.holder_token is not None:
                        cur.probed_ns = cur.since_ns
                        changed = True
                if changed:
                    self.emit(WaitChanged(cur))
                return cur
            if cur.since_ns > since:
                self.ignored("superseded")
                return None
            self.drop_wait(cur, tombstone=True, gc=False)
            if cur.lock is not lock:
                self.gc_lock(cur.lock)
        if self._nwaits >= self._limits.max_waits:
            self.limit_hit("max_waits")
            raise RejectedEvent("too many waits (limits.max_waits)", "limit")
        w = Wait(lock, actor, mode, since, asserted)
        w.ticket = ticket
        w.code = code_of(attrs)
        w.holder_owner = attr_str(attrs, ev.ATTR_LOCK_HOLDER_OWNER)
        w.holder_token = attr_int(attrs, ev.ATTR_LOCK_HOLDER_TOKEN)
        if probed:  # a wait.start: the shim looked the holder up when it sent it
            w.probed_ns = asserted
        actor.wait = w
        lock.add_wait(w)
        self._nwaits += 1
        if mode == SEMAPHORE:
            self._semaphore_waits += 1
        label = self.label(lock.template)
        self._waiters[label] = self._waiters.get(label, 0) + 1
        self.emit(WaitAdded(w))
        return w

    def drop_wait(
        self, w: Wait, tombstone: bool, gc: bool = True, outcome: str | None = None
    ) -> None:
        """End a wait (``tombstone``: remember it ended; ``gc``: drop what is left idle;
        ``outcome``: how it ended, when known)."""
        actor, lock = w.actor, w.lock
        if actor.wait is not w:
            return
        actor.wait = None
        lock.remove_wait(w)
        self._nwaits -= 1
        if w.mode == SEMAPHORE:
            self._semaphore_waits -= 1
        self._waiters[self.label(lock.template)] -= 1
        if tombstone:
            self.tombstone("w", actor, lock, w.since_ns)
        self.emit(WaitDropped(w, outcome))
        if gc:
            self.gc(actor, lock)

    # == holds ================================================================================
    def put_hold(
        self, actor: Actor, lock: Lock, mode: str, since: int, asserted: int, attrs: Attrs
    ) -> tuple[Hold | None, bool]:
        """Record (or re-assert) a hold; ``attrs`` carry its lease end, token, owner and
        code.  Returns ``(hold, new)``; hold None: the report is older than what is known."""
        if self._tombstoned("h", actor, lock, since, asserted):
            return None, False
        # An actor blocked in one acquire cannot acquire anything else: whatever it waited
        # for before this hold began is over (acquired, timed out, cancelled).
        w = actor.wait
        if w is not None and (w.since_ns < since or (w.lock is lock and w.since_ns == since)):
            self.drop_wait(w, tombstone=True, gc=False)
            if w.lock is not lock:
                self.gc_lock(w.lock)
        get = attrs.get  # attr_int(), its common case inline (once per hold report)
        expires = get(ev.ATTR_LOCK_EXPIRES_AT)
        if expires is not None and expires.__class__ is not int:
            expires = attr_int(attrs, ev.ATTR_LOCK_EXPIRES_AT)
        token = get(ev.ATTR_LOCK_TOKEN)
        if token is not None and token.__class__ is not int:
            token = attr_int(attrs, ev.ATTR_LOCK_TOKEN)
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
                self.ignored("superseded")
                return None, False
            self.drop_hold(cur, tombstone=True, reason="released", gc=False)
        skew = int(self.config.clock_skew * NS)
        if mode != SEMAPHORE and (mode != READ or lock.exclusive_holds):
            # Evidence older than another actor's conflicting acquisition says nothing
            # about now (a late report of a hold already released).
            for other in lock.holds:
                if (
                    other.actor is not actor
                    and other.mode != SEMAPHORE
                    and not (mode == READ and other.mode == READ)
                    and other.since_ns > asserted + skew
                ):
                    self.ignored("superseded")
                    return None, False
        if self._nholds >= self._limits.max_holds:
            self.limit_hit("max_holds")
            raise RejectedEvent("too many holds (limits.max_holds)", "limit")
        h = Hold(lock, actor, mode, since, asserted)
        h.expires_at_ns = expires
        h.token = token
        h.owner = attr_str(attrs, ev.ATTR_LOCK_OWNER)
        h.code = code_of(attrs)
        actor.holds[lock.key] = h
        lock.add_hold(h)
        self._nholds += 1
        # Someone else took the lock after the last evidence of a conflicting hold: that
        # hold evidently ended (its release event was lost, or its holder died).  No
        # tombstone: if its holder still asserts it later, it comes back and the overlap
        # becomes a violation.
        if mode != SEMAPHORE and (mode != READ or lock.exclusive_holds > 0):
            for gone in list(lock.holds):
                if gone is not h and conflicting(h, gone) and gone.asserted_ns + skew < since:
                    inc(self.counters.healed, "superseded_hold")
                    self.drop_hold(gone, tombstone=False, reason="released")
        self.emit(HoldAdded(h))
        return h, True

    def asserted(self, h: Hold, at_ns: int) -> None:
        """The holder said, at sender time ``at_ns``, that it still holds ``h``."""
        self.emit(HoldAsserted(h, at_ns))

    def drop_hold(self, h: Hold, tombstone: bool, reason: str, gc: bool = True) -> None:
        """End a hold (``reason``: see :class:`~.store_changes.HoldDropped`)."""
        actor, lock = h.actor, h.lock
        if actor.holds.get(lock.key) is not h:
            return
        del actor.holds[lock.key]
        lock.remove_hold(h)
        self._nholds -= 1
        if tombstone:
            self.tombstone("h", actor, lock, h.since_ns)
        self.emit(HoldDropped(h, reason))
        if gc:
            self.gc(actor, lock)

    # == reconciliation =======================================================================
    def heal(self, item: Hold | Wait, t: int) -> None:
        """A snapshot taken at ``t`` no longer lists ``item`` (nor did anyone assert it
        since): it ended, its end event lost.  A newer snapshot listing it brings it back."""
        kind = "w" if isinstance(item, Wait) else "h"
        inc(self.counters.healed, "wait" if kind == "w" else "hold")
        if isinstance(item, Wait):
            self.drop_wait(item, tombstone=True)
        else:
            self.drop_hold(item, tombstone=True, reason="released")
        self._tombstones.healed((kind, item.actor.key, item.lock.key, item.since_ns), t)
