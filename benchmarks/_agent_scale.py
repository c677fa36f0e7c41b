"""Scale measurements of ``benchmarks/agent_ingest.py``, each run in a fresh process:

* :func:`scale_main`: per-event cost of a fixed event mix on an ``AgentState`` already
  tracking ``n_holds`` holds, and the resident memory those holds take;
* :func:`naive_main`: the incremental detector (``AgentState.apply``) against a naive one
  (networkx ``find_cycle`` over the whole wait-for graph after every event) on wait-for
  graphs of growing size.

CPU time (``time.process_time``) is measured, not wall time: the machine is shared.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import networkx as nx
import psutil
from _agent_workload import Fleet, to_events

from lockscope import events as ev
from lockscope.agent.config import AgentConfig, Limits
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.state import AgentState

S = 1_000_000_000


def _config() -> AgentConfig:
    return AgentConfig(limits=Limits(max_processes=100_000))


def _redis_lock(name: str, template: str) -> dict[str, Any]:
    return {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: "127.0.0.1:6379/0",
        ev.ATTR_LOCK_NAME: name,
        ev.ATTR_LOCK_TEMPLATE: template,
        ev.ATTR_LOCK_MODE: "exclusive",
        ev.ATTR_LOCK_TTL: 600.0,
    }


def preload_events(n_holds: int, base_ns: int) -> Iterator[Event]:
    """``n_holds`` reported Redis holds: processes of 100 threads holding 10 locks each, as
    the shim reports them (owner, lease expiry, actor name); one at a time, so nothing but
    the state keeps them."""
    rng = random.Random(7)
    per_proc = 1000
    for p in range((n_holds + per_proc - 1) // per_proc):
        info = ProcessInfo(f"cache-{p % 20}", f"node-{p // 20}", 20_000 + p, f"preload-{p}")
        for k in range(min(per_proc, n_holds - p * per_proc)):
            i = p * per_proc + k
            attrs = _redis_lock(f"cache:user:{10_000_000 + i}", "cache:user:{id}")
            attrs[ev.ATTR_ACTOR_ID] = f"thread:{139_000_000_000_000 + k // 10}"
            attrs[ev.ATTR_ACTOR_NAME] = f"worker-{k // 10}"
            since = base_ns - 10 * S + i
            attrs[ev.ATTR_SINCE] = since
            attrs[ev.ATTR_LOCK_OWNER] = uuid.UUID(int=rng.getrandbits(128)).hex
            attrs[ev.ATTR_LOCK_EXPIRES_AT] = since + 600 * S
            yield Event(ev.EVENT_HOLD_START, since + 1000, info, attrs)


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def scale_main(conn: Connection, n_holds: int, mix_events: int, reps: int, seed: int) -> None:
    """Per-event cost of the fleet mix with ``n_holds`` holds tracked, and memory per hold."""
    base = time.time_ns()
    fleet = Fleet(processes=1000, threads=8, base_ns=base, seed=seed, ring_every=250)
    sim = fleet.run(mix_events)
    mixes = [to_events(sim, round_=1000 + r) for r in range(reps + 1)]
    state = AgentState(_config())
    rss0 = _rss()
    t0 = time.process_time()
    for e in preload_events(n_holds, base):
        state.apply(e)
    preload_cpu = time.process_time() - t0
    rss1 = _rss()
    t0 = time.process_time()
    gc.collect()  # what one full collection costs with this many holds tracked
    full_gc = time.process_time() - t0
    assert state.hold_count == n_holds, (state.hold_count, n_holds)
    per_event = []
    for r, mix in enumerate(mixes):
        t0 = time.process_time()
        for e in mix:
            state.apply(e)
        dt = time.process_time() - t0
        if r:  # the first pass warms up
            per_event.append(dt / len(mix) * 1e9)
    conn.send(
        {
            "holds": n_holds,
            "held_after": state.hold_count,
            "mix_events": len(sim),
            "ns_per_event": statistics.median(per_event),
            "ns_samples": per_event,
            "rss_delta": rss1 - rss0,
            "bytes_per_hold": (rss1 - rss0) / n_holds,
            "preload_us_per_hold": preload_cpu / n_holds * 1e6,
            "deadlocks": state.deadlocks.counters.detected_total,
            "full_gc_ms": full_gc * 1e3,
            "gc_tracked": len(gc.get_objects()),
        }
    )
    conn.close()


# -- naive versus incremental ---------------------------------------------------------------
class NaiveDetector:
    """What the agent would do without incremental search: keep the wait-for graph as a
    networkx ``DiGraph`` (waiter -> holder), update it per event and look for a cycle in
    the whole graph after every event: the first cycle ``simple_cycles`` yields (its
    strongly-connected-components pass is linear in the graph), or ``find_cycle``."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.g: nx.DiGraph = nx.DiGraph()
        self.holder: dict[str, str] = {}
        self.waiting: dict[str, str] = {}
        self.cycles = 0

    @staticmethod
    def _ids(e: Event) -> tuple[str, str]:
        return f"{e.process.instance}/{e.attrs[ev.ATTR_ACTOR_ID]}", e.attrs[ev.ATTR_LOCK_NAME]

    def update(self, e: Event) -> None:
        actor, lock = self._ids(e)
        if e.name == ev.EVENT_HOLD_START:
            self.holder[lock] = actor
            self.g.add_node(actor)
        elif e.name == ev.EVENT_WAIT_START:
            self.waiting[actor] = lock
            h = self.holder.get(lock)
            if h is not None:
                self.g.add_edge(actor, h)
        elif e.name == ev.EVENT_WAIT_END:
            lock = self.waiting.pop(actor, lock)
            h = self.holder.get(lock)
            if h is not None and self.g.has_edge(actor, h):
                self.g.remove_edge(actor, h)

    def search(self) -> None:
        if self.method == "simple_cycles":
            if next(nx.simple_cycles(self.g), None) is not None:
                self.cycles += 1
            return
        try:
            nx.find_cycle(self.g)
        except nx.NetworkXNoCycle:
            return
        self.cycles += 1


def tree_events(edges: int, mix: int, seed: int) -> tuple[list[Event], list[Event]]:
    """A wait-for forest with ``edges`` wait edges (actor i holds lock i and waits for lock
    (i-1)//4, a 4-ary tree: no cycle), then ``mix`` events: an actor's wait ends and it
    waits again (a new wait.start: the incremental detector searches from it when someone
    waits for it)."""
    rng = random.Random(seed)
    t = time.time_ns()
    infos = [
        ProcessInfo("svc", "host", 30_000 + p, f"tree-{edges}-{p}") for p in range(edges // 100 + 1)
    ]

    def attrs(i: int, lock: int, since: int) -> dict[str, Any]:
        a = _redis_lock(f"tree:{lock}", "tree:{id}")
        a[ev.ATTR_ACTOR_ID] = f"thread:{i}"
        a[ev.ATTR_SINCE] = since
        return a

    build = []
    for i in range(edges + 1):
        t += 1000
        build.append(Event(ev.EVENT_HOLD_START, t, infos[i // 100], attrs(i, i, t)))
    since: dict[int, int] = {}
    for i in range(1, edges + 1):
        t += 1000
        since[i] = t
        build.append(Event(ev.EVENT_WAIT_START, t, infos[i // 100], attrs(i, (i - 1) // 4, t)))
    events = []
    for _ in range(mix // 2):
        i = rng.randrange(1, edges + 1)
        t += 1000
        end = attrs(i, (i - 1) // 4, since[i])
        end[ev.ATTR_OUTCOME] = "timeout"
        events.append(Event(ev.EVENT_WAIT_END, t, infos[i // 100], end))
        t += 1000
        since[i] = t
        events.append(Event(ev.EVENT_WAIT_START, t, infos[i // 100], attrs(i, (i - 1) // 4, t)))
    return build, events


def naive_main(conn: Connection, sizes: list[int], mix: int, budget: float, seed: int) -> None:
    """Per-event CPU cost of both detectors at each graph size (naive capped at ``budget``
    CPU seconds per size)."""
    out = []
    for edges in sizes:
        build, events = tree_events(edges, mix, seed)
        state = AgentState(_config())
        for e in build:
            state.apply(e)
        searches0 = state.deadlocks.counters.searches_total
        t0 = time.process_time()
        for e in events:
            state.apply(e)
        inc = (time.process_time() - t0) / len(events) * 1e6
        searches = state.deadlocks.counters.searches_total - searches0
        del state
        gc.collect()
        row: dict[str, Any] = {
            "edges": edges,
            "incremental_us": inc,
            "incremental_events": len(events),
            "incremental_searches": searches,
        }
        for method in ("simple_cycles", "find_cycle"):
            naive = NaiveDetector(method)
            for e in build:
                naive.update(e)
            done = 0
            t0 = time.process_time()
            for e in events:
                naive.update(e)
                naive.search()
                done += 1
                if time.process_time() - t0 > budget:
                    break
            row[f"{method}_us"] = (time.process_time() - t0) / done * 1e6
            row[f"{method}_events"] = done
            row[f"{method}_cycles"] = naive.cycles
            del naive
            gc.collect()
        out.append(row)
    conn.send(out)
    conn.close()
