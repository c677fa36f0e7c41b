"""The store's processes: who reports, liveness by heartbeat, and what a gone process leaves.

A process is known from its first report of any kind, under its ``service.instance.id``.
It is presumed dead when it stays silent past its liveness timeout (a few heartbeat
intervals), or gone when it said it exits.  A gone process's waits and in-process holds end
at once; its holds with a lease end when the lease does (``lease_grace`` later); whatever is
left is dropped when the process is forgotten (``dead_process_retention``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from lockscope.agent.graph import Hold, Process
from lockscope.agent.model import ProcessInfo, RejectedEvent
from lockscope.agent.store_changes import ProcessDied, ProcessForgotten, ProcessRevived
from lockscope.agent.store_records import Timers

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["Processes"]

_NS = 1_000_000_000


class Processes:
    """The store's processes by instance id, with their liveness checks and timers."""

    def __init__(self, store: LockStore) -> None:
        self._store = store
        self._config = store.config
        self._by_instance: dict[str, Process] = {}
        self._timers = Timers()

    def __iter__(self) -> Iterator[Process]:
        return iter(self._by_instance.values())

    def __len__(self) -> int:
        return len(self._by_instance)

    def get(self, instance: str) -> Process | None:
        """The process with this ``service.instance.id``."""
        return self._by_instance.get(instance)

    def liveness_scheduled(self) -> set[tuple[int, str]]:
        """Pending liveness checks (for invariant checks)."""
        return self._timers.liveness_scheduled()

    def reported(self, info: ProcessInfo, now: int) -> Process:
        """The process ``info`` names, created (within ``max_processes``) or revived."""
        if not isinstance(info, ProcessInfo):
            raise RejectedEvent("event has no process")
        proc = self._by_instance.get(info.instance)
        config = self._config
        if proc is None:
            if len(self._by_instance) >= config.limits.max_processes:
                self._store.limit_hit("max_processes")
                raise RejectedEvent("too many processes (limits.max_processes)", "limit")
            proc = Process(info, now)
            self._by_instance[info.instance] = proc
            proc.deadline_ns = now + int(config.liveness_timeout(None) * _NS)
            self._schedule(proc)
            return proc
        proc.last_seen_ns = now
        timeout = config.liveness_timeout(proc.interval if proc.last_heartbeat_ns else None)
        proc.deadline_ns = now + int(timeout * _NS)
        if not proc.alive:
            proc.alive = True
            proc.dead_since_ns = None
            self._schedule(proc)
            self._store.emit(ProcessRevived(proc))
        return proc

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
        proc.dead_since_ns = now
        if not exited:
            store.counters.processes_presumed_dead += 1
        in_process = config.in_process_systems
        grace = int(config.lease_grace * _NS)
        for actor in list(proc.actors.values()):
            if actor.wait is not None:
                store.drop_wait(actor.wait, tombstone=False)
            for hold in list(actor.holds.values()):
                if hold.lock.system in in_process or hold.lock.process_bound:
                    store.drop_hold(hold, tombstone=False, reason="process_dead")
                elif hold.expires_at_ns is not None:
                    self._timers.add(max(hold.expires_at_ns + grace, now), "lease_end", hold)
        store.emit(ProcessDied(proc, exited))
        retention = int(config.dead_process_retention * _NS)
        self._timers.add(now + retention, "forget", (proc, now))

    def _forget(self, proc: Process, dead_since: int) -> None:
        if proc.alive or proc.dead_since_ns != dead_since:
            return
        for actor in list(proc.actors.values()):
            for hold in list(actor.holds.values()):
                self._store.drop_hold(hold, tombstone=False, reason="forgotten")
        if self._by_instance.get(proc.info.instance) is proc:
            del self._by_instance[proc.info.instance]
            self._store.emit(ProcessForgotten(proc))
            for callback in list(self._store.on_process_forgotten):
                callback(proc.info.instance)
