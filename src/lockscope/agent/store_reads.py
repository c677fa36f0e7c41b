"""The store's read side (a mixin of :class:`~lockscope.agent.store.LockStore`): counts,
iteration and look-ups for the API, the metrics and the tests; nothing here changes state."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, cast

from lockscope.agent.graph import Actor, Lock, Process

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore
    from lockscope.agent.store_processes import Processes
    from lockscope.agent.store_records import Tombstones

__all__ = ["StoreReads"]

OTHER_LABEL = "{other}"


class StoreReads:
    """What the store tracks, read only."""

    _nholds: int
    _nwaits: int
    _semaphore_waits: int
    _locks: dict[str, Lock]
    _labels: set[str]
    _waiters: dict[str, int]
    _tombstones: Tombstones
    procs: Processes

    @property
    def hold_count(self) -> int:
        """Holds tracked now."""
        return self._nholds

    @property
    def wait_count(self) -> int:
        """Waits tracked now."""
        return self._nwaits

    @property
    def lock_count(self) -> int:
        """Locks tracked now."""
        return len(self._locks)

    @property
    def semaphore_wait_count(self) -> int:
        """Waits in semaphore mode now."""
        return self._semaphore_waits

    def label_of(self, template: str) -> str:
        """The label value :meth:`label` gave ``template`` (without counting anything)."""
        return template if template in self._labels else OTHER_LABEL

    def processes(self) -> Iterator[Process]:
        """Every known process, alive or dead (until forgotten)."""
        return iter(self.procs)

    def reporting_processes(self) -> int:
        """Processes alive now (``lockscope_agent_reporting_processes``)."""
        return sum(1 for p in self.procs if p.alive)

    def waiters_by_lock(self) -> dict[str, int]:
        """Current waiters per lock template (``lockscope_lock_waiters{lock}``)."""
        return {k: v for k, v in self._waiters.items() if v}

    def actors(self) -> Iterator[Actor]:
        """Every actor with a reported hold or wait."""
        for proc in self.procs:
            yield from proc.actors.values()

    def locks(self) -> Iterator[Lock]:
        """Every lock with a reported hold or wait."""
        return iter(self._locks.values())

    @property
    def lock_index(self) -> Mapping[str, Lock]:
        """Tracked locks by key (read only)."""
        return self._locks

    def find_lock(self, name: str) -> Lock | None:
        """A lock by key (``system:namespace/name``) or, failing that, by name."""
        lock = self._locks.get(name)
        if lock is not None:
            return lock
        for lock in self._locks.values():
            if lock.name == name:
                return lock
        return None

    def check_invariants(self) -> None:
        """Recount every hand-kept counter and index; AssertionError names the first that
        disagrees (for tests, as abseil's ``GraphCycles::CheckInvariants``)."""
        from lockscope.agent.store_invariants import check_invariants

        check_invariants(cast("LockStore", self), self.procs.liveness_scheduled())
        self._tombstones.check_invariants()
