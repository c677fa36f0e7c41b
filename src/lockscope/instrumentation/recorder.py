"""The in-process registry: who holds and who waits for which lock, since when.

Every wrapped lock call updates it on the caller's thread, so the hot path is a handful of
dict and set operations under one uncontended lock plus one ``perf_counter_ns()`` call
(principle 1).  Nothing here does I/O: the reporter thread reads the registry on a timer,
finds waits and holds that have lasted ``report_after`` and turns them into events.

The registry also keeps the metric measurements until the reporter hands them to the
OpenTelemetry instruments, and the lock-order pairs seen (held A, then acquired B, by
template), each once per process.

After ``fork()`` the child calls :meth:`Recorder.reset` (a fresh, empty registry): the
parent's holds belong to the parent.
"""

from __future__ import annotations

import _thread
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from lockscope import events
from lockscope.instrumentation.metrics_aggregate import LockStats
from lockscope.instrumentation.recorder_inprocess import InProcessRegistry, _pair_attrs
from lockscope.instrumentation.records import (
    Hold,
    InProcessLock,
    LockInfo,
    Wait,
    _weakly,
    actor_id,
    task_name,
)

__all__ = ["Hold", "InProcessLock", "LockInfo", "PendingEvent", "Recorder", "Wait"]

PendingEvent = tuple[str, int, dict[str, Any]]
"""(event name, unix time ns, attributes) waiting in the reporter's queue."""

_perf = time.perf_counter_ns
_new_hold = object.__new__
_SLEW = 1000
"""A backward clock step is followed at 1/_SLEW of the time passing (1 ms per second)."""


class Recorder(InProcessRegistry):
    """The registry of current waits and holds, pending events and metric measurements."""

    def __init__(self, report_after: float = 0.2, queue_size: int = 10_000) -> None:
        self.report_after_ns = int(report_after * 1e9)
        self.queue_size = queue_size
        self.thread_names: Callable[[int], str | None] = lambda ident: None
        self.before_report: list[Callable[[int], None]] = []
        """Called by :meth:`report` with its ``now`` first (on the reporter thread): targets
        that keep their own lean registry (database sessions) turn what has lasted
        ``report_after`` into holds here, so the hot path never takes the registry lock."""
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new process after fork, or a fresh start)."""
        self._lock = _thread.allocate_lock()
        self.waits: set[Wait] = set()
        self._holds: dict[int, list[Hold]] = {}
        self._by_key: dict[str, list[Hold]] = {}
        """lock key -> its holds, oldest first: the holder look-up of a recorded wait span
        must not cost more with every other lock the process holds."""
        self.by_actor: dict[int, list[Hold]] = {}
        """actor -> its holds (of locks other than the in-process ones), oldest first."""
        self._pairs: set[tuple[str, str, str, str, str, str]] = set()
        self._events: deque[PendingEvent] = deque()
        self.dropped = 0
        """Events dropped because the queue was full (sent on heartbeats)."""
        self.errors = 0
        """Internal errors the shim swallowed (fail open)."""
        self._reset_in_process()
        self.stats = LockStats()
        """Cumulative metrics of this process (exported by :mod:`.metrics`)."""
        self._synced_at = 0
        self.offset = 0
        self.sync_clock()

    def sync_clock(self) -> None:
        """Re-derive wall time from ``perf_counter_ns`` (one clock read on the hot path).

        The reported timeline never steps back: when the host clock was stepped backwards
        (NTP, a VM restore) it follows at most 1 ms per second, as ``adjtime`` slews.  So a
        hold and the wait after it never look reversed (the agent would take the wait for a
        stale report), and every report's time keeps this process's order.  A clock
        stepped forward is followed at once.
        """
        now = _perf()
        offset = time.time_ns() - now
        if offset < self.offset and self._synced_at:
            offset = max(offset, self.offset - (now - self._synced_at) // _SLEW)
        self.offset = offset
        self._synced_at = now

    def wall(self, perf_ns: int) -> int:
        """Unix nanoseconds for a ``perf_counter_ns`` reading."""
        return perf_ns + self.offset

    # -- hot path: caller's thread ------------------------------------------------------
    def begin_wait(self, info: LockInfo, actor: int, task: Any, target: object) -> Wait:
        """An acquire starts (it may return at once; only the reporter decides it is long)."""
        start = _perf()
        wait = Wait(info, actor, task, target, start, start + self.offset)
        self.waits.add(wait)  # a single set operation is atomic under the GIL
        return wait

    def end_wait(
        self,
        wait: Wait,
        outcome: str,
        *,
        token: int | None = None,
        owner: str | bytes | None = None,
        ttl: float | None = None,
        hold: bool = True,
    ) -> Hold | None:
        """The acquire returned or raised; on ``acquired`` the hold starts now (unless
        ``hold`` is false: in-process locks keep their holds themselves)."""
        now = _perf()
        info = wait.info
        with self._lock:
            self.waits.discard(wait)
            if wait.reported:
                attrs = self._wait_attrs(wait)
                attrs[events.ATTR_OUTCOME] = outcome
                attrs[events.ATTR_WAIT_DURATION] = (now - wait.start) / 1e9
                self._emit(events.EVENT_WAIT_END, now, attrs)
            bound = info.bound
            if bound is None or bound.stats is not self.stats:
                bound = info.bound = self.stats.bind(info.template, info.system)
            if outcome != "acquired":
                outcomes = bound.outcomes
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                bound.wait_ns.append(~(now - wait.start))  # negative: counted already
                return None
            # Bucketed and counted as an acquisition by the reporter (stats.fold).
            bound.wait_ns.append(now - wait.start)
            if not hold:
                return None
            actor = wait.actor
            task = wait.task
            mine = self.by_actor.get(actor)
            if mine is None and not (self.light if task is None else self.light_tasks).get(actor):
                # The common case, _add_hold inlined: the actor holds nothing else, so
                # there is no lock-order pair to note (a call less per acquire).
                since = now + self.offset
                # Hold's fields set here, without Hold.__init__ (a call and its argument
                # passing less): a field added to Hold must be set here too.
                new = _new_hold(Hold)
                new.info = info
                new.actor = actor
                new.task = task if task is None else _weakly(task)
                new.actor_name = None
                new.target = target = wait.target
                new.obj = obj = id(target)
                new.start = now
                new.since_ns = since
                new.token = token
                new.owner = owner
                new.expires_at = None if ttl is None else since + int(ttl * 1e9)
                new.reported = False
                new.span = None
                new.durations = bound.hold_ns
                self.by_actor[actor] = [new]
                same = self._holds.get(obj)
                if same is None and info.key not in self._by_key:
                    self._holds[obj] = [new]
                    self._by_key[info.key] = [new]
                else:
                    self._index(new, info.key)
            else:
                new = self._add_hold(info, actor, task, wait.target, now, token, owner, ttl)
                new.durations = bound.hold_ns
            if wait.reported:
                # Others may be waiting for this actor: the agent must see the new hold now.
                new.actor_name = wait.actor_name
                self._report_hold(new)
            return new

    def _add_hold(
        self,
        info: LockInfo,
        actor: int,
        task: Any,
        target: object,
        now: int,
        token: int | None,
        owner: str | bytes | None,
        ttl: float | None,
    ) -> Hold:
        since = now + self.offset
        expires = None if ttl is None else since + int(ttl * 1e9)
        hold = Hold(info, actor, task, target, now, since, token, owner, expires)
        self._index(hold, info.key)
        in_process = (self.light if task is None else self.light_tasks).get(actor)
        if in_process:
            for lock in in_process:
                key = (lock._template, info.template)
                if key not in self._light_pairs:
                    self._light_pairs.add(key)
                    attrs = _pair_attrs(
                        lock._template, lock._system, info.template, info.system, actor, task
                    )
                    self._emit(events.EVENT_ORDER_PAIR, now, attrs)
        mine = self.by_actor.get(actor)
        if mine is None:
            self.by_actor[actor] = [hold]
            return hold
        for first in mine:
            if first.info.key == info.key:
                continue
            fi = first.info
            pair = (fi.template, fi.mode, fi.system, info.template, info.mode, info.system)
            if pair not in self._pairs:
                self._pairs.add(pair)
                self._emit(
                    events.EVENT_ORDER_PAIR,
                    now,
                    {
                        events.ATTR_ORDER_FIRST: fi.template,
                        events.ATTR_ORDER_FIRST_MODE: fi.mode,
                        events.ATTR_ORDER_SYSTEM_FIRST: fi.system,
                        events.ATTR_ORDER_SECOND: info.template,
                        events.ATTR_ORDER_SECOND_MODE: info.mode,
                        events.ATTR_ORDER_SYSTEM_SECOND: info.system,
                        events.ATTR_ACTOR_ID: actor_id(actor, task),
                    },
                )
        mine.append(hold)
        return hold

    def _index(self, hold: Hold, key: str) -> None:
        """``hold`` into the by-object and by-key indexes (caller holds ``self._lock``)."""
        obj = hold.obj
        same = self._holds.get(obj)
        if same is None:
            self._holds[obj] = [hold]
            # A second hold of the same object has the same key: only the first looks it up.
            keyed = self._by_key.get(key)
            if keyed is None:
                self._by_key[key] = [hold]
            else:
                keyed.append(hold)
        else:
            same.append(hold)
            self._by_key[key].append(hold)

    def find_hold(
        self, target: object, actor: int, key: str | None = None, *, any_actor: bool = True
    ) -> Hold | None:
        """The hold of ``target`` by ``actor``; else, with ``any_actor``, by anyone; else
        (for a lock object that delegates to this one) any hold of the lock ``key``."""
        same = self._holds.get(id(target))
        if same:
            for hold in same:
                if hold.actor == actor:
                    return hold
            return same[0] if any_actor else None
        if key is not None:
            return self.holder_of(key)
        return None

    def holder_of(self, key: str) -> Hold | None:
        """The oldest in-process hold of the lock ``key`` (for the wait span's link)."""
        keyed = self._by_key.get(key)
        # Read without the registry lock: iterating tolerates a concurrent end_hold
        # emptying the list, where ``keyed[0]`` after a length check would not.
        return next(iter(keyed), None) if keyed else None

    def end_hold(self, hold: Hold, outcome: str = "released") -> None:
        """The hold ended: ``released``, ``lost`` (``LockNotOwned``, session lost) or
        ``error`` (the release itself failed; the lease will run out)."""
        lost = outcome == "lost"
        now = _perf()
        info = hold.info
        with self._lock:
            holds = self._holds
            same = holds.get(hold.obj)
            if same is None or hold not in same:
                return  # already ended (e.g. lost, then released)
            # Mostly the only hold of its list: drop the list without a second scan.
            if len(same) == 1:
                del holds[hold.obj]
            else:
                same.remove(hold)
            # In _holds means in _by_key (both change under self._lock, reset swaps both).
            by_key = self._by_key
            keyed = by_key[info.key]
            if len(keyed) == 1:
                del by_key[info.key]
            else:
                keyed.remove(hold)
            # In _holds means in by_actor too (every hold is added to both, under the lock).
            by_actor = self.by_actor
            mine = by_actor[hold.actor]
            if len(mine) == 1:
                del by_actor[hold.actor]
            else:
                mine.remove(hold)
            held_ns = now - hold.start
            durations = hold.durations  # the template's list, bound when the hold began
            if durations is None:
                bound = info.bound
                if bound is None or bound.stats is not self.stats:
                    bound = info.bound = self.stats.bind(info.template, info.system)
                durations = bound.hold_ns
            durations.append(held_ns)  # bucketed by the reporter (stats.fold)
            if lost or hold.reported:
                self._hold_ended(hold, outcome, now, held_ns / 1e9)

    def _hold_ended(self, hold: Hold, outcome: str, now: int, duration: float) -> None:
        """The events of a hold that ended lost or after it was reported (caller holds
        ``self._lock``)."""
        if outcome == "lost":
            info = hold.info
            key = (info.template, info.system)
            self.stats.lost[key] = self.stats.lost.get(key, 0) + 1
            attrs = self._hold_attrs(hold)
            attrs[events.ATTR_OUTCOME] = "lost"
            attrs[events.ATTR_HOLD_DURATION] = duration
            self._emit(events.EVENT_LOCK_LOST, now, attrs)
        if hold.reported:
            attrs = self._hold_attrs(hold)
            attrs[events.ATTR_OUTCOME] = outcome
            attrs[events.ATTR_HOLD_DURATION] = duration
            self._emit(events.EVENT_HOLD_END, now, attrs)

    # -- database session bindings (instrumentation/db_sessions) --------------------------
    def bind(
        self, info: LockInfo, actor: int, task: Any, target: object, start: int | None = None
    ) -> Hold:
        """A binding hold (an actor using a database session since ``start``, perf ns):
        kept and reported like a hold, so the agent joins the session's database locks
        with the actor, but without metrics and without lock-order pairs (a session is not
        a lock the app orders)."""
        now = _perf() if start is None else start
        hold = Hold(info, actor, task, target, now, now + self.offset, None, None, None)
        with self._lock:
            self._holds.setdefault(hold.obj, []).append(hold)
            self._by_key.setdefault(info.key, []).append(hold)
            self.by_actor.setdefault(actor, []).append(hold)
        return hold

    def unbind(self, hold: Hold, outcome: str = "released") -> None:
        """End a :meth:`bind` hold (a ``hold.end`` with ``outcome`` is sent if it was
        reported)."""
        with self._lock:
            same = self._holds.get(hold.obj)
            if same is None or hold not in same:
                return
            same.remove(hold)
            if not same:
                del self._holds[hold.obj]
            keyed = self._by_key.get(hold.info.key)
            if keyed is not None and hold in keyed:
                keyed.remove(hold)
                if not keyed:
                    del self._by_key[hold.info.key]
            mine = self.by_actor.get(hold.actor)
            if mine is not None and hold in mine:
                mine.remove(hold)
                if not mine:
                    del self.by_actor[hold.actor]
            if hold.reported:
                attrs = self._hold_attrs(hold)
                attrs[events.ATTR_OUTCOME] = outcome
                self._emit(events.EVENT_HOLD_END, _perf(), attrs)

    def extended(self, hold: Hold, seconds: float | None, *, replace: bool = True) -> None:
        """The hold's lease was extended (``replace``: it now ends ``seconds`` from now)."""
        now = _perf()
        with self._lock:
            if seconds is not None:
                if replace or hold.expires_at is None:
                    hold.expires_at = now + self.offset + int(seconds * 1e9)
                else:
                    hold.expires_at += int(seconds * 1e9)
            if hold.reported:
                attrs = self._hold_attrs(hold)
                self._emit(events.EVENT_HOLD_EXTEND, now, attrs)

    def holds_matching(self, predicate: Callable[[Hold], bool]) -> list[Hold]:
        """Current holds for which ``predicate`` is true (e.g. those of one kazoo client)."""
        with self._lock:
            return [h for holds in self._holds.values() for h in holds if predicate(h)]

    # -- reporter thread ----------------------------------------------------------------
    def due_waits(self, now: int) -> list[Wait]:
        """Unreported waits that have lasted ``report_after`` by ``now`` (perf ns)."""
        threshold = now - self.report_after_ns
        return [w for w in list(self.waits) if not w.reported and w.start <= threshold]

    def report(self, now: int, due: Iterable[Wait]) -> None:
        """Report the ``due`` waits still in progress (holds first), then old holds."""
        threshold = now - self.report_after_ns
        for hook in self.before_report:
            try:
                hook(now)
            except Exception:
                self.errors += 1
        with self._lock:
            for wait in due:
                if wait not in self.waits or wait.reported:
                    continue  # it ended while the reporter looked up the holder
                for hold in self.by_actor.get(wait.actor, ()):
                    if not hold.reported:
                        self._report_hold(hold)
                table = self.light if wait.task is None else self.light_tasks
                for lock in list(table.get(wait.actor, ())):
                    self._report_light(lock, wait.actor)
                wait.reported = True
                self._emit(events.EVENT_WAIT_START, wait.start, self._wait_attrs(wait))
            for holds in self._holds.values():
                for hold in holds:
                    if not hold.reported and hold.start <= threshold:
                        self._report_hold(hold)
            self._report_due_light(threshold)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The reported waits and holds, as heartbeat entries."""
        with self._lock:
            # begin_wait adds without the lock: iterate a copy (list() of a set is atomic).
            waits = [self._wait_attrs(w) for w in list(self.waits) if w.reported]
            holds = [self._hold_attrs(h) for hs in self._holds.values() for h in hs if h.reported]
            holds += [self._hold_attrs(h) for h in self._light_reported.values()]
        return waits, holds

    def drain(self, limit: int) -> list[PendingEvent]:
        """Take up to ``limit`` pending events, oldest first."""
        out: list[PendingEvent] = []
        with self._lock:
            while self._events and len(out) < limit:
                out.append(self._events.popleft())
        return out

    def pending(self) -> int:
        """How many events wait to be sent."""
        return len(self._events)

    def emit(self, name: str, perf_ns: int, attrs: dict[str, Any]) -> None:
        """Queue an event from outside the hot path (heartbeat)."""
        with self._lock:
            self._emit(name, perf_ns, attrs)

    # -- internals (caller holds self._lock) ---------------------------------------------
    def _emit(self, name: str, perf_ns: int, attrs: dict[str, Any]) -> None:
        if len(self._events) >= self.queue_size:
            self.dropped += 1
            return
        self._events.append((name, perf_ns + self.offset, attrs))

    def _report_hold(self, hold: Hold) -> None:
        hold.reported = True
        self._emit(events.EVENT_HOLD_START, hold.start, self._hold_attrs(hold))

    def _actor_attrs(self, attrs: dict[str, Any], actor: int, task: Any, name: str | None) -> None:
        attrs[events.ATTR_ACTOR_ID] = actor_id(actor, task)
        if name is None:
            name = task_name(task) if task is not None else self.thread_names(actor)
        if name:
            attrs[events.ATTR_ACTOR_NAME] = name

    def _entry_attrs(
        self, entry: Wait | Hold, optional: tuple[tuple[str, Any], ...]
    ) -> dict[str, Any]:
        """A wait's or hold's event attributes: the lock's, the actor's, since when, and
        the ``optional`` (name, value) pairs that are not ``None``."""
        attrs = dict(entry.info.attrs)
        self._actor_attrs(attrs, entry.actor, entry.task, entry.actor_name)
        attrs[events.ATTR_SINCE] = entry.since_ns
        for name, value in optional:
            if value is not None:
                attrs[name] = value
        return attrs

    def _wait_attrs(self, wait: Wait) -> dict[str, Any]:
        code = wait.code or (None, None, None)
        return self._entry_attrs(wait, (
            (events.ATTR_LOCK_HOLDER_TOKEN, wait.holder_token),
            (events.ATTR_LOCK_HOLDER_OWNER, wait.holder_owner),
            (events.ATTR_WAIT_TICKET, wait.ticket),
            (events.ATTR_CODE_FILE, code[0]),
            (events.ATTR_CODE_LINE, code[1]),
            (events.ATTR_CODE_FUNCTION, code[2]),
        ))  # fmt: skip

    def _hold_attrs(self, hold: Hold) -> dict[str, Any]:
        owner = hold.owner
        if isinstance(owner, bytes):  # kept raw on the hot path, decoded when reported
            owner = owner.decode("utf-8", "backslashreplace")
        return self._entry_attrs(hold, (
            (events.ATTR_LOCK_TOKEN, hold.token),
            (events.ATTR_LOCK_OWNER, owner),
            (events.ATTR_LOCK_EXPIRES_AT, hold.expires_at),
        ))  # fmt: skip
