"""The live wait-for graph: its edges, cycle search, graph reduction and export (the nodes,
re-exported here: :mod:`lockscope.agent.graph_nodes`).

Edges between actors are never stored: they follow from who holds and who waits, by the
rules below, and :func:`waits_for` derives them on demand.  So a hold or a wait costs one
small object however contended the lock is, and a cycle search walks only what it explores.

Edge rules (``waiter -> actor`` means the waiter cannot proceed before that actor):

* exclusive and write requests wait for every holder; read requests wait for non-read
  holders (readers share);
* a waiter's own hold of the lock is a self edge (a cycle of one) unless the lock is
  reentrant; a reader asking to write (upgrade) is the classic case;
* FIFO locks (ZooKeeper, FairLock, kazoo's read-write lock): a waiter also waits for the
  waiters queued ahead of it (:func:`queue_order`: by ticket, merged with the waiters
  without one by wait start) - all of them for an
  exclusive/write request, the non-read ones for a read request (PostgreSQL's soft edges);
* semaphore requests wait for the holders, but only as a group: they can proceed when fewer
  than ``max_leases`` holders are stuck.  :func:`reduce` decides (graph reduction).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final

from lockscope.agent import graph_nodes
from lockscope.agent.graph_nodes import *  # noqa: F403 - re-exported (see __all__)
from lockscope.agent.graph_nodes import READ, SEMAPHORE, Actor, Lock
from lockscope.agent.graph_queue import queue_order, queued_ahead, queued_behind

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "HOLD_EDGE",
    "QUEUE_EDGE",
    "Reduction",
    "blocks",
    "find_cycle",
    "predecessors",
    "queue_order",
    "reduce",
    "to_networkx",
    "waits_for",
]
__all__ += graph_nodes.__all__  # the nodes, re-exported

HOLD_EDGE: Final = "hold"
"""Edge kind: the target holds the lock the source waits for."""
QUEUE_EDGE: Final = "queue"
"""Edge kind: the target is queued ahead of the source on a FIFO lock (a soft edge)."""


# -- edge rules ---------------------------------------------------------------------------
def blocks(requested: str, held: str) -> bool:
    """Whether a request in mode ``requested`` must wait for a holder in mode ``held``."""
    return not (requested == READ and held == READ)


def waits_for(actor: Actor) -> list[tuple[Actor, Lock, str]]:
    """The actor's out-edges: ``(target actor, lock, HOLD_EDGE | QUEUE_EDGE)``.

    A self edge (``target is actor``) is a cycle of one.  Dead processes do not wait.
    """
    w = actor.wait
    if w is None or not actor.process.alive:
        return []
    lock = w.lock
    out: list[tuple[Actor, Lock, str]] = []
    for h in lock.holds:
        holder = h.actor
        if holder is actor and lock.reentrant:
            continue
        if w.mode == SEMAPHORE or blocks(w.mode, h.mode):
            out.append((holder, lock, HOLD_EDGE))
    if lock.fifo and w.mode != SEMAPHORE and len(lock.waits) > 1:
        for q in queued_ahead(w):
            other = q.actor
            if other is not actor and blocks(w.mode, q.mode):
                out.append((other, lock, QUEUE_EDGE))
    return out


def predecessors(actor: Actor) -> Iterator[Actor]:
    """Actors with an edge to ``actor`` (may repeat an actor)."""
    for h in actor.holds.values():
        lock = h.lock
        for w in lock.waits:
            waiter = w.actor
            if waiter is actor and lock.reentrant:
                continue
            if waiter.process.alive and (w.mode == SEMAPHORE or blocks(w.mode, h.mode)):
                yield waiter
    own = actor.wait
    if own is not None and own.lock.fifo and len(own.lock.waits) > 1:
        for q in queued_behind(own):
            other = q.actor
            if (
                other is not actor
                and q.mode != SEMAPHORE
                and other.process.alive
                and blocks(q.mode, own.mode)
            ):
                yield other


def has_predecessors(actor: Actor) -> bool:
    """Whether anyone (the actor itself included) waits for this actor; O(1) for an actor
    that holds nothing waited for and is last in its queue."""
    if not any(h.lock.waits for h in actor.holds.values()):
        own = actor.wait
        if own is None or not own.lock.fifo or len(own.lock.waits) < 2:
            return False
    return next(predecessors(actor), None) is not None


# -- cycle search -------------------------------------------------------------------------
class ExploreLimit(Exception):
    """A search visited more nodes than allowed."""


def find_cycle(
    start: Actor, budget: int, stuck: Iterable[Actor] | None = None
) -> tuple[list[tuple[Actor, Lock, str]] | None, bool]:
    """Depth-first search from ``start`` for a path back to ``start``.

    Returns ``(path, hit)``: the cycle as ``(actor, lock it waits on, edge kind)`` steps
    (None when there is none) and whether a node of ``stuck`` was reached.  Cost is the
    part of the graph reachable from ``start`` that the search walks, never the whole graph;
    raises :class:`ExploreLimit` past ``budget`` visited nodes.
    """
    stuck_set = stuck if isinstance(stuck, set | frozenset | dict) else set(stuck or ())
    hit = False
    visited: set[Actor] = {start}
    # stack of (actor, iterator over its out-edges); path mirrors the stack
    path: list[tuple[Actor, Lock, str]] = []
    stack: list[tuple[Actor, Iterator[tuple[Actor, Lock, str]]]] = [(start, iter(waits_for(start)))]
    while stack:
        node, edges = stack[-1]
        advanced = False
        for target, lock, kind in edges:
            if target is start:
                path.append((node, lock, kind))
                return path, hit
            if target in visited:
                continue
            visited.add(target)
            if len(visited) > budget:
                raise ExploreLimit(len(visited))
            if target in stuck_set:
                hit = True
            path.append((node, lock, kind))
            stack.append((target, iter(waits_for(target))))
            advanced = True
            break
        if not advanced:
            stack.pop()
            if path:
                path.pop()
    return None, hit


def upstream(seeds: Iterable[Actor], budget: int) -> set[Actor]:
    """Every actor that can reach one of ``seeds`` (the seeds included)."""
    seen = set(seeds)
    todo = list(seen)
    while todo:
        node = todo.pop()
        for p in predecessors(node):
            if p not in seen:
                seen.add(p)
                if len(seen) > budget:
                    raise ExploreLimit(len(seen))
                todo.append(p)
    return seen


# -- graph reduction ----------------------------------------------------------------------
class Reduction:
    """Result of :func:`reduce` over the part of the graph reachable from some seeds."""

    __slots__ = ("_groups", "edges", "nodes", "residual")

    def __init__(
        self,
        nodes: set[Actor],
        edges: dict[Actor, list[tuple[Actor, Lock, str]]],
        residual: set[Actor],
    ) -> None:
        self.nodes = nodes
        self.edges = edges
        self.residual = residual
        """Actors that can never proceed (deadlocked, or blocked by a deadlock)."""
        self._groups: list[set[Actor]] | None = None

    def deadlocked_sets(self) -> list[set[Actor]]:
        """Strongly connected groups of the residual that contain a cycle: the deadlocks."""
        if self._groups is None:
            self._groups = self._strongly_connected()
        return self._groups

    def _strongly_connected(self) -> list[set[Actor]]:
        if not self.residual:
            return []
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.residual)
        for node in self.residual:
            for target, _lock, _kind in self.edges[node]:
                if target in self.residual:
                    g.add_edge(node, target)
        out = []
        for comp in nx.strongly_connected_components(g):
            if len(comp) > 1 or any(g.has_edge(n, n) for n in comp):
                out.append(set(comp))
        return out

    def downstream(self, members: Iterable[Actor]) -> set[Actor]:
        """Residual actors reachable from ``members``: what their deadlock depends on."""
        seen = set(members)
        todo = list(seen)
        while todo:
            node = todo.pop()
            for target, _lock, _kind in self.edges.get(node, ()):
                if target in self.residual and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen


def reduce(seeds: Iterable[Actor], budget: int) -> Reduction:
    """Graph reduction over everything reachable from ``seeds``.

    An actor that does not wait (or whose process is dead: it will not wait again and its
    leases run out) completes and releases its holds.  A waiter completes when all actors it
    waits for have completed; a semaphore waiter when fewer than ``max_leases`` of the
    semaphore's holders are left (an unknown ``max_leases`` never blocks).  What is left
    can never proceed.
    """
    nodes: set[Actor] = set()
    edges: dict[Actor, list[tuple[Actor, Lock, str]]] = {}
    todo = list(seeds)
    nodes.update(todo)
    while todo:
        node = todo.pop()
        out = waits_for(node)
        edges[node] = out
        for target, _lock, _kind in out:
            if target not in nodes:
                nodes.add(target)
                if len(nodes) > budget:
                    raise ExploreLimit(len(nodes))
                todo.append(target)

    preds: dict[Actor, list[Actor]] = {n: [] for n in nodes}
    pending: dict[Actor, int] = {}
    stuck_holders: dict[Actor, int] = {}
    done: list[Actor] = []
    for node in nodes:
        targets = {t for t, _l, _k in edges[node]}
        for t in targets:
            preds[t].append(node)
        w = node.wait if node.process.alive else None
        if w is None:
            done.append(node)
        elif w.mode == SEMAPHORE:
            stuck_holders[node] = len(targets)
            k = w.lock.max_leases
            if k is None or len(targets) < k:
                done.append(node)
        else:
            pending[node] = len(targets)
            if not targets:
                done.append(node)
    completed = set(done)
    while done:
        node = done.pop()
        for p in preds[node]:
            if p in completed:
                continue
            w = p.wait
            assert w is not None
            if w.mode == SEMAPHORE:
                stuck_holders[p] -= 1
                k = w.lock.max_leases
                ready = k is None or stuck_holders[p] < k
            else:
                pending[p] -= 1
                ready = pending[p] == 0
            if ready:
                completed.add(p)
                done.append(p)
    return Reduction(nodes, edges, nodes - completed)


# -- export -------------------------------------------------------------------------------
def to_networkx(actors: Iterable[Actor], locks: Iterable[Lock]) -> nx.MultiDiGraph:
    """The graph as networkx: actor and lock nodes, ``waits`` (actor -> lock), ``holds``
    (lock -> actor) and derived ``waits_for`` (actor -> actor) edges."""
    import networkx as nx

    g = nx.MultiDiGraph()
    for lock in locks:
        g.add_node(
            lock.key, type="lock", name=lock.name, system=lock.system, template=lock.template
        )
    for actor in actors:
        info = actor.process.info
        g.add_node(
            actor.key,
            type="actor",
            label=actor.label,
            service=info.service,
            pid=info.pid,
            alive=actor.process.alive,
        )
    for actor in actors:
        if actor.wait is not None:
            g.add_edge(actor.key, actor.wait.lock.key, type="waits", mode=actor.wait.mode)
        for h in actor.holds.values():
            g.add_edge(h.lock.key, actor.key, type="holds", mode=h.mode)
        for target, lock, kind in waits_for(actor):
            g.add_edge(actor.key, target.key, type="waits_for", lock=lock.key, kind=kind)
    return g
