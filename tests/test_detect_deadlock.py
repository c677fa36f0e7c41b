"""The deadlock detector (lockscope.agent.detect_deadlock), one semantic per test: rings,
self, read-write upgrade, FIFO queue, semaphores, cross-system, resolution, the findings
feed and the evidence gate."""

from __future__ import annotations

import pytest

from agent_helpers import FIFO, World, ring
from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.export_alertmanager import alert_labels
from lockscope.agent.findings import Finding
from lockscope.agent.state import AgentState
from lockscope.agent.web_api import (
    api_deadlocks,
)


# -- deadlocks --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 8])
def test_ring_of_n_is_one_deadlock_with_all_participants(n: int) -> None:
    w = World()
    actors = ring(w, n)
    assert w.deadlocks() == [w.keys(*actors)]
    [d] = w.active("deadlocks")
    assert sorted(d["locks"]) == sorted(f"L{i}" for i in range(n))
    assert {p["pid"] for p in d["participants"]} == {1001 + i for i in range(n)}
    for p in d["participants"]:
        i = p["pid"] - 1001
        assert p["holds"] == [f"L{i}"]
        assert p["waits_for"] == f"L{(i + 1) % n}"
        assert p["service"] == "svc"
        assert p["waiting_since"].endswith("Z")
    # the youngest waiter is the last one to start waiting
    assert d["victim"] == f"svc:{1000 + n}/thread:1"
    assert w.state.deadlocks.counters.detected_total == 1


def test_ring_not_closed_is_no_deadlock() -> None:
    w = World()
    for i in range(4):
        w.hold(f"{i + 1}.1", f"L{i}")
    for i in range(3):
        w.wait(f"{i + 1}.1", f"L{i + 1}")
    assert w.deadlocks() == []
    assert w.active("deadlocks") == []


def test_self_deadlock_on_non_reentrant_lock() -> None:
    w = World()
    w.hold("1.1", "A")
    w.advance(0.5)
    w.wait("1.1", "A")
    assert w.deadlocks() == [w.keys("1.1")]
    [d] = w.active("deadlocks")
    assert d["participants"][0]["holds"] == ["A"]
    assert d["participants"][0]["waits_for"] == "A"


def test_cross_system_ring_redis_zookeeper_database() -> None:
    w = World()
    actors = ring(w, 3, systems=["redis", "zookeeper", "database"])
    assert w.deadlocks() == [w.keys(*actors)]
    [d] = w.active("deadlocks")
    assert d["systems"] == ["database", "redis", "zookeeper"]


def test_same_name_on_two_systems_is_two_locks() -> None:
    w = World()
    w.hold("1.1", "X", system="redis")
    w.hold("2.1", "X", system="zookeeper")
    w.wait("1.1", "X", system="zookeeper")
    w.wait("2.1", "Y", system="redis")
    assert w.deadlocks() == []


def test_read_write_upgrade_deadlock_two_readers() -> None:
    w = World()
    w.hold("1.1", "RW", mode="read", **FIFO)
    w.hold("2.1", "RW", mode="read", **FIFO)
    w.advance(0.3)
    w.wait("1.1", "RW", mode="write", **FIFO)
    # alone, an upgrade waits for itself too (kazoo's write node queues after its own read node)
    assert w.deadlocks() == [w.keys("1.1")]
    w.wait("2.1", "RW", mode="write", **FIFO)
    assert w.deadlocks() == [w.keys("1.1", "2.1")]
    # the larger deadlock superseded the smaller one
    resolved = [d for d in api_deadlocks(w.state)["deadlocks"] if d["status"] == "resolved"]
    assert [d["resolution"] for d in resolved] == ["superseded"]


def test_readers_sharing_is_no_deadlock() -> None:
    w = World()
    w.hold("1.1", "R1", mode="read")
    w.hold("2.1", "R2", mode="read")
    w.wait("1.1", "R2", mode="read")
    w.wait("2.1", "R1", mode="read")
    assert w.deadlocks() == []


def test_fifo_queue_deadlock_through_a_queued_writer() -> None:
    # A reader that the holder would let in waits behind a queued writer (soft edge):
    # 1 holds Q (read) and waits for M; 2 queued for Q (write); 3 holds M, queued for Q (read).
    w = World()
    w.hold("1.1", "Q", mode="read", **FIFO)
    w.hold("3.1", "M")
    w.wait("2.1", "Q", mode="write", **FIFO, **{ev.ATTR_QUEUE_POSITION: 10})
    w.wait("3.1", "Q", mode="read", **FIFO, **{ev.ATTR_QUEUE_POSITION: 11})
    assert w.deadlocks() == []
    w.wait("1.1", "M")
    assert w.deadlocks() == [w.keys("1.1", "2.1", "3.1")]


def test_same_situation_without_fifo_is_no_deadlock() -> None:
    w = World()
    w.hold("1.1", "Q", mode="read")
    w.hold("3.1", "M")
    w.wait("2.1", "Q", mode="write", **{ev.ATTR_QUEUE_POSITION: 10})
    w.wait("3.1", "Q", mode="read", **{ev.ATTR_QUEUE_POSITION: 11})
    w.wait("1.1", "M")
    assert w.deadlocks() == []


def test_semaphore_cycle_that_can_proceed_is_no_deadlock() -> None:
    # S has 2 permits, held by 1 and 2; 3 waits for S.  1 waits for a lock 3 holds: a cycle
    # (3 -> 1 -> 3), but 2 is free and will return its permit, so 3 proceeds.
    w = World()
    sem = {ev.ATTR_LOCK_MAX_LEASES: 2}
    w.hold("1.1", "S", mode="semaphore", **sem)
    w.hold("2.1", "S", mode="semaphore", **sem)
    w.hold("3.1", "X")
    w.wait("3.1", "S", mode="semaphore", **sem)
    w.wait("1.1", "X")
    assert w.deadlocks() == []
    # Now 2 also waits for 3: a knot, no participant can proceed.
    w.wait("2.1", "X")
    assert w.deadlocks() == [w.keys("1.1", "2.1", "3.1")]
    # 2 gives up: 3 can get 2's permit once 2 releases... 2 still holds it, but is no
    # longer stuck, so the knot is gone.
    w.end_wait("2.1", "X")
    assert w.deadlocks() == []


def test_semaphore_without_max_leases_never_reports() -> None:
    w = World()
    w.hold("1.1", "S", mode="semaphore")
    w.hold("2.1", "X")
    w.wait("2.1", "S", mode="semaphore")
    w.wait("1.1", "X")
    assert w.deadlocks() == []


def test_semaphore_knot_found_when_blocked_by_another_deadlock() -> None:
    # 2 holds a permit of S and gets stuck behind an existing deadlock (4 <-> 5); then the
    # cycle 1 <-> 3 through S cannot proceed either.
    w = World()
    sem = {ev.ATTR_LOCK_MAX_LEASES: 2}
    w.hold("4.1", "D1")
    w.hold("5.1", "D2")
    w.wait("4.1", "D2")
    w.wait("5.1", "D1")
    w.hold("1.1", "S", mode="semaphore", **sem)
    w.hold("2.1", "S", mode="semaphore", **sem)
    w.hold("3.1", "X")
    w.wait("3.1", "S", mode="semaphore", **sem)
    w.wait("1.1", "X")
    assert w.deadlocks() == [w.keys("4.1", "5.1")]
    w.wait("2.1", "D1")
    assert sorted(map(sorted, w.deadlocks())) == sorted(
        [sorted(w.keys("4.1", "5.1")), sorted(w.keys("1.1", "3.1"))]
    )


def test_resolves_when_a_participant_gives_up() -> None:
    w = World()
    actors = ring(w, 3)
    [d] = w.active("deadlocks")
    w.advance(1)
    w.end_wait(actors[1], "L2", outcome="timeout")
    assert w.active("deadlocks") == []
    [r] = api_deadlocks(w.state)["deadlocks"]
    assert r["id"] == d["id"]
    assert r["status"] == "resolved"
    assert r["resolution"] == "wait_ended"
    assert r["resolved_at"] > r["detected_at"]


def test_resolves_when_a_participant_process_dies() -> None:
    w = World()
    for a, holds, _waits in (("1.1", "A", "B"), ("2.1", "B", "A")):
        w.hold(a, holds)
    w.wait("1.1", "B")
    w.wait("2.1", "A")
    for p in (1, 2):
        w.heartbeat(p, holds=[], waits=[], t=w.now - 1)  # announce 1 s heartbeats
    assert len(w.active("deadlocks")) == 1
    # process 1 keeps heartbeating (with its state); process 2 goes silent
    for _ in range(4):
        w.advance(1.0)
        w.heartbeat(
            1,
            holds=[w.entry("1.1", "A", since=w.hold_since("1.1", "A") or 0)],
            waits=[w.entry("1.1", "B", since=w.wait_since("1.1") or 0)],
        )
    [r] = api_deadlocks(w.state)["deadlocks"]
    assert r["status"] == "resolved"
    assert r["resolution"] == "process_dead"
    # the dead process's hold of B is now an orphaned stale holder
    [s] = w.active("stale_holders")
    assert (s["reason"], s["lock"], s["pid"]) == ("orphaned", "B", 1002)


def test_smaller_cycle_left_after_resolution_is_reported() -> None:
    # 1 <-> 2 and 2 <-> 3 share actor 2 through a read-write lock held by 1 and 3:
    # one strongly connected group; when 1 gives up, 2 <-> 3 is still a deadlock.
    w = World()
    w.hold("1.1", "R", mode="read")
    w.hold("3.1", "R", mode="read")
    w.hold("2.1", "B")
    w.wait("2.1", "R", mode="write")
    w.wait("1.1", "B")
    w.wait("3.1", "B")
    assert w.deadlocks() == [w.keys("1.1", "2.1", "3.1")]
    w.end_wait("1.1", "B")
    assert w.deadlocks() == [w.keys("2.1", "3.1")]


def test_stable_id_after_agent_restart_from_heartbeats() -> None:
    w = World()
    ring(w, 2)
    [d] = w.active("deadlocks")
    snapshot = {
        1: (
            [w.entry("1.1", "L0", w.hold_since("1.1", "L0") or 0)],
            [w.entry("1.1", "L1", w.wait_since("1.1") or 0)],
        ),
        2: (
            [w.entry("2.1", "L1", w.hold_since("2.1", "L1") or 0)],
            [w.entry("2.1", "L0", w.wait_since("2.1") or 0)],
        ),
    }
    # a fresh agent learns everything from the next heartbeats
    w2 = World()
    w2.now = w.now
    for p, (holds, waits) in snapshot.items():
        w2.heartbeat(p, holds=holds, waits=waits)
    [d2] = w2.active("deadlocks")
    assert d2["id"] == d["id"]
    assert {p["actor"] for p in d2["participants"]} == {p["actor"] for p in d["participants"]}


def test_confirm_after_defers_and_counts_rejected_candidates() -> None:
    w = World(AgentConfig(confirm_after=0.3, evidence_timeout=0))
    ring(w, 2)
    assert w.active("deadlocks") == []  # candidate pending
    w.advance(0.31)
    assert len(w.active("deadlocks")) == 1
    # a candidate that vanishes before confirmation is a rejected (false) candidate
    w.hold("5.1", "P")
    w.hold("6.1", "Q")
    w.wait("5.1", "Q")
    w.wait("6.1", "P")
    w.end_wait("6.1", "P")
    w.advance(0.31)
    assert len(w.active("deadlocks")) == 1
    assert w.state.deadlocks.counters.candidates_rejected_total == 1


def test_consistent_order_under_contention_is_no_deadlock() -> None:
    w = World()
    # many actors taking A then B, in the same order: long queues, no cycle
    w.hold("1.1", "A")
    w.advance(0.01)
    w.hold("1.1", "B")
    for i in range(2, 30):
        w.wait(f"{i}.1", "A", **FIFO)
        w.advance(0.001)
    assert w.deadlocks() == []
    assert w.state.deadlocks.counters.searches_total == 0  # nobody waits for a waiter


# -- findings feed ---------------------------------------------------------------------------------
def test_subscribe_and_findings_feed() -> None:
    w = World()
    seen: list[tuple[str, str]] = []

    def listen(f: Finding) -> None:
        seen.append((f.kind, f.status))

    unsubscribe = w.state.subscribe_findings(listen)
    ring(w, 2)
    w.end_wait("1.1", "L1")
    assert seen == [("deadlock", "active"), ("deadlock", "resolved")]
    [f] = list(w.state.findings())
    assert alert_labels(f)["alertname"] == "LockDeadlock"
    assert alert_labels(f)["id"] == f.id
    assert "waits for" in f.text
    unsubscribe()
    ring(w, 2)
    assert len(seen) == 2


def test_event_order_within_a_ring_does_not_matter() -> None:
    # every permutation of the four events of a 2-ring gives the same deadlock
    import itertools

    base = World()
    t = base.now
    evs = [
        (ev.EVENT_HOLD_START, "1.1", "A", t),
        (ev.EVENT_HOLD_START, "2.1", "B", t + 1),
        (ev.EVENT_WAIT_START, "1.1", "B", t + 2),
        (ev.EVENT_WAIT_START, "2.1", "A", t + 3),
    ]
    ids = set()
    for perm in itertools.permutations(evs):
        st = AgentState(clock=lambda: t + 10)
        for name, actor, lock, since in perm:
            attrs = base.lock_attrs(lock)
            attrs[ev.ATTR_SINCE] = since
            st.apply(base.event(name, actor, attrs, since + 5))
        [members] = st.deadlocks.active_members()
        assert len(members) == 2
        ids.add(api_deadlocks(st)["deadlocks"][0]["id"])
    assert len(ids) == 1


# -- evidence gate (phantom edges from lost release events) ------------------------------------
def gated() -> World:
    return World(AgentConfig())  # the default evidence_timeout


def test_phantom_self_deadlock_from_lost_release_is_never_reported() -> None:
    w = gated()
    w.heartbeat(1)
    w.hold("1.1", "A")
    w.advance(0.1)  # released A, but the hold.end was lost; then it waits for A again
    w.wait("1.1", "A")
    assert w.active("deadlocks") == []
    w.advance(0.9)
    w.heartbeat(1, waits=[w.entry("1.1", "A", w.wait_since("1.1") or 0)])  # no hold of A
    assert w.active("deadlocks") == []
    assert w.state.deadlocks.counters.candidates_rejected_total == 1
    w.advance(5)
    assert w.state.deadlocks.counters.detected_total == 0


def test_real_deadlock_with_old_hold_evidence_is_confirmed_by_the_next_heartbeat() -> None:
    w = gated()
    w.heartbeat(1)
    w.heartbeat(2)
    since = {"1.1": w.now, "2.1": w.now}
    w.hold("1.1", "A")
    w.hold("2.1", "B")
    w.advance(0.5)
    w.wait("1.1", "B")
    w.wait("2.1", "A")
    assert w.active("deadlocks") == []  # holds last asserted before the waits began
    w.advance(0.4)
    w.heartbeat(
        1,
        holds=[w.entry("1.1", "A", since["1.1"])],
        waits=[w.entry("1.1", "B", w.wait_since("1.1") or 0)],
    )
    assert w.active("deadlocks") == []  # 2's hold of B still unconfirmed
    w.heartbeat(
        2,
        holds=[w.entry("2.1", "B", since["2.1"])],
        waits=[w.entry("2.1", "A", w.wait_since("2.1") or 0)],
    )
    assert w.deadlocks() == [w.keys("1.1", "2.1")]


def test_holder_owner_seen_by_the_waiter_is_fresh_evidence() -> None:
    w = gated()
    w.heartbeat(1)
    w.heartbeat(2)
    w.hold("1.1", "A", **{ev.ATTR_LOCK_OWNER: "o-1"})
    w.hold("2.1", "B", **{ev.ATTR_LOCK_TOKEN: 17})
    w.advance(0.5)
    w.wait("1.1", "B", **{ev.ATTR_LOCK_HOLDER_TOKEN: 17})
    w.wait("2.1", "A", **{ev.ATTR_LOCK_HOLDER_OWNER: "o-1"})
    assert w.deadlocks() == [w.keys("1.1", "2.1")]


def test_evidence_timeout_reports_for_senders_without_heartbeats() -> None:
    w = gated()
    w.hold("1.1", "A")
    w.hold("2.1", "B")
    w.advance(0.5)
    w.wait("1.1", "B")
    w.wait("2.1", "A")
    assert w.active("deadlocks") == []
    w.advance(2.4)
    assert w.active("deadlocks") == []
    w.advance(0.2)
    assert len(w.active("deadlocks")) == 1
