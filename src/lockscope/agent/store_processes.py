"""The store's processes: who reports, liveness by heartbeat, and what a gone process leaves.

A process is known from its first report of any kind (event, heartbeat, metrics), under its
``service.instance.id``.  It is presumed dead when it stays silent past its liveness
timeout (a few heartbeat intervals), or gone when its last snapshot said it exits.  A gone
process's waits and in-process holds end at once; its holds with a lease end when the lease
does (``lease_grace`` later); whatever is left is dropped when the process is forgotten
(``dead_process_retention``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lockscope.agent.graph import Hold, Process
from lockscope.agent.model import ProcessInfo, RejectedEvent
from lockscope.agent.store_changes import ProcessDied, ProcessForgotten, ProcessRevived
from lockscope.agent.store_records import Timers

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["Processes"]

_NS = 1_000_000_000
_ZK_MIN_SESSION_NS = 4 * _NS
_ZK_MAX_SESSION_NS = 40 * _NS
_EVICT_SCAN = 256
"""Processes looked at for one eviction before the newcomer is refused."""


def lease_end(hold: Hold, proc: Process) -> int | None:
    """When the lock server ends ``hold`` by itself once its holder is gone: its lease
    (Redis TTL, database lease), or ``session timeout`` after the holder's last report for
    a session-bound hold (ZooKeeper: its ephemeral node goes with the session; at least
    ZooKeeper's default minimum session of 4 s, and 40 s, its default maximum, when the
    sender did not say).  None: nothing ends it but a release."""
    if hold.expires_at_ns is not None:
        return hold.expires_at_ns
    if hold.lock.system != "zookeeper":
        return None
    session = proc.session_ns or _ZK_MAX_SESSION_NS
    interval = int((proc.interval or 1.0) * _NS)
    return proc.last_seen_ns + interval + max(session, _ZK_MIN_SESSION_NS)


class Processes:
    """The store's processes by instance id, with their liveness checks and timers."""

    def __init__(self, store: LockStore) -> None:
        self._store = store
        self._config = store.config
        self._by_instance: dict[str, Process] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        """Instances, least recently heard from first (who makes room at the limit)."""
        self._timers = Timers()
        self.get: Callable[[str], Process | None] = self._by_instance.get
        """The process with this ``service.instance.id`` (the dict's own ``get``: the
        agent looks a process up on every event)."""
        self._timeouts: dict[float | None, int] = {}
        """Liveness timeout in ns by heartbeat interval (the config is frozen; a fleet
        uses a few intervals): one look-up per event instead of the arithmetic."""

    def __iter__(self) -> Iterator[Process]:
        return iter(self._by_instance.values())

    def __len__(self) -> int:
        return len(self._by_instance)

    def liveness_scheduled(self) -> set[tuple[int, str]]:
        """Pending liveness checks (for invariant checks)."""
        return self._timers.liveness_scheduled()

    def reported(self, info: ProcessInfo, now: int) -> Process:
        """The process ``info`` names, created (within ``max_processes``) or revived."""
        if info.__class__ is not ProcessInfo and not isinstance(info, ProcessInfo):
            raise RejectedEvent("event has no process")
        proc = self._by_instance.get(info.instance)
        config = self._config
        if proc is None:
            if len(self._by_instance) >= config.limits.max_processes and not self._evict_one():
                self._store.limit_hit("max_processes")
                raise RejectedEvent("too many processes (limits.max_processes)", "limit")
            proc = Process(info, now)
            self._by_instance[info.instance] = proc
            self._recent[info.instance] = None
            proc.deadline_ns = now + int(config.liveness_timeout(None) * _NS)
            self._schedule(proc)
            return proc
        proc.last_seen_ns = now
        self._recent.move_to_end(info.instance)
        interval = proc.interval if proc.last_heartbeat_ns else None
        timeout_ns = self._timeouts.get(interval)
        if timeout_ns is None:
            timeout_ns = int(config.liveness_timeout(interval) * _NS)
            if len(self._timeouts) < 64:
                self._timeouts[interval] = timeout_ns
        proc.deadline_ns = now + timeout_ns
        if not proc.alive:
            proc.alive = True
            proc.exited = False
            proc.dead_since_ns = None
            self._schedule(proc)
            self._store.emit(ProcessRevived(proc))
        return proc

    def _evict_one(self) -> bool:
        """Make room for a new process at ``max_processes``: forget the least recently
        heard-from process that has no waits and no holds (a flood of fake processes, one
        heartbeat each, reports nothing).  A process with waits or holds, alive or dead
        (orphaned holds), is never evicted; an evicted one is simply new again when it
        next reports.  False when every process has something (the newcomer is refused)."""
        recent, by_instance = self._recent, self._by_instance
        for _ in range(min(len(recent), _EVICT_SCAN)):
            instance = next(iter(recent))
            proc = by_instance.get(instance)
            if proc is None:
                del recent[instance]
                continue
            if proc.actors:
                recent.move_to_end(instance)  # busy: look at it again only after the rest
                continue
            del recent[instance]
            del by_instance[instance]
            self._store.counters.processes_evicted += 1
            self._store.emit(ProcessForgotten(proc))
            for callback in list(self._store.on_process_forgotten):
                callback(instance)
            return True
        return False

    def seen(self, info: ProcessInfo, now: int) -> None:
        """The process sent something other than events (metrics): known from now on and
        alive meanwhile, but a process that is gone stays gone (metrics of its last moments
        may arrive after its exit snapshot)."""
        proc = self._by_instance.get(info.instance)
        if proc is None or proc.alive:
            self.reported(info, now)

    def first_heartbeat(self, proc: Process, now: int) -> None:
        """The process told its heartbeat interval: its liveness deadline follows it."""
        proc.deadline_ns = now + int(self._config.liveness_timeout(proc.interval) * _NS)
        if proc.deadline_ns < proc.wake_ns:
            self._schedule(proc)

    def _schedule(self, proc: Process) -> None:
        # One live heap entry per process (wake_ns marks it); a later deadline is handled
        # by re-scheduling when the entry comes due, an earlier one needs a new entry.
        proc.wake_ns = proc.deadline_ns
        self._timers.check_liveness(proc.deadline_ns, proc.info.instance)

    def tick(self, now: int) -> None:
        """Presume silent processes dead; end the leases and forget the dead due now."""
        for wake, instance in self._timers.due_liveness(now):
            proc = self._by_instance.get(instance)
            if proc is None or not proc.alive or proc.wake_ns != wake:
                continue
            if proc.deadline_ns > now:
                self._schedule(proc)
                continue
            self.gone(proc)
        for kind, payload in self._timers.due(now):
            if kind == "forget":
                self._forget(*payload)
            elif kind == "lease_end":
                hold: Hold = payload
                if hold.actor.holds.get(hold.lock.key) is hold and not hold.actor.process.alive:
                    self._store.drop_hold(hold, tombstone=False, reason="lease_expired")

    def gone(self, proc: Process, exited: bool = False) -> None:
        """The process stopped (``exited``: it said so, else it went silent); in-process and
        process-bound holds end with it."""
        store, config = self._store, self._config
        now = store.now_ns
        proc.alive = False
        proc.exited = exited
        proc.dead_since_ns = now
        if exited:
            store.counters.processes_exited += 1
        else:
            store.counters.processes_presumed_dead += 1
        in_process = config.in_process_systems
        grace = int(config.lease_grace * _NS)
        for actor in list(proc.actors.values()):
            if actor.wait is not None:
                store.drop_wait(actor.wait, tombstone=False)
            for hold in list(actor.holds.values()):
                # A hold another process reports (a database watcher's row lock of this
                # actor's session) is that reporter's to keep or drop.
                if hold.lock.system in in_process or hold.lock.process_bound or hold.source:
                    store.drop_hold(hold, tombstone=False, reason="process_dead")
                    continue
                end = lease_end(hold, proc)
                if end is not None:
                    self._timers.add(max(end + grace, now), "lease_end", hold)
        store.emit(ProcessDied(proc, exited))
        retention = int(config.dead_process_retention * _NS)
        self._timers.add(now + retention, "forget", (proc, now))

    def _forget(self, proc: Process, dead_since: int) -> None:
        if proc.alive or proc.dead_since_ns != dead_since:
            return
        if any(lease_end(h, proc) is None for a in proc.actors.values() for h in a.holds.values()):
            # A hold that no server lease ends (a redis-py lock without a timeout) outlives
            # its dead holder until someone else takes the lock: keep it (and its orphaned
            # finding) rather than forget it while the lock is still stuck.
            retention = int(self._config.dead_process_retention * _NS)
            self._timers.add(self._store.now_ns + retention, "forget", (proc, dead_since))
            return
        for actor in list(proc.actors.values()):
            for hold in list(actor.holds.values()):
                self._store.drop_hold(hold, tombstone=False, reason="forgotten")
        if self._by_instance.get(proc.info.instance) is proc:
            del self._by_instance[proc.info.instance]
            self._recent.pop(proc.info.instance, None)
            self._store.emit(ProcessForgotten(proc))
            for callback in list(self._store.on_process_forgotten):
                callback(proc.info.instance)
