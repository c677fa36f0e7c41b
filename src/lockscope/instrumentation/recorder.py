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
import contextlib
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from lockscope import events
from lockscope.instrumentation.stats import BOUNDS, LockStats

__all__ = ["Hold", "LockInfo", "PendingEvent", "Recorder", "Wait"]

PendingEvent = tuple[str, int, dict[str, Any]]
"""(event name, unix time ns, attributes) waiting in the reporter's queue."""

_perf = time.perf_counter_ns


class LockInfo:
    """What the shim knows about one lock: its identity and its kind."""

    __slots__ = (
        "adapter",
        "attrs",
        "bound",
        "fifo",
        "key",
        "max_leases",
        "mode",
        "name",
        "namespace",
        "reentrant",
        "span_attrs",
        "span_sites",
        "system",
        "template",
        "ttl",
    )

    def __init__(
        self,
        system: str,
        namespace: str,
        name: str,
        template: str,
        *,
        mode: str = "exclusive",
        fifo: bool = False,
        reentrant: bool = False,
        max_leases: int | None = None,
        ttl: float | None = None,
        adapter: Any = None,
    ) -> None:
        self.adapter = adapter
        """The target adapter that made this (for the reporter's holder look-up)."""
        self.bound: Any = None
        """The recorder's stats references for this lock's template (see LockStats.bind)."""
        self.system = system
        self.namespace = namespace
        self.name = name
        self.template = template
        self.mode = mode
        self.fifo = fifo
        self.reentrant = reentrant
        self.max_leases = max_leases
        self.ttl = ttl
        self.key = events.lock_key(system, namespace, name)
        attrs: dict[str, Any] = {
            events.ATTR_LOCK_SYSTEM: system,
            events.ATTR_LOCK_NAMESPACE: namespace,
            events.ATTR_LOCK_NAME: name,
            events.ATTR_LOCK_TEMPLATE: template,
            events.ATTR_LOCK_MODE: mode,
        }
        if fifo:
            attrs[events.ATTR_LOCK_FIFO] = True
        if reentrant:
            attrs[events.ATTR_LOCK_REENTRANT] = True
        if max_leases is not None:
            attrs[events.ATTR_LOCK_MAX_LEASES] = max_leases
        if ttl is not None:
            attrs[events.ATTR_LOCK_TTL] = float(ttl)
        self.attrs = attrs
        """The lock's event attributes (shared: copy before adding to it)."""
        # Spans carry fewer (each costs the SDK a validation): identity, mode, lease.
        self.span_attrs = {
            k: v
            for k, v in attrs.items()
            if k not in (events.ATTR_LOCK_TEMPLATE, events.ATTR_LOCK_FIFO)
            and not (k == events.ATTR_LOCK_MODE and v == "exclusive")
        }
        self.span_sites: dict[Any, dict[str, Any]] | None = None
        """Span attributes merged with a call site's code location (see spans._site_attrs)."""

    def __repr__(self) -> str:
        return f"<LockInfo {self.key} {self.mode}>"


class Wait:
    """One acquire in progress."""

    __slots__ = (
        "actor",
        "actor_name",
        "code",
        "holder_owner",
        "holder_token",
        "info",
        "reported",
        "since_ns",
        "start",
        "target",
        "task",
        "ticket",
    )

    def __init__(
        self, info: LockInfo, actor: int, task: Any, target: object, start: int, since_ns: int
    ) -> None:
        self.info = info
        self.actor = actor
        self.task = task
        """The asyncio task waiting (``None`` for a thread)."""
        self.actor_name: str | None = None
        self.target = target
        """The lock object, for the reporter's cheap holder look-up."""
        self.start = start
        self.since_ns = since_ns
        self.reported = False
        self.holder_token: int | None = None
        self.holder_owner: str | None = None
        self.ticket: int | None = None
        self.code: tuple[str, int, str] | None = None
        """(file, line, function) where the actor waits, filled in when reported."""


class Hold:
    """One acquired lock, until released or lost."""

    __slots__ = (
        "actor",
        "actor_name",
        "expires_at",
        "info",
        "obj",
        "owner",
        "reported",
        "since_ns",
        "span",
        "start",
        "target",
        "task",
        "token",
    )

    def __init__(
        self,
        info: LockInfo,
        actor: int,
        task: Any,
        target: object,
        start: int,
        since_ns: int,
        token: int | None,
        owner: str | bytes | None,
        expires_at: int | None,
    ) -> None:
        self.info = info
        self.actor = actor
        self.task = task
        self.actor_name: str | None = None
        self.target = target
        self.obj = id(target)
        self.start = start
        self.since_ns = since_ns
        self.token = token
        self.owner = owner
        self.expires_at = expires_at
        self.reported = False
        self.span: Any = None
        """The ``lock.hold`` span while it is recording (for links and its end)."""


def actor_id(actor: int, task: Any) -> str:
    """``thread:<ident>`` or ``task:<id>`` (unique within the process)."""
    return f"task:{actor}" if task is not None else f"thread:{actor}"


class Recorder:
    """The registry of current waits and holds, pending events and metric measurements."""

    def __init__(self, report_after: float = 0.2, queue_size: int = 10_000) -> None:
        self.report_after_ns = int(report_after * 1e9)
        self.queue_size = queue_size
        self.thread_names: Callable[[int], str | None] = lambda ident: None
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new process after fork, or a fresh start)."""
        self._lock = _thread.allocate_lock()
        self._waits: set[Wait] = set()
        self._holds: dict[int, list[Hold]] = {}
        self._by_key: dict[str, list[Hold]] = {}
        """lock key -> its holds, oldest first: the holder look-up of a recorded wait span
        must not cost more with every other lock the process holds."""
        self._by_actor: dict[int, list[Hold]] = {}
        self._pairs: set[tuple[str, str, str, str, str, str]] = set()
        self._events: deque[PendingEvent] = deque()
        self.dropped = 0
        """Events dropped because the queue was full (sent on heartbeats)."""
        self.errors = 0
        """Internal errors the shim swallowed (fail open)."""
        self.acquires = 0
        """Acquire calls recorded since the start (any outcome)."""
        self._light: dict[int, list[Any]] = {}
        """thread ident -> in-process locks it holds, oldest first (see threading_locks)."""
        self._light_reported: dict[int, Hold] = {}
        self._light_pairs: set[tuple[str, str]] = set()
        self._dirty: set[Any] = set()
        self.stats = LockStats()
        """Cumulative metrics of this process (exported by :mod:`.metrics`)."""
        self.sync_clock()

    def sync_clock(self) -> None:
        """Re-derive wall time from ``perf_counter_ns`` (one clock read on the hot path)."""
        self._offset = time.time_ns() - _perf()

    def wall(self, perf_ns: int) -> int:
        """Unix nanoseconds for a ``perf_counter_ns`` reading."""
        return perf_ns + self._offset

    # -- hot path: caller's thread ------------------------------------------------------
    def begin_wait(self, info: LockInfo, actor: int, task: Any, target: object) -> Wait:
        """An acquire starts (it may return at once; only the reporter decides it is long)."""
        start = _perf()
        wait = Wait(info, actor, task, target, start, start + self._offset)
        self._waits.add(wait)  # a single set operation is atomic under the GIL
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
            self._waits.discard(wait)
            if wait.reported:
                attrs = self._wait_attrs(wait)
                attrs[events.ATTR_OUTCOME] = outcome
                attrs[events.ATTR_WAIT_DURATION] = (now - wait.start) / 1e9
                self._emit(events.EVENT_WAIT_END, now, attrs)
            self.acquires += 1
            # _count inlined: one call less on the hot path pays for the _by_key upkeep.
            waited = (now - wait.start) / 1e9
            bound = info.bound
            if bound is None or bound[0] is not self.stats:
                bound = info.bound = self.stats.bind(info.template, info.system)
            outcomes = bound[1]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            hist = bound[2]
            hist[bisect_left(BOUNDS, waited)] += 1
            hist[-1] += waited
            if outcome != "acquired" or not hold:
                return None
            new = self._add_hold(info, wait.actor, wait.task, wait.target, now, token, owner, ttl)
            if wait.reported:
                # Others may be waiting for this actor: the agent must see the new hold now.
                new.actor_name = wait.actor_name
                self._report_hold(new)
            return new

    def acquired(
        self,
        info: LockInfo,
        actor: int,
        task: Any,
        target: object,
        *,
        token: int | None = None,
        owner: str | bytes | None = None,
        ttl: float | None = None,
    ) -> Hold:
        """An acquire that did not wait (in-process fast path)."""
        now = _perf()
        with self._lock:
            self.acquires += 1
            self._count(info, "acquired", 0.0)
            return self._add_hold(info, actor, task, target, now, token, owner, ttl)

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
        since = now + self._offset
        expires = None if ttl is None else since + int(ttl * 1e9)
        hold = Hold(info, actor, task, target, now, since, token, owner, expires)
        obj = hold.obj
        same = self._holds.get(obj)
        if same is None:
            self._holds[obj] = [hold]
            # A second hold of the same object has the same key: only the first looks it up.
            keyed = self._by_key.get(info.key)
            if keyed is None:
                self._by_key[info.key] = [hold]
            else:
                keyed.append(hold)
        else:
            same.append(hold)
            self._by_key[info.key].append(hold)
        if task is None and self._light.get(actor):
            for lock in self._light[actor]:
                key = (lock._template, info.template)
                if key not in self._light_pairs:
                    self._light_pairs.add(key)
                    attrs = _pair_attrs(
                        lock._template, lock._system, info.template, info.system, actor
                    )
                    self._emit(events.EVENT_ORDER_PAIR, now, attrs)
        mine = self._by_actor.get(actor)
        if mine is None:
            self._by_actor[actor] = [hold]
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
            # Mostly the only hold of its list: drop the list without a second scan (this
            # pays for the _by_key upkeep below on the hot path).
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
            mine = self._by_actor.get(hold.actor)
            if mine is not None and hold in mine:
                if len(mine) == 1:
                    del self._by_actor[hold.actor]
                else:
                    mine.remove(hold)
            duration = (now - hold.start) / 1e9
            bound = info.bound
            if bound is None or bound[0] is not self.stats:
                bound = info.bound = self.stats.bind(info.template, info.system)
            hist = bound[3]
            hist[bisect_left(BOUNDS, duration)] += 1
            hist[-1] += duration
            if lost:
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
    def bind(self, info: LockInfo, actor: int, task: Any, target: object) -> Hold:
        """A binding hold (an actor using a database session): kept and reported like a
        hold, so the agent joins the session's database locks with the actor, but without
        metrics and without lock-order pairs (a session is not a lock the app orders)."""
        now = _perf()
        hold = Hold(info, actor, task, target, now, now + self._offset, None, None, None)
        with self._lock:
            self._holds.setdefault(hold.obj, []).append(hold)
            self._by_key.setdefault(info.key, []).append(hold)
            self._by_actor.setdefault(actor, []).append(hold)
        return hold

    def unbind(self, hold: Hold) -> None:
        """End a :meth:`bind` hold (a ``hold.end`` is sent if it was reported)."""
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
            mine = self._by_actor.get(hold.actor)
            if mine is not None and hold in mine:
                mine.remove(hold)
                if not mine:
                    del self._by_actor[hold.actor]
            if hold.reported:
                attrs = self._hold_attrs(hold)
                attrs[events.ATTR_OUTCOME] = "released"
                self._emit(events.EVENT_HOLD_END, _perf(), attrs)

    def extended(self, hold: Hold, seconds: float | None, *, replace: bool = True) -> None:
        """The hold's lease was extended (``replace``: it now ends ``seconds`` from now)."""
        now = _perf()
        with self._lock:
            if seconds is not None:
                if replace or hold.expires_at is None:
                    hold.expires_at = now + self._offset + int(seconds * 1e9)
                else:
                    hold.expires_at += int(seconds * 1e9)
            if hold.reported:
                attrs = self._hold_attrs(hold)
                self._emit(events.EVENT_HOLD_EXTEND, now, attrs)

    def holds_matching(self, predicate: Callable[[Hold], bool]) -> list[Hold]:
        """Current holds for which ``predicate`` is true (e.g. those of one kazoo client)."""
        with self._lock:
            return [h for holds in self._holds.values() for h in holds if predicate(h)]

    # -- in-process locks: the lean path (threading_locks) -------------------------------
    # No registry lock here: each step is one GIL-atomic operation, the lock object's own
    # fields are written while it is held, and the reporter re-checks what it reads.
    def light_acquired(self, lock: Any, ident: int) -> None:
        """An in-process lock was taken without waiting (``lock._since`` already set)."""
        held = self._light.get(ident)
        if held is None:
            self._light[ident] = [lock]
            return
        if held or ident in self._by_actor:
            self._light_order(held, lock, ident)
        held.append(lock)

    def light_released(self, lock: Any, ident: int, since: int) -> None:
        """An in-process lock is about to be released (still held: its fields are ours)."""
        now = _perf()
        held = self._light.get(ident)
        if held:
            if held[-1] is lock:
                held.pop()
            else:
                with contextlib.suppress(ValueError):
                    held.remove(lock)
        hist = lock._hist
        if hist is None:
            hist = lock._hist = [0] * (len(BOUNDS) + 2)
        seconds = (now - since) / 1e9
        hist[bisect_left(BOUNDS, seconds)] += 1
        hist[-1] += seconds
        self._dirty.add(lock)
        if lock._hold is not None:
            self._end_light(lock, seconds)

    def _light_order(self, held: list[Any], lock: Any, ident: int) -> None:
        site = lock._template
        for first in held:
            if first is lock:
                continue
            key = (first._template, site)
            if key not in self._light_pairs:
                self._light_pairs.add(key)
                self.emit(events.EVENT_ORDER_PAIR, _perf(), _pair_attrs(
                    first._template, first._system, site, lock._system, ident))  # fmt: skip
        for hold in list(self._by_actor.get(ident, ())):
            key = (hold.info.template, site)
            if key not in self._light_pairs:
                self._light_pairs.add(key)
                self.emit(events.EVENT_ORDER_PAIR, _perf(), _pair_attrs(
                    hold.info.template, hold.info.system, site, lock._system, ident))  # fmt: skip

    def report_light(self, lock: Any, ident: int) -> None:
        """Report an in-process hold now (its owner's wait was reported)."""
        with self._lock:
            self._report_light(lock, ident)

    def _report_light(self, lock: Any, ident: int) -> None:
        since = lock._since
        if not since or lock._hold is not None:
            return
        hold = Hold(lock.lock_info(), ident, None, lock, since, since + self._offset,
                    None, None, None)  # fmt: skip
        hold.reported = True
        lock._hold = hold
        self._light_reported[id(lock)] = hold
        self._emit(events.EVENT_HOLD_START, since, self._hold_attrs(hold))
        if lock._since != since:  # released (or re-taken) while we looked
            self._end_light(lock, (_perf() - since) / 1e9, locked=True)

    def _end_light(self, lock: Any, seconds: float, locked: bool = False) -> None:
        hold = lock._hold
        lock._hold = None
        if hold is None:
            return
        if not locked:
            with self._lock:
                self._end_light_reported(lock, hold, seconds)
        else:
            self._end_light_reported(lock, hold, seconds)

    def _end_light_reported(self, lock: Any, hold: Hold, seconds: float) -> None:
        if self._light_reported.pop(id(lock), None) is not hold:
            return  # reported by this process's parent before a fork: not ours to end
        attrs = self._hold_attrs(hold)
        attrs[events.ATTR_OUTCOME] = "released"
        attrs[events.ATTR_HOLD_DURATION] = seconds
        self._emit(events.EVENT_HOLD_END, _perf(), attrs)

    def fold_light(self) -> None:
        """Move the in-process locks' own counters into :attr:`stats` (reporter thread)."""
        dirty, self._dirty = self._dirty, set()
        with self._lock:
            for lock in list(dirty):
                lock.fold_into(self.stats)

    # -- reporter thread ----------------------------------------------------------------
    def due_waits(self, now: int) -> list[Wait]:
        """Unreported waits that have lasted ``report_after`` by ``now`` (perf ns)."""
        threshold = now - self.report_after_ns
        return [w for w in list(self._waits) if not w.reported and w.start <= threshold]

    def report(self, now: int, due: Iterable[Wait]) -> None:
        """Report the ``due`` waits still in progress (holds first), then old holds."""
        threshold = now - self.report_after_ns
        with self._lock:
            for wait in due:
                if wait not in self._waits or wait.reported:
                    continue  # it ended while the reporter looked up the holder
                for hold in self._by_actor.get(wait.actor, ()):
                    if not hold.reported:
                        self._report_hold(hold)
                if wait.task is None:
                    for lock in list(self._light.get(wait.actor, ())):
                        self._report_light(lock, wait.actor)
                wait.reported = True
                self._emit(events.EVENT_WAIT_START, wait.start, self._wait_attrs(wait))
            for holds in self._holds.values():
                for hold in holds:
                    if not hold.reported and hold.start <= threshold:
                        self._report_hold(hold)
            for ident, locks in list(self._light.items()):
                if not locks:
                    continue
                for lock in list(locks):
                    since = lock._since
                    if since and since <= threshold and lock._hold is None:
                        self._report_light(lock, ident)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The reported waits and holds, as heartbeat entries."""
        with self._lock:
            # begin_wait adds without the lock: iterate a copy (list() of a set is atomic).
            waits = [self._wait_attrs(w) for w in list(self._waits) if w.reported]
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
    def _count(self, info: LockInfo, outcome: str, waited: float) -> None:
        bound = info.bound
        if bound is None or bound[0] is not self.stats:
            bound = info.bound = self.stats.bind(info.template, info.system)
        outcomes = bound[1]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        hist = bound[2]
        hist[bisect_left(BOUNDS, waited)] += 1
        hist[-1] += waited

    def _emit(self, name: str, perf_ns: int, attrs: dict[str, Any]) -> None:
        if len(self._events) >= self.queue_size:
            self.dropped += 1
            return
        self._events.append((name, perf_ns + self._offset, attrs))

    def _report_hold(self, hold: Hold) -> None:
        hold.reported = True
        self._emit(events.EVENT_HOLD_START, hold.start, self._hold_attrs(hold))

    def _actor_attrs(self, attrs: dict[str, Any], actor: int, task: Any, name: str | None) -> None:
        attrs[events.ATTR_ACTOR_ID] = actor_id(actor, task)
        if name is None:
            name = task_name(task) if task is not None else self.thread_names(actor)
        if name:
            attrs[events.ATTR_ACTOR_NAME] = name

    def _wait_attrs(self, wait: Wait) -> dict[str, Any]:
        attrs = dict(wait.info.attrs)
        self._actor_attrs(attrs, wait.actor, wait.task, wait.actor_name)
        attrs[events.ATTR_SINCE] = wait.since_ns
        if wait.holder_token is not None:
            attrs[events.ATTR_LOCK_HOLDER_TOKEN] = wait.holder_token
        if wait.holder_owner is not None:
            attrs[events.ATTR_LOCK_HOLDER_OWNER] = wait.holder_owner
        if wait.ticket is not None:
            attrs[events.ATTR_QUEUE_POSITION] = wait.ticket
        if wait.code is not None:
            attrs[events.ATTR_CODE_FILE] = wait.code[0]
            attrs[events.ATTR_CODE_LINE] = wait.code[1]
            attrs[events.ATTR_CODE_FUNCTION] = wait.code[2]
        return attrs

    def _hold_attrs(self, hold: Hold) -> dict[str, Any]:
        attrs = dict(hold.info.attrs)
        self._actor_attrs(attrs, hold.actor, hold.task, hold.actor_name)
        attrs[events.ATTR_SINCE] = hold.since_ns
        if hold.token is not None:
            attrs[events.ATTR_LOCK_TOKEN] = hold.token
        if hold.owner is not None:
            owner = hold.owner
            if isinstance(owner, bytes):  # kept raw on the hot path, decoded when reported
                owner = owner.decode("utf-8", "backslashreplace")
            attrs[events.ATTR_LOCK_OWNER] = owner
        if hold.expires_at is not None:
            attrs[events.ATTR_LOCK_EXPIRES_AT] = hold.expires_at
        return attrs


def _pair_attrs(first: str, first_system: str, second: str, second_system: str,
                ident: int) -> dict[str, Any]:  # fmt: skip
    return {
        events.ATTR_ORDER_FIRST: first,
        events.ATTR_ORDER_FIRST_MODE: "exclusive",
        events.ATTR_ORDER_SYSTEM_FIRST: first_system,
        events.ATTR_ORDER_SECOND: second,
        events.ATTR_ORDER_SECOND_MODE: "exclusive",
        events.ATTR_ORDER_SYSTEM_SECOND: second_system,
        events.ATTR_ACTOR_ID: actor_id(ident, None),
    }


def task_name(task: Any) -> str | None:
    """An asyncio task's name, if it has one."""
    try:
        name = task.get_name()
    except Exception:
        return None
    return name if isinstance(name, str) else None
