"""The recorder's in-process side: holds of ``threading`` locks, kept on the lock itself.

A traced in-process lock (:mod:`.threading_locks`) records its own uncontended holds: a
timestamp on the lock and an append to its thread's list of held locks when taken; a pop
and an append of the hold's duration to the lock's own list when released.  This mixin of
:class:`~lockscope.instrumentation.recorder.Recorder` does the rest off that path: the
order pairs when a thread takes a lock while holding another, the hold events of holds
that last ``report_after`` (reporter thread), and folding the durations into the metrics.

No registry lock on the caller's path: each step is one GIL-atomic operation, the lock
object's own fields are written while it is held, and the reporter re-checks what it reads.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from lockscope import events
from lockscope.instrumentation.metrics_aggregate import LockStats
from lockscope.instrumentation.records import Hold, InProcessLock, actor_id

__all__ = ["InProcessRegistry"]

_perf = time.perf_counter_ns


class InProcessRegistry:
    """The in-process part of the recorder (its fields are set by ``Recorder.reset``)."""

    _lock: Any
    offset: int
    by_actor: dict[int, list[Hold]]
    stats: LockStats
    light: dict[int, list[InProcessLock]]
    """thread ident -> in-process locks it holds, oldest first; each thread writes only
    its own list."""
    light_tasks: dict[int, list[InProcessLock]]
    """The same for asyncio tasks (``id(task)``): the asyncio.Lock target."""
    dirty: set[InProcessLock]
    """In-process locks with hold durations the reporter has not folded yet."""
    _light_reported: dict[int, Hold]
    _light_pairs: set[tuple[str, str]]

    def _reset_in_process(self) -> None:
        self.light = {}
        self.light_tasks = {}
        self.dirty = set()
        self._light_reported = {}
        self._light_pairs = set()

    def emit(self, name: str, perf_ns: int, attrs: dict[str, Any]) -> None:
        raise NotImplementedError

    def _emit(self, name: str, perf_ns: int, attrs: dict[str, Any]) -> None:
        raise NotImplementedError

    def _hold_attrs(self, hold: Hold) -> dict[str, Any]:
        raise NotImplementedError

    # -- caller's thread, off the lean path ----------------------------------------------
    def light_acquired(self, lock: InProcessLock, ident: int, task: Any = None) -> None:
        """An in-process lock was taken (``lock._since`` set) by a thread (or the asyncio
        ``task``, ``ident`` its id) that may hold another lock (order pairs to check), or
        for the first time."""
        table = self.light if task is None else self.light_tasks
        held = table.get(ident)
        if held is None:
            held = table[ident] = []
        elif held or ident in self.by_actor:
            self._light_order(held, lock, ident)
        held.append(lock)
        lock._held = held

    def light_unlisted(self, lock: InProcessLock) -> None:
        """Take ``lock`` off its thread's list when it is not the newest there."""
        with contextlib.suppress(ValueError):
            lock._held.remove(lock)

    def _light_order(self, held: list[InProcessLock], lock: InProcessLock, ident: int) -> None:
        site = lock._template
        for first in held:
            if first is lock:
                continue
            key = (first._template, site)
            if key not in self._light_pairs:
                self._light_pairs.add(key)
                self.emit(events.EVENT_ORDER_PAIR, _perf(), _pair_attrs(
                    first._template, first._system, site, lock._system, ident,
                    lock._task))  # fmt: skip
        for hold in list(self.by_actor.get(ident, ())):
            key = (hold.info.template, site)
            if key not in self._light_pairs:
                self._light_pairs.add(key)
                self.emit(events.EVENT_ORDER_PAIR, _perf(), _pair_attrs(
                    hold.info.template, hold.info.system, site, lock._system, ident,
                    lock._task))  # fmt: skip

    def report_light(self, lock: InProcessLock, ident: int) -> None:
        """Report an in-process hold now (its owner's wait was reported)."""
        with self._lock:
            self._report_light(lock, ident)

    def end_light(self, lock: InProcessLock, seconds: float) -> None:
        """A reported in-process hold ended after ``seconds``."""
        self._end_light(lock, seconds)

    # -- reporter thread ----------------------------------------------------------------
    def _report_light(self, lock: InProcessLock, ident: int) -> None:
        since = lock._since
        if not since or lock._hold is not None:
            return
        hold = Hold(lock.lock_info(), ident, lock._task, lock, since, since + self.offset,
                    None, None, None)  # fmt: skip
        hold.reported = True
        lock._hold = hold
        self._light_reported[id(lock)] = hold
        self._emit(events.EVENT_HOLD_START, since, self._hold_attrs(hold))
        if lock._since != since:  # released (or re-taken) while we looked
            self._end_light(lock, (_perf() - since) / 1e9, locked=True)

    def _report_due_light(self, threshold: int) -> None:
        for ident, locks in [*self.light.items(), *self.light_tasks.items()]:
            if not locks:
                continue
            for lock in list(locks):
                since = lock._since
                if since and since <= threshold and lock._hold is None:
                    self._report_light(lock, ident)

    def _end_light(self, lock: InProcessLock, seconds: float, locked: bool = False) -> None:
        hold = lock._hold
        lock._hold = None
        if hold is None:
            return
        if not locked:
            with self._lock:
                self._end_light_reported(lock, hold, seconds)
        else:
            self._end_light_reported(lock, hold, seconds)

    def _end_light_reported(self, lock: InProcessLock, hold: Hold, seconds: float) -> None:
        if self._light_reported.pop(id(lock), None) is not hold:
            return  # reported by this process's parent before a fork: not ours to end
        attrs = self._hold_attrs(hold)
        attrs[events.ATTR_OUTCOME] = "released"
        attrs[events.ATTR_HOLD_DURATION] = seconds
        self._emit(events.EVENT_HOLD_END, _perf(), attrs)

    def fold_light(self) -> None:
        """Move the in-process locks' hold durations, and the durations the hot path
        appended, into :attr:`stats` (reporter thread)."""
        dirty, self.dirty = self.dirty, set()
        with self._lock:
            for lock in list(dirty):
                lock.fold_into(self.stats)
        self.stats.fold()


def _pair_attrs(first: str, first_system: str, second: str, second_system: str,
                ident: int, task: Any = None) -> dict[str, Any]:  # fmt: skip
    return {
        events.ATTR_ORDER_FIRST: first,
        events.ATTR_ORDER_FIRST_MODE: "exclusive",
        events.ATTR_ORDER_SYSTEM_FIRST: first_system,
        events.ATTR_ORDER_SECOND: second,
        events.ATTR_ORDER_SECOND_MODE: "exclusive",
        events.ATTR_ORDER_SYSTEM_SECOND: second_system,
        events.ATTR_ACTOR_ID: actor_id(ident, task),
    }
