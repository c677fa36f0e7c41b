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

__all__ = ["Hold", "LockInfo", "PendingEvent", "Recorder", "Wait"]

PendingEvent = tuple[str, int, dict[str, Any]]
"""(event name, unix time ns, attributes) waiting in the reporter's queue."""

_perf = time.perf_counter_ns


class LockInfo:
    """What the shim knows about one lock: its identity and its kind."""

    __slots__ = (
        "adapter",
        "attrs",
        "fifo",
        "key",
        "max_leases",
        "mode",
        "name",
        "namespace",
        "reentrant",
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
        owner: str | None,
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
        self._by_actor: dict[int, list[Hold]] = {}
        self._pairs: set[tuple[str, str, str, str, str, str]] = set()
        self._events: deque[PendingEvent] = deque()
        self.dropped = 0
        """Events dropped because the queue was full (sent on heartbeats)."""
        self.errors = 0
        """Internal errors the shim swallowed (fail open)."""
        self.acquires = 0
        """Acquire calls recorded since the start (any outcome)."""
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lost: dict[tuple[str, str], int] = {}
        self._wait_samples: list[tuple[str, str, float]] = []
        self._hold_samples: list[tuple[str, str, float]] = []
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
        owner: str | None = None,
        ttl: float | None = None,
    ) -> Hold | None:
        """The acquire returned or raised; on ``acquired`` the hold starts now."""
        now = _perf()
        info = wait.info
        with self._lock:
            self._waits.discard(wait)
            if wait.reported:
                attrs = self._wait_attrs(wait)
                attrs[events.ATTR_OUTCOME] = outcome
                attrs[events.ATTR_WAIT_DURATION] = (now - wait.start) / 1e9
                self._emit(events.EVENT_WAIT_END, now, attrs)
            key = (info.template, info.system, outcome)
            self._counts[key] = self._counts.get(key, 0) + 1
            self.acquires += 1
            self._wait_samples.append((info.template, info.system, (now - wait.start) / 1e9))
            if outcome != "acquired":
                return None
            hold = self._add_hold(info, wait.actor, wait.task, wait.target, now, token, owner, ttl)
            if wait.reported:
                # Others may be waiting for this actor: the agent must see the new hold now.
                hold.actor_name = wait.actor_name
                self._report_hold(hold)
            return hold

    def acquired(
        self,
        info: LockInfo,
        actor: int,
        task: Any,
        target: object,
        *,
        token: int | None = None,
        owner: str | None = None,
        ttl: float | None = None,
    ) -> Hold:
        """An acquire that did not wait (in-process fast path)."""
        now = _perf()
        with self._lock:
            key = (info.template, info.system, "acquired")
            self._counts[key] = self._counts.get(key, 0) + 1
            self.acquires += 1
            self._wait_samples.append((info.template, info.system, 0.0))
            return self._add_hold(info, actor, task, target, now, token, owner, ttl)

    def _add_hold(
        self,
        info: LockInfo,
        actor: int,
        task: Any,
        target: object,
        now: int,
        token: int | None,
        owner: str | None,
        ttl: float | None,
    ) -> Hold:
        expires = None if ttl is None else now + self._offset + int(ttl * 1e9)
        hold = Hold(info, actor, task, target, now, now + self._offset, token, owner, expires)
        same = self._holds.get(hold.obj)
        if same is None:
            self._holds[hold.obj] = [hold]
        else:
            same.append(hold)
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
            for holds in list(self._holds.values()):
                for hold in holds:
                    if hold.info.key == key:
                        return hold
        return None

    def holder_of(self, key: str) -> Hold | None:
        """Some in-process hold of the lock ``key`` (for the wait span's link)."""
        for holds in list(self._holds.values()):
            for hold in holds:
                if hold.info.key == key:
                    return hold
        return None

    def end_hold(self, hold: Hold, outcome: str = "released") -> None:
        """The hold ended: ``released``, ``lost`` (``LockNotOwned``, session lost) or
        ``error`` (the release itself failed; the lease will run out)."""
        lost = outcome == "lost"
        now = _perf()
        info = hold.info
        with self._lock:
            same = self._holds.get(hold.obj)
            if same is None or hold not in same:
                return  # already ended (e.g. lost, then released)
            same.remove(hold)
            if not same:
                del self._holds[hold.obj]
            mine = self._by_actor.get(hold.actor)
            if mine is not None and hold in mine:
                mine.remove(hold)
                if not mine:
                    del self._by_actor[hold.actor]
            duration = (now - hold.start) / 1e9
            self._hold_samples.append((info.template, info.system, duration))
            if lost:
                key = (info.template, info.system)
                self._lost[key] = self._lost.get(key, 0) + 1
                attrs = self._hold_attrs(hold)
                attrs[events.ATTR_OUTCOME] = "lost"
                attrs[events.ATTR_HOLD_DURATION] = duration
                self._emit(events.EVENT_LOCK_LOST, now, attrs)
            if hold.reported:
                attrs = self._hold_attrs(hold)
                attrs[events.ATTR_OUTCOME] = outcome
                attrs[events.ATTR_HOLD_DURATION] = duration
                self._emit(events.EVENT_HOLD_END, now, attrs)

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
                wait.reported = True
                self._emit(events.EVENT_WAIT_START, wait.start, self._wait_attrs(wait))
            for holds in self._holds.values():
                for hold in holds:
                    if not hold.reported and hold.start <= threshold:
                        self._report_hold(hold)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The reported waits and holds, as heartbeat entries."""
        with self._lock:
            waits = [self._wait_attrs(w) for w in self._waits if w.reported]
            holds = [self._hold_attrs(h) for hs in self._holds.values() for h in hs if h.reported]
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

    def take_measurements(
        self,
    ) -> tuple[
        dict[tuple[str, str, str], int],
        dict[tuple[str, str], int],
        list[tuple[str, str, float]],
        list[tuple[str, str, float]],
    ]:
        """Hand over the metric measurements gathered since the last call."""
        with self._lock:
            taken = (self._counts, self._lost, self._wait_samples, self._hold_samples)
            self._counts, self._lost = {}, {}
            self._wait_samples, self._hold_samples = [], []
        return taken

    def counts_backlog(self) -> int:
        """Measurements not yet handed to the metric instruments."""
        return len(self._wait_samples) + len(self._hold_samples)

    def emit(self, name: str, perf_ns: int, attrs: dict[str, Any]) -> None:
        """Queue an event from outside the hot path (heartbeat)."""
        with self._lock:
            self._emit(name, perf_ns, attrs)

    # -- internals (caller holds self._lock) ---------------------------------------------
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
            attrs[events.ATTR_LOCK_OWNER] = hold.owner
        if hold.expires_at is not None:
            attrs[events.ATTR_LOCK_EXPIRES_AT] = hold.expires_at
        return attrs


def task_name(task: Any) -> str | None:
    """An asyncio task's name, if it has one."""
    try:
        name = task.get_name()
    except Exception:
        return None
    return name if isinstance(name, str) else None
