"""The store's built-in event handlers: lockscope's lock events and heartbeats.

Each handler validates its event's attributes (with :mod:`lockscope.agent.model`'s
parsers) before it creates anything, then drives the store's operations; the checks of
what a report means (stale, overlap, lost lock) are the detectors' (they receive the
store's changes).  ``lockscope.order.pair`` is handled by the order detector.

Healing (events can be lost or arrive out of order):

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

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lockscope import events as ev
from lockscope.agent.db_binding import (
    DEADLOCK_VICTIM,
    bound_actor,
    bound_since,
    bound_wait_since,
    is_binding,
)
from lockscope.agent.db_snapshot import ATTR_DB_LINGERING
from lockscope.agent.graph import Actor, Hold, Lock, Process, Wait
from lockscope.agent.model import (
    Event,
    RejectedEvent,
    attr_bool,
    attr_float,
    attr_int,
    attr_mode,
    attr_str,
)
from lockscope.agent.report_order import heartbeat_is_newest
from lockscope.agent.store_changes import HoldExtended, LockLost, SnapshotApplied

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["LockEvents"]


_LOCK_PROPERTIES = frozenset(
    (ev.ATTR_LOCK_FIFO, ev.ATTR_LOCK_REENTRANT, ev.ATTR_LOCK_MAX_LEASES, ev.ATTR_LOCK_PROCESS_BOUND)
)
"""Optional lock properties; most events carry none of them (checked in one step)."""

LockProperties = tuple[bool | None, bool | None, int | None, bool | None]


class _Lingering(Exception):
    """A database wait that just ended, listed once more for a session no actor binds:
    skipped (it only serves to let the bound app report how the wait ended)."""


def _older_than_heartbeat(proc: Process, event: Event) -> bool:
    """Whether a start event predates the process's newest snapshot (which did not list
    it): by number for a process that numbers its events, else by (bounded) timestamp."""
    seq = event.attrs.get(ev.ATTR_SEQUENCE)
    if proc.seq_mark and seq.__class__ is int:
        return bool(seq < proc.seq_mark)
    return event.time_ns < proc.last_heartbeat_ns


def _gc(store: LockStore, actor: Actor, lock: Lock) -> None:
    """``store.gc(actor, lock)`` when there may be something to drop (most events leave
    both in use: the test here saves the call)."""
    if (actor.wait is None and not actor.holds) or (not lock.holds and not lock.waits):
        store.gc(actor, lock)


def _properties(attrs: Mapping[str, Any]) -> LockProperties:
    """A lock's optional properties as reported (validated; None: not reported)."""
    get = attrs.get
    fifo = None if get(ev.ATTR_LOCK_FIFO) is None else attr_bool(attrs, ev.ATTR_LOCK_FIFO)
    reentrant = get(ev.ATTR_LOCK_REENTRANT)
    if reentrant is not None:
        reentrant = attr_bool(attrs, ev.ATTR_LOCK_REENTRANT)
    max_leases = get(ev.ATTR_LOCK_MAX_LEASES)
    if max_leases is not None:
        max_leases = attr_int(attrs, ev.ATTR_LOCK_MAX_LEASES)
    bound = get(ev.ATTR_LOCK_PROCESS_BOUND)
    if bound is not None:
        bound = attr_bool(attrs, ev.ATTR_LOCK_PROCESS_BOUND)
    return fifo, reentrant, max_leases, bound


def _session(h: Hold, attrs: Mapping[str, Any]) -> None:
    """Note a session-bound hold's session timeout on its process (per process: one
    client session, so one timeout, and no cost per hold)."""
    if ev.ATTR_LOCK_SESSION_TIMEOUT in attrs:
        seconds = attr_float(attrs, ev.ATTR_LOCK_SESSION_TIMEOUT)
        if seconds is not None and seconds > 0:
            proc = h.actor.process
            proc.session_ns = max(proc.session_ns or 0, int(seconds * 1e9))


class LockEvents:
    """Applies lock events (wait/hold start and end, extend, lost) and heartbeats."""

    def __init__(self, store: LockStore) -> None:
        self.store = store
        self._locks = store.lock_index  # the store's own dict (one look-up per event)
        self._sourced: dict[str, set[Actor]] = {}
        """Instance -> other processes' actors whose holds/waits it reported (bindings)."""

    def install(self) -> None:
        """Register the handlers with the store."""
        handle = self.store.handle
        handle(ev.EVENT_WAIT_START, self.on_wait_start)
        handle(ev.EVENT_WAIT_END, self.on_wait_end)
        handle(ev.EVENT_HOLD_START, self.on_hold_start)
        handle(ev.EVENT_HOLD_END, self.on_hold_end)
        handle(ev.EVENT_HOLD_EXTEND, self.on_hold_extend)
        handle(ev.EVENT_LOCK_LOST, self.on_lock_lost)
        handle(ev.EVENT_HEARTBEAT, self.on_heartbeat)

    # -- what an event is about ---------------------------------------------------------
    def lock(self, attrs: Mapping[str, Any]) -> Lock:
        """The lock ``attrs`` name (created if new), with its reported properties."""
        get = attrs.get
        name = get(ev.ATTR_LOCK_NAME)
        system = get(ev.ATTR_LOCK_SYSTEM)
        namespace = get(ev.ATTR_LOCK_NAMESPACE)
        template = get(ev.ATTR_LOCK_TEMPLATE)
        key = None
        # Events with plain strings that name the lock (all but odd ones) skip the full
        # validation: they find it, or make it, by those strings.
        if (
            name.__class__ is str
            and system.__class__ is str
            and namespace.__class__ is str
            and (template is None or template.__class__ is str)
            and name
            and system
        ):
            key = f"{system}:{namespace}/{name}"
            lock = self._locks.get(key)
        else:
            lock = None
        # The properties are validated before a lock is created.
        props = None if attrs.keys().isdisjoint(_LOCK_PROPERTIES) else _properties(attrs)
        if lock is None:
            if key is None:
                lock = self._new_lock(attrs)
            else:
                lock = self.store.lock(system, namespace, name, template, key)  # type: ignore[arg-type]  # str, checked above
        if props is not None:
            fifo, reentrant, max_leases, bound = props
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
        name = attr_str(attrs, ev.ATTR_LOCK_NAME)
        if not name:
            raise RejectedEvent(f"missing {ev.ATTR_LOCK_NAME}")
        system = attr_str(attrs, ev.ATTR_LOCK_SYSTEM, "unknown") or "unknown"
        namespace = attr_str(attrs, ev.ATTR_LOCK_NAMESPACE, "") or ""
        template = attr_str(attrs, ev.ATTR_LOCK_TEMPLATE)
        return self.store.lock(system, namespace, name, template)

    def target(self, proc: Process, attrs: Mapping[str, Any]) -> tuple[Lock, Actor]:
        """The lock and actor an event is about (validated before anything is created)."""
        actor_id = attrs.get(ev.ATTR_ACTOR_ID)
        if actor_id.__class__ is not str:
            actor_id = attr_str(attrs, ev.ATTR_ACTOR_ID)
        if not actor_id:
            raise RejectedEvent(f"missing {ev.ATTR_ACTOR_ID}")
        actor_name = attrs.get(ev.ATTR_ACTOR_NAME)
        if actor_name is not None and actor_name.__class__ is not str:
            actor_name = attr_str(attrs, ev.ATTR_ACTOR_NAME)
        lock = self.lock(attrs)
        actor = proc.actors.get(actor_id)  # store.actor(), its common case inline
        return lock, actor or self.store.actor(proc, actor_id, actor_name)

    def _entry_target(self, proc: Process, attrs: Mapping[str, Any]) -> tuple[Lock, Actor]:
        """As :meth:`target`, but a database session that an instrumented actor uses (it
        holds the session's binding lock) is that actor: its database waits and holds
        join the actor's application locks in one node of the graph."""
        bound = bound_actor(self.store.lock_index, attrs)
        if bound is None or bound.process is proc or not bound.process.alive:
            if attrs.get(ATTR_DB_LINGERING) is True:
                raise _Lingering  # only kept for a bound actor (see db_watch._linger)
            return self.target(proc, attrs)
        return self.lock(attrs), bound

    def _start(self, event: Event, proc: Process) -> tuple[str, int, Lock, Actor]:
        """A start or extend event's mode, ``since`` (default: its time), lock and actor."""
        attrs = event.attrs
        mode = attrs.get(ev.ATTR_LOCK_MODE)
        if mode not in ev.MODES or mode.__class__ is not str:
            mode = attr_mode(attrs)
        since = attrs.get(ev.ATTR_SINCE)
        if since.__class__ is not int:
            since = attr_int(attrs, ev.ATTR_SINCE)
            if since is None:
                since = event.time_ns
        lock, actor = self.target(proc, attrs)
        return mode, since, lock, actor

    def _end(self, event: Event, proc: Process) -> tuple[int | None, str | None, Lock, Actor]:
        """An end event's ``since`` (None: any), outcome, lock and actor."""
        attrs = event.attrs
        since = attrs.get(ev.ATTR_SINCE)  # attr_int() and attr_str(), common case inline
        if since is not None and since.__class__ is not int:
            since = attr_int(attrs, ev.ATTR_SINCE)
        outcome = attrs.get(ev.ATTR_OUTCOME)
        if outcome is not None and outcome.__class__ is not str:
            outcome = attr_str(attrs, ev.ATTR_OUTCOME)
        lock, actor = self.target(proc, attrs)
        return since, outcome, lock, actor

    def _unmatched_end(self, kind: str, actor: Actor, lock: Lock, since: int | None) -> None:
        """An end of a hold (``h``) or wait (``w``) not tracked: remember it ended (its
        start may still arrive, late) and drop what it created."""
        if since is not None:
            self.store.tombstone(kind, actor, lock, since)
        _gc(self.store, actor, lock)

    # -- handlers ------------------------------------------------------------------------
    def on_wait_start(self, event: Event, proc: Process) -> None:
        """``lockscope.wait.start``: a wait that lasted ``report_after``."""
        store = self.store
        mode, since, lock, actor = self._start(event, proc)
        try:
            cur = actor.wait
            known = cur is not None and cur.lock is lock and cur.since_ns == since
            if not known and _older_than_heartbeat(proc, event):
                store.ignored("older_than_heartbeat")
                return
            w = store.put_wait(actor, lock, mode, since, event.time_ns, event.attrs, True)
            if w is not None and not known:
                store.timeline_add(since, lock, "wait", actor, mode, None)
        finally:
            _gc(store, actor, lock)

    def on_wait_end(self, event: Event, proc: Process) -> None:
        """``lockscope.wait.end``: acquired, timed out or cancelled."""
        since, outcome, lock, actor = self._end(event, proc)
        w = actor.wait
        if w is not None and w.lock is lock and (since is None or w.since_ns == since):
            self.store.drop_wait(w, tombstone=True)
            self.store.timeline_add(event.time_ns, lock, "wait_end", actor, w.mode, outcome)
        else:
            self._unmatched_end("w", actor, lock, since)

    def on_hold_start(self, event: Event, proc: Process) -> None:
        """``lockscope.hold.start``: a hold that lasted ``report_after`` (or any hold
        while the process waits somewhere)."""
        store, attrs = self.store, event.attrs
        mode, since, lock, actor = self._start(event, proc)
        try:
            cur = actor.holds.get(lock.key)
            known = cur is not None and cur.since_ns == since
            if not known and _older_than_heartbeat(proc, event):
                store.ignored("older_than_heartbeat")
                return
            h, new = store.put_hold(actor, lock, mode, since, event.time_ns, attrs)
            if h is not None:
                _session(h, attrs)
                if new:
                    store.timeline_add(since, lock, "hold", actor, mode, None)
                store.asserted(h, event.time_ns)
        finally:
            _gc(store, actor, lock)

    def on_hold_end(self, event: Event, proc: Process) -> None:
        """``lockscope.hold.end``: released."""
        store = self.store
        since, outcome, lock, actor = self._end(event, proc)
        h = actor.holds.get(lock.key)
        if h is not None and (since is None or h.since_ns == since):
            store.drop_hold(h, tombstone=True, reason="released")
            store.timeline_add(event.time_ns, lock, "release", actor, h.mode, outcome)
            if outcome == DEADLOCK_VICTIM and is_binding(lock):
                # The database aborted this actor's statement to break a deadlock: the
                # session's wait (reported by the database watcher) is over, and so is the
                # deadlock, for that reason.  The watcher's next poll agrees.
                w = actor.wait
                if w is not None and w.source is not None:
                    store.drop_wait(w, tombstone=True, outcome=DEADLOCK_VICTIM)
        else:
            self._unmatched_end("h", actor, lock, since)

    def on_hold_extend(self, event: Event, proc: Process) -> None:
        """``lockscope.hold.extend``: the lease was renewed."""
        store, attrs = self.store, event.attrs
        since = attr_int(attrs, ev.ATTR_SINCE)
        lock, actor = self.target(proc, attrs)
        h = actor.holds.get(lock.key)
        if h is not None and (since is None or h.since_ns == since):
            expires = attr_int(attrs, ev.ATTR_LOCK_EXPIRES_AT)
            if event.time_ns < h.asserted_ns:
                return  # an older extension than what we know (reordered delivery)
            if expires is not None:
                h.expires_at_ns = expires
            h.asserted_ns = event.time_ns
            store.emit(HoldExtended(h, event.time_ns))
            store.timeline_add(event.time_ns, lock, "extend", actor, h.mode, None)
            store.asserted(h, event.time_ns)
            return
        # The hold.start was lost (or never sent): the extension tells us about the hold.
        self.on_hold_start(event, proc)

    def on_lock_lost(self, event: Event, proc: Process) -> None:
        """``lockscope.lock.lost``: the holder learnt its lock was gone."""
        store, attrs = self.store, event.attrs
        since = attr_int(attrs, ev.ATTR_SINCE)
        lock, actor = self.target(proc, attrs)
        store.timeline_add(event.time_ns, lock, "lost", actor, None, None)
        h = actor.holds.get(lock.key)
        if h is not None and (since is None or h.since_ns == since):
            # The holder believed it held the lock until now.
            h.asserted_ns = max(h.asserted_ns, event.time_ns)
            since = h.since_ns
        else:
            h = None
        store.emit(LockLost(lock, actor, h, since, event.time_ns))
        if h is not None and actor.holds.get(lock.key) is h:
            store.drop_hold(h, tombstone=True, reason="lost")
        _gc(store, actor, lock)

    def on_heartbeat(self, event: Event, proc: Process) -> None:
        """``lockscope.heartbeat``: the process's snapshot of its long holds and waits."""
        store, attrs = self.store, event.attrs
        interval = attr_float(attrs, ev.ATTR_HEARTBEAT_INTERVAL)
        holds = attrs.get(ev.ATTR_HOLDS) or []
        waits = attrs.get(ev.ATTR_WAITS) or []
        if not isinstance(holds, list | tuple) or not isinstance(waits, list | tuple):
            raise RejectedEvent(f"{ev.ATTR_HOLDS} and {ev.ATTR_WAITS} must be arrays")
        dropped = attr_int(attrs, ev.ATTR_DROPPED)
        schema = attr_int(attrs, ev.ATTR_SCHEMA_VERSION)
        seq = attr_int(attrs, ev.ATTR_SEQUENCE)
        exiting = attr_bool(attrs, ev.ATTR_EXITING)
        t = event.time_ns
        first = proc.last_heartbeat_ns == 0 and proc.seq_mark == 0
        verdict = heartbeat_is_newest(proc, seq, t, store.now_ns)
        if verdict != "newest":
            # Not provably this process's newest snapshot (report_order): it may add what it
            # lists (a real heartbeat overtaken by a forged one must still count) but it
            # removes nothing, and it does not change the process's settings.
            store.ignored(verdict)
            if seq is None or verdict != "stale_heartbeat" or not proc.seq_seen:
                return
            self._apply_entries(proc, holds, waits, t)
            return
        if interval is not None and interval > 0:
            proc.interval = interval
        elif proc.interval is None:
            proc.interval = store.config.heartbeat_interval
        if dropped is not None:
            proc.dropped = dropped
        if schema is not None:
            proc.schema_version = schema
        if first:
            store.procs.first_heartbeat(proc, store.now_ns)
        if t < proc.last_heartbeat_ns:
            # A numbered process whose clock went back: everything it asserted before this
            # snapshot is older than it, whatever the dates say.
            self._rebase_asserted(proc, t - 1)
        proc.last_heartbeat_ns = t
        seen_holds, seen_waits, foreign, touched = self._apply_entries(proc, holds, waits, t)
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
                store.heal(w, t)
            for h in list(actor.holds.values()):
                if h.source == own and h not in seen_holds and h.asserted_ns < t:
                    store.heal(h, t)
        for actor, lock in touched:
            _gc(store, actor, lock)
        store.emit(SnapshotApplied(proc, t))
        if exiting:
            # Its last word: what it still holds outlives it (until the lease ends).
            store.process_gone(proc, exited=True)

    def _rebase_asserted(self, proc: Process, t: int) -> None:
        for actor in proc.actors.values():
            w = actor.wait
            if w is not None and w.source is None and w.asserted_ns > t:
                w.asserted_ns = t
            for h in actor.holds.values():
                if h.source is None and h.asserted_ns > t:
                    h.asserted_ns = t

    def _apply_entries(
        self, proc: Process, holds: Any, waits: Any, t: int
    ) -> tuple[set[Hold], set[Wait], set[Actor], list[tuple[Actor, Lock]]]:
        """(Re)create what a heartbeat lists; returns what it saw, for healing."""
        store = self.store
        budget = store.config.limits.max_heartbeat_entries
        if len(holds) + len(waits) > budget:
            store.limit_hit("max_heartbeat_entries")
        seen_holds: set[Hold] = set()
        seen_waits: set[Wait] = set()
        foreign: set[Actor] = set()
        touched: list[tuple[Actor, Lock]] = []
        for entry in itertools.islice(holds, budget):
            try:
                since, lock, actor, mode = self._entry(proc, entry, "hold")
                touched.append((actor, lock))
                if actor.process is not proc:
                    since = bound_since(store.lock_index, entry, actor, since)
                h, new = store.put_hold(actor, lock, mode, since, t, entry)
                if h is not None:
                    _session(h, entry)
                    seen_holds.add(h)
                    if actor.process is not proc:
                        h.source = proc.info.instance
                        foreign.add(actor)
                    if new:
                        store.timeline_add(since, lock, "hold", actor, mode, "heartbeat")
                    store.asserted(h, t)
            except _Lingering:
                continue
            except RejectedEvent:
                store.counters.heartbeat_entries_rejected += 1
        for entry in itertools.islice(waits, max(0, budget - len(holds))):
            try:
                since, lock, actor, mode = self._entry(proc, entry, "wait")
                touched.append((actor, lock))
                if actor.process is not proc:
                    since = bound_wait_since(actor, since)
                w = store.put_wait(actor, lock, mode, since, t, entry)
                if w is not None:
                    seen_waits.add(w)
                    if actor.process is not proc:
                        w.source = proc.info.instance
                        foreign.add(actor)
            except _Lingering:
                continue
            except RejectedEvent:
                store.counters.heartbeat_entries_rejected += 1
        return seen_holds, seen_waits, foreign, touched

    def _entry(self, proc: Process, entry: Any, what: str) -> tuple[int, Lock, Actor, str]:
        if not isinstance(entry, Mapping):
            raise RejectedEvent(f"heartbeat {what} entry is not a key-value list")
        mode = attr_mode(entry)
        since = attr_int(entry, ev.ATTR_SINCE)
        if since is None:
            raise RejectedEvent(f"heartbeat {what} without {ev.ATTR_SINCE}")
        lock, actor = self._entry_target(proc, entry)
        return since, lock, actor, mode
