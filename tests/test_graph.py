"""The wait-for graph: edge rules per lock kind, and property-based equivalence of the
incremental deadlock detector with a from-scratch networkx analysis of the same state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_helpers import T0, S, World
from lockscope import events as ev
from lockscope.agent.graph import ExploreLimit, find_cycle, reduce, waits_for
from lockscope.agent.web_api import api_graph, api_lock

ACTORS = ["1.1", "1.2", "2.1", "3.1", "4.1"]
LOCKS = ["A", "B", "C"]


def edges_of(w: World, actor: str) -> set[tuple[str, str]]:
    key = w.actor_key(actor)
    for a in w.state.actors():
        if a.key == key:
            return {(t.key, kind) for t, _lock, kind in waits_for(a)}
    return set()


# -- edge rules ---------------------------------------------------------------------------
def test_exclusive_waiter_waits_for_holder() -> None:
    w = World()
    w.hold("1.1", "A")
    w.wait("2.1", "A")
    assert edges_of(w, "2.1") == {(w.actor_key("1.1"), "hold")}
    assert edges_of(w, "1.1") == set()


def test_read_waits_for_writer_only_and_writer_for_all() -> None:
    w = World()
    w.hold("1.1", "R", mode="read")
    w.hold("2.1", "R", mode="read")
    w.wait("3.1", "R", mode="read")
    assert edges_of(w, "3.1") == set()
    w.wait("4.1", "R", mode="write")
    assert edges_of(w, "4.1") == {(w.actor_key("1.1"), "hold"), (w.actor_key("2.1"), "hold")}


def test_fifo_soft_edges_follow_ticket_order() -> None:
    w = World()
    fifo = {ev.ATTR_LOCK_FIFO: True}
    w.hold("1.1", "Q", **fifo)
    # Reported out of order: the waiter with the later ticket arrives first.
    w.wait("3.1", "Q", **fifo, **{ev.ATTR_QUEUE_POSITION: 7})
    w.wait("2.1", "Q", **fifo, **{ev.ATTR_QUEUE_POSITION: 5})
    assert edges_of(w, "3.1") == {(w.actor_key("1.1"), "hold"), (w.actor_key("2.1"), "queue")}
    assert edges_of(w, "2.1") == {(w.actor_key("1.1"), "hold")}


def test_fifo_rw_reader_waits_for_queued_writer_ahead_but_not_queued_reader() -> None:
    w = World()
    fifo = {ev.ATTR_LOCK_FIFO: True}
    w.hold("1.1", "Q", mode="read", **fifo)
    w.wait("2.1", "Q", mode="write", **fifo, **{ev.ATTR_QUEUE_POSITION: 1})
    w.wait("3.1", "Q", mode="read", **fifo, **{ev.ATTR_QUEUE_POSITION: 2})
    w.wait("4.1", "Q", mode="read", **fifo, **{ev.ATTR_QUEUE_POSITION: 3})
    assert edges_of(w, "3.1") == {(w.actor_key("2.1"), "queue")}
    assert edges_of(w, "4.1") == {(w.actor_key("2.1"), "queue")}


def test_fifo_mixed_tickets_are_no_cycle() -> None:
    """Issue 14 item 2, the attack: a holder that does not wait, and waiters A (ticket 1),
    B (no ticket: lockscope's ZooKeeperLock adapter sends none), C (ticket 2) on one FIFO
    lock, started so that pairwise comparison gave A -> B -> C -> A."""
    w = World()
    fifo = {ev.ATTR_LOCK_FIFO: True}
    w.hold("1.1", "Q", **fifo)
    w.advance(0.01)
    w.wait("4.1", "Q", **fifo, **{ev.ATTR_QUEUE_POSITION: 2})  # C: ticket 2, started first
    w.advance(0.01)
    w.wait("3.1", "Q", **fifo)  # B: no ticket
    w.advance(0.01)
    w.wait("2.1", "Q", **fifo, **{ev.ATTR_QUEUE_POSITION: 1})  # A: ticket 1, started last
    w.advance(0.2)
    assert w.deadlocks() == []
    a, c = w.actor_key("2.1"), w.actor_key("4.1")
    queue = {
        (w.actor_key(x), t)
        for x in ("2.1", "3.1", "4.1")
        for t, kind in edges_of(w, x)
        if kind == "queue"
    }
    g = nx.DiGraph(list(queue))
    assert nx.is_directed_acyclic_graph(g)
    # the ticket order holds (A ahead of C), and every pair of waiters is ordered
    assert (c, a) in queue
    assert len(queue) == 3
    # the API lists the waiters in the same queue order: front first
    doc = api_lock(w.state, "redis:ns/Q")
    assert doc is not None
    assert [x["ticket"] for x in doc["waiters"]] == [None, 1, 2]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 6)), st.integers(0, 6)),
        min_size=2,
        max_size=7,
    ),
    st.booleans(),
)
def test_property_fifo_queue_never_a_cycle(
    waiters: list[tuple[int | None, int]], holder: bool
) -> None:
    """Random mixes of tickets (some missing, some equal) and wait starts (some equal) on
    one FIFO lock: the waiters' queue edges never form a cycle, so no deadlock is found
    (no participant of a queue waits for anything outside it), and tickets stay in order."""
    w = World()
    fifo = {ev.ATTR_LOCK_FIFO: True}
    if holder:
        w.hold("90.1", "Q", **fifo)
    names = [f"{i + 1}.1" for i in range(len(waiters))]
    for name, (ticket, start) in zip(names, waiters, strict=True):
        extra: dict[str, Any] = dict(fifo)
        if ticket is not None:
            extra[ev.ATTR_QUEUE_POSITION] = ticket
        w.wait(name, "Q", since=T0 + start * S // 10, **extra)
    w.advance(0.2)
    assert w.deadlocks() == []
    edges = [(w.actor_key(n), t) for n in names for t, kind in edges_of(w, n) if kind == "queue"]
    assert nx.is_directed_acyclic_graph(nx.DiGraph(edges))
    # a total order: every pair of waiters is ordered one way
    assert len(set(edges)) == len(names) * (len(names) - 1) // 2
    by_key = {w.actor_key(n): t for n, (t, _s) in zip(names, waiters, strict=True)}
    for behind, ahead in edges:
        tb, ta = by_key[behind], by_key[ahead]
        assert tb is None or ta is None or ta <= tb


def test_non_fifo_lock_has_no_soft_edges() -> None:
    w = World()
    w.hold("1.1", "Q")
    w.wait("2.1", "Q", **{ev.ATTR_QUEUE_POSITION: 1})
    w.wait("3.1", "Q", **{ev.ATTR_QUEUE_POSITION: 2})
    assert edges_of(w, "3.1") == {(w.actor_key("1.1"), "hold")}


def test_reentrant_lock_has_no_self_edge() -> None:
    w = World()
    w.hold("1.1", "R", **{ev.ATTR_LOCK_REENTRANT: True})
    w.advance(0.01)
    w.wait("1.1", "R", **{ev.ATTR_LOCK_REENTRANT: True})
    assert edges_of(w, "1.1") == set()
    assert w.deadlocks() == []


def test_find_cycle_respects_budget() -> None:
    w = World()
    # a chain 0 -> 1 -> ... -> 30 of waiters, each holding the lock the previous one wants
    for i in range(31):
        w.hold(f"{i}.1", f"L{i}")
    for i in range(30):
        w.wait(f"{i}.1", f"L{i + 1}")
    start = next(a for a in w.state.actors() if a.key == w.actor_key("0.1"))
    assert find_cycle(start, budget=100)[0] is None
    with pytest.raises(ExploreLimit):
        find_cycle(start, budget=10)
    assert reduce([start], budget=100).residual == set()


def test_to_networkx_export_has_actor_and_lock_nodes() -> None:
    w = World()
    w.hold("1.1", "A")
    w.wait("2.1", "A")
    g = w.state.to_networkx()
    assert g.nodes["redis:ns/A"]["type"] == "lock"
    assert g.nodes[w.actor_key("1.1")]["type"] == "actor"
    kinds = {d["type"] for _u, _v, d in g.edges(data=True)}
    assert kinds == {"waits", "holds", "waits_for"}


def test_api_graph_shape() -> None:
    w = World()
    w.hold("1.1", "A")
    w.wait("2.1", "A")
    w.hold("3.1", "idle")
    g = api_graph(w.state)
    ids = {n["id"] for n in g["nodes"]}
    assert "redis:ns/A" in ids
    assert "redis:ns/idle" not in ids
    assert {
        "source": w.actor_key("2.1"),
        "target": w.actor_key("1.1"),
        "type": "waits_for",
        "lock": "redis:ns/A",
        "kind": "hold",
    } in g["edges"]
    assert "redis:ns/idle" in {n["id"] for n in api_graph(w.state, include_idle=True)["nodes"]}


# -- property-based: incremental == from-scratch --------------------------------------------
@dataclass
class Model:
    """An independent model of holds and waits, analysed from scratch with networkx."""

    holds: dict[str, dict[str, str]] = field(default_factory=lambda: {lk: {} for lk in LOCKS})
    waits: dict[str, tuple[str, str, int, int]] = field(default_factory=dict)
    fifo: dict[str, bool] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.waits)
        for actor, (lock, mode, ticket, since) in self.waits.items():
            for holder, hmode in self.holds[lock].items():
                if mode == "semaphore" or not (mode == "read" and hmode == "read"):
                    g.add_edge(actor, holder)
            if self.fifo.get(lock) and mode != "semaphore":
                for other, (olock, omode, oticket, osince) in self.waits.items():
                    if other == actor or olock != lock or (mode == "read" and omode == "read"):
                        continue
                    # every waiter has a ticket here: ticket order, equal tickets by start
                    if (oticket, osince, other) < (ticket, since, actor):
                        g.add_edge(actor, other)
        return g

    def expected(self) -> set[frozenset[str]]:
        g = self.graph()
        if not any(m == "semaphore" for _l, m, _t, _s in self.waits.values()):
            # AND model: every cycle is a deadlock, so plain SCCs are the answer.
            residual = g
        else:
            done = {n for n in g if n not in self.waits}
            changed = True
            while changed:
                changed = False
                for actor, (lock, mode, _t, _s) in self.waits.items():
                    if actor in done:
                        continue
                    succ = set(g.successors(actor))
                    if mode == "semaphore":
                        ready = len(succ - done) < self.leases[lock]
                    else:
                        ready = succ <= done
                    if ready:
                        done.add(actor)
                        changed = True
            residual = g.subgraph(set(g) - done)
        return {
            frozenset(c)
            for c in nx.strongly_connected_components(residual)
            if len(c) > 1 or any(residual.has_edge(n, n) for n in c)
        }


OPS = st.tuples(
    st.sampled_from(["hold", "hold", "wait", "wait", "release", "end_wait"]),
    st.sampled_from(ACTORS),
    st.sampled_from(LOCKS),
    st.integers(0, 3),
)


def run_scenario(
    kind: str,
    ops: list[tuple[str, str, str, int]],
    fifo_locks: list[bool],
    lost: list[bool] | None = None,
) -> None:
    """Apply ``ops`` to the state and the model; after each step the deadlocks must match.

    With ``lost``, the i-th event is lost when ``lost[i]``; then only the end matters: after
    every process has sent a heartbeat with its true snapshot, state and model must agree.
    """
    w = World(clock_skew=0)
    m = Model()
    hold_since: dict[tuple[str, str], int] = {}
    lost_iter = iter(lost or [])
    ticket = 0
    for i, lock in enumerate(LOCKS):
        m.fifo[lock] = fifo_locks[i] if kind in ("rw", "fifo", "mixed") else False
        m.leases[lock] = 1 + i if kind in ("semaphore", "mixed") else 1
    lock_mode = {"A": "semaphore", "B": "read", "C": "exclusive"}
    for op, actor, lock, r in ops:
        key = w.actor_key(actor)
        if kind == "exclusive" or kind == "fifo":
            mode = "exclusive"
        elif kind == "rw":
            mode = "read" if r % 2 else "write"
        elif kind == "semaphore":
            mode = "semaphore"
        else:
            base = lock_mode[lock]
            mode = base if base != "read" else ("read" if r % 2 else "write")
        extra: dict[str, Any] = {ev.ATTR_LOCK_FIFO: m.fifo[lock]}
        if mode == "semaphore":
            extra[ev.ATTR_LOCK_MAX_LEASES] = m.leases[lock]
        w.advance(0.001)
        send = not next(lost_iter, False)
        if op == "hold":
            if key in m.holds[lock]:
                continue
            if send:
                w.hold(actor, lock, mode=mode, **extra)
            hold_since[key, lock] = w.now
            if mode != "semaphore":
                # a conflicting hold asserted before this one began has evidently ended
                for other, omode in list(m.holds[lock].items()):
                    if omode != "semaphore" and not (mode == "read" and omode == "read"):
                        del m.holds[lock][other]
            m.holds[lock][key] = mode
            m.waits.pop(key, None)  # an actor that acquires is not waiting any more
        elif op == "wait":
            if key in m.waits:
                continue
            ticket += 7 * r + 1 if r != 3 else -5  # some tickets arrive out of order
            extra[ev.ATTR_QUEUE_POSITION] = ticket
            if send:
                w.wait(actor, lock, mode=mode, **extra)
            m.waits[key] = (lock, mode, ticket, w.now)
        elif op == "release":
            if key not in m.holds[lock]:
                continue
            if send:
                w.release(actor, lock, since=hold_since[key, lock])
            del m.holds[lock][key]
        else:
            if key not in m.waits:
                continue
            if send:
                w.send(ev.EVENT_WAIT_END, actor, m.waits[key][0], since=m.waits[key][3])
            del m.waits[key]
        w.state.check_invariants()
        if lost is None:
            got = {frozenset(s) for s in w.deadlock_keys()}
            assert got == m.expected(), f"after {op} {actor} {lock}"
            assert len(w.active("deadlocks")) == len(got)
    if lost is None:
        return
    # every process now sends its true snapshot
    w.advance(0.5)
    for p in sorted({a.split(".")[0] for a in ACTORS}):
        holds, waits = [], []
        for a in ACTORS:
            if not a.startswith(p + "."):
                continue
            key = w.actor_key(a)
            for lk, holders in m.holds.items():
                if key in holders:
                    extra = {ev.ATTR_LOCK_FIFO: m.fifo[lk], ev.ATTR_LOCK_MAX_LEASES: m.leases[lk]}
                    holds.append(w.entry(a, lk, hold_since[key, lk], mode=holders[key], **extra))
            if key in m.waits:
                lk, mode, ticket, since = m.waits[key]
                extra = {ev.ATTR_LOCK_FIFO: m.fifo[lk], ev.ATTR_QUEUE_POSITION: ticket}
                if mode == "semaphore":
                    extra[ev.ATTR_LOCK_MAX_LEASES] = m.leases[lk]
                waits.append(w.entry(a, lk, since, mode=mode, **extra))
        w.heartbeat(int(p), holds=holds, waits=waits)
    w.state.check_invariants()
    state_holds = {(a.key, lk) for a in w.state.actors() for lk in a.holds}
    model_holds = {(k, f"redis:ns/{lk}") for lk, hs in m.holds.items() for k in hs}
    assert state_holds == model_holds
    state_waits = {(a.key, a.wait.lock.name) for a in w.state.actors() if a.wait}
    assert state_waits == {(k, v[0]) for k, v in m.waits.items()}
    assert {frozenset(s) for s in w.deadlock_keys()} == m.expected()


SCENARIO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SCENARIO
@given(st.lists(OPS, max_size=40))
def test_property_exclusive(ops: list[tuple[str, str, str, int]]) -> None:
    run_scenario("exclusive", ops, [False] * 3)


@SCENARIO
@given(st.lists(OPS, max_size=40), st.lists(st.booleans(), min_size=3, max_size=3))
def test_property_read_write(ops: list[tuple[str, str, str, int]], fifo: list[bool]) -> None:
    run_scenario("rw", ops, fifo)


@SCENARIO
@given(st.lists(OPS, max_size=40))
def test_property_fifo(ops: list[tuple[str, str, str, int]]) -> None:
    run_scenario("fifo", ops, [True] * 3)


@SCENARIO
@given(st.lists(OPS, max_size=40))
def test_property_semaphore(ops: list[tuple[str, str, str, int]]) -> None:
    run_scenario("semaphore", ops, [False] * 3)


@SCENARIO
@given(st.lists(OPS, max_size=40), st.lists(st.booleans(), min_size=3, max_size=3))
def test_property_mixed(ops: list[tuple[str, str, str, int]], fifo: list[bool]) -> None:
    run_scenario("mixed", ops, fifo)


def random_ops(rng: random.Random, n: int) -> list[tuple[str, str, str, int]]:
    kinds = ["hold", "hold", "wait", "wait", "release", "end_wait"]
    return [
        (rng.choice(kinds), rng.choice(ACTORS), rng.choice(LOCKS), rng.randrange(4))
        for _ in range(n)
    ]


KINDS = ["exclusive", "rw", "fifo", "semaphore", "mixed"]


# Plain random sequences as well: hypothesis' list generation rarely pairs a hold with its
# own (lost) release, which is exactly what these must exercise.
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(KINDS))
def test_property_lost_events_heal_after_one_heartbeat_round(seed: int, kind: str) -> None:
    rng = random.Random(seed)
    fifo = [rng.random() < 0.5 for _ in LOCKS]
    run_scenario(kind, random_ops(rng, 40), fifo, [rng.random() < 0.1 for _ in range(40)])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(KINDS))
def test_property_random_sequences(seed: int, kind: str) -> None:
    rng = random.Random(seed)
    fifo = [rng.random() < 0.5 for _ in LOCKS]
    run_scenario(kind, random_ops(rng, 60), fifo)
