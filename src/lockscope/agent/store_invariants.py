"""The store's invariants, recounted from scratch (:meth:`LockStore.check_invariants`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lockscope.agent.graph import EXCLUSIVE, SEMAPHORE, WRITE

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["check_invariants"]


def check_invariants(store: LockStore, scheduled: set[tuple[int, str]]) -> None:
    """Recount holds, waits, semaphore waits and waiters per label from the processes'
    actors, and check each index against the objects it indexes (``scheduled``: the
    pending liveness checks).  AssertionError names the first disagreement."""
    holds = waits = sem = 0
    waiters: dict[str, int] = {}
    for proc in store.processes():
        instance = proc.info.instance
        if proc.alive:
            assert (proc.wake_ns, instance) in scheduled, f"{instance}: no liveness check"
        for actor_id, actor in proc.actors.items():
            assert actor.actor_id == actor_id, actor
            assert actor.process is proc, actor
            assert actor.wait is not None or actor.holds, f"idle actor {actor} kept"
            for key, h in actor.holds.items():
                assert h.actor is actor, h
                assert h.lock.key == key, h
                assert store.lock_index.get(key) is h.lock, f"{actor} holds untracked {key}"
                assert any(x is h for x in h.lock.holds), f"{h.lock} misses a hold"
                holds += 1
            w = actor.wait
            if w is not None:
                assert w.actor is actor, w
                assert store.lock_index.get(w.lock.key) is w.lock, f"untracked {w.lock}"
                assert any(x is w for x in w.lock.waits), f"{w.lock} misses a wait"
                waits += 1
                sem += w.mode == SEMAPHORE
                label = store.label_of(w.lock.template)
                waiters[label] = waiters.get(label, 0) + 1
    nlocks = 0
    for lock in store.locks():
        nlocks += 1
        assert lock.holds or lock.waits, f"idle lock {lock.key} kept"
        for h in lock.holds:
            assert h.actor.holds.get(lock.key) is h, f"{lock.key} lists a hold its actor lacks"
        for w in lock.waits:
            assert w.actor.wait is w, f"{lock.key} lists a wait its actor lacks"
        n_excl = sum(1 for h in lock.holds if h.mode in (EXCLUSIVE, WRITE))
        assert lock.exclusive_holds == n_excl, f"{lock.key}.exclusive_holds"
    assert store.hold_count == holds, f"_nholds {store.hold_count} != {holds}"
    assert store.wait_count == waits, f"_nwaits {store.wait_count} != {waits}"
    assert store.semaphore_wait_count == sem, f"_semaphore_waits != {sem}"
    assert store.waiters_by_lock() == waiters, f"_waiters {store.waiters_by_lock()} != {waiters}"
    limits = store.config.limits
    assert nlocks == store.lock_count <= limits.max_locks, "locks over limit"
    assert sum(1 for _ in store.processes()) <= limits.max_processes, "processes over limit"
