"""The live wait-for graph: its nodes (processes, actors, locks, holds, waits) and its edges.

Edges between actors are never stored: they follow from who holds and who waits, by the
SPEC's rules, and :func:`waits_for` derives them on demand.  So a hold or a wait costs one
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
from typing import TYPE_CHECKING, Any, Final

from lockscope.agent.graph_queue import queue_order, queued_ahead, queued_behind
from lockscope.agent.model import ProcessInfo

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "EXCLUSIVE",
    "HOLD_EDGE",
    "QUEUE_EDGE",
    "READ",
    "SEMAPHORE",
    "WRITE",
    "Actor",
    "Hold",
    "Lock",
    "Process",
    "Reduction",
    "Wait",
    "actor_label",
    "blocks",
    "find_cycle",
    "predecessors",
    "queue_order",
    "reduce",
    "to_networkx",
    "waits_for",
]

EXCLUSIVE: Final = "exclusive"
READ: Final = "read"
WRITE: Final = "write"
SEMAPHORE: Final = "semaphore"

HOLD_EDGE: Final = "hold"
"""Edge kind: the target holds the lock the source waits for."""
QUEUE_EDGE: Final = "queue"
"""Edge kind: the target is queued ahead of the source on a FIFO lock (a soft edge)."""


class Process:
    """A reporting process (one ``service.instance.id``)."""

    __slots__ = (
        "actors",
        "alive",
        "dead_since_ns",
        "deadline_ns",
        "dropped",
        "exited",
        "info",
        "interval",
        "last_heartbeat_ns",
        "last_seen_ns",
        "schema_version",
        "seq_mark",
        "seq_mark_at_ns",
        "session_ns",
        "wake_ns",
    )

    def __init__(self, info: ProcessInfo, now_ns: int) -> None:
        self.info = info
        self.alive = True
        self.last_seen_ns = now_ns
        self.last_heartbeat_ns = 0
        """Sender time of the newest heartbeat applied (0: none yet)."""
        self.seq_mark = 0
        """``lockscope.seq`` of the newest heartbeat applied (0: the process does not
        number its events, or no heartbeat yet; see :mod:`lockscope.agent.report_order`)."""
        self.seq_mark_at_ns = 0
        """Agent time when that heartbeat arrived."""
        self.session_ns: int | None = None
        """The longest session timeout its session-bound holds reported: a lock server
        ends such a hold this long after it last heard from the process
        (``lockscope.lock.session_timeout``: ZooKeeper's ephemeral nodes)."""
        self.interval: float | None = None
        self.deadline_ns = 0
        self.wake_ns = 0
        """When the liveness check is scheduled (its heap entry); other entries are stale."""
        self.dead_since_ns: int | None = None
        self.exited = False
        """It said it exits (its last snapshot): gone, not presumed dead."""
        self.dropped = 0
        self.schema_version: int | None = None
        self.actors: dict[str, Actor] = {}


def actor_label(info: ProcessInfo, actor_id: str, name: str | None) -> str:
    """:attr:`Actor.label` from plain values (records that outlive the actor keep these)."""
    return f"{info.service}:{info.pid}/{name or actor_id}"


class Actor:
    """A thread or task of a process: a node of the wait-for graph."""

    __slots__ = ("actor_id", "holds", "name", "process", "wait")

    def __init__(self, process: Process, actor_id: str, name: str | None) -> None:
        self.process = process
        self.actor_id = actor_id
        self.name = name
        self.wait: Wait | None = None
        self.holds: dict[str, Hold] = {}
        """Lock key -> hold."""

    @property
    def key(self) -> str:
        """``instance/actor_id``: unique across the fleet and across agent restarts."""
        return f"{self.process.info.instance}/{self.actor_id}"

    @property
    def label(self) -> str:
        """``service:pid/actor`` for people and the API's ``actor`` field."""
        return actor_label(self.process.info, self.actor_id, self.name)

    def __repr__(self) -> str:
        return f"Actor({self.key})"


_EMPTY: list[Any] = []
"""Shared empty list for idle locks (never mutated: see Lock.add_*/remove_*)."""


class Lock:
    """A lock with at least one reported hold or wait.

    ``holds`` and ``waits`` are plain lists (a lock rarely has many): a hold or wait is
    found by its actor (``actor.holds[lock.key]``, ``actor.wait``), so the lists are only
    iterated, and an idle side costs nothing.
    """

    __slots__ = (
        "_name_at",
        "exclusive_holds",
        "fifo",
        "holds",
        "key",
        "max_leases",
        "namespace",
        "process_bound",
        "reentrant",
        "system",
        "template",
        "waits",
    )

    def __init__(self, key: str, system: str, namespace: str, name: str, template: str) -> None:
        self.key = key
        self._name_at = len(key) - len(name)
        self.system = system
        self.namespace = namespace
        self.template = template
        self.fifo = False
        self.reentrant = False
        self.process_bound = False
        """The OS releases it when the holder's process dies: no orphaned finding."""
        self.max_leases: int | None = None
        self.holds: list[Hold] = _EMPTY
        self.waits: list[Wait] = _EMPTY
        self.exclusive_holds = 0
        """Holds in ``exclusive`` or ``write`` mode (readers need not look at each other)."""

    @property
    def name(self) -> str:
        """The lock's name (the key ends with it)."""
        return self.key[self._name_at :]

    def add_hold(self, h: Hold) -> None:
        """Track a hold of this lock."""
        if self.holds is _EMPTY:
            self.holds = [h]
        else:
            self.holds.append(h)
        if h.mode == EXCLUSIVE or h.mode == WRITE:
            self.exclusive_holds += 1

    def remove_hold(self, h: Hold) -> None:
        """Stop tracking a hold of this lock."""
        self.holds.remove(h)
        if not self.holds:
            self.holds = _EMPTY
        if h.mode == EXCLUSIVE or h.mode == WRITE:
            self.exclusive_holds -= 1

    def add_wait(self, w: Wait) -> None:
        """Track a wait for this lock."""
        if self.waits is _EMPTY:
            self.waits = [w]
        else:
            self.waits.append(w)

    def remove_wait(self, w: Wait) -> None:
        """Stop tracking a wait for this lock."""
        self.waits.remove(w)
        if not self.waits:
            self.waits = _EMPTY

    @property
    def kind(self) -> str:
        """``exclusive``, ``rw`` or ``semaphore``, from the modes seen on it now."""
        modes = {h.mode for h in self.holds} | {w.mode for w in self.waits}
        if SEMAPHORE in modes:
            return SEMAPHORE
        if READ in modes or WRITE in modes:
            return "rw"
        return EXCLUSIVE

    def __repr__(self) -> str:
        return f"Lock({self.key})"


class _Claim:
    """What a hold and a wait share: one actor's claim on one lock, in a mode."""

    __slots__ = ("actor", "asserted_ns", "code", "lock", "mode", "since_ns", "source")

    def __init__(
        self, lock: Lock, actor: Actor, mode: str, since_ns: int, asserted_ns: int
    ) -> None:
        self.lock = lock
        self.actor = actor
        self.mode = mode
        self.since_ns = since_ns
        self.asserted_ns = asserted_ns
        """Sender time of the newest event or heartbeat saying this claim still stands."""
        self.source: str | None = None
        """The reporting process (instance) when it is not the actor's own: a database
        watcher reporting the row locks of a session bound to an instrumented actor."""
        self.code: tuple[str | None, int | None, str | None] | None = None


class Hold(_Claim):
    """One actor's hold of one lock (an instance is identified by actor, lock and ``since``)."""

    __slots__ = ("expires_at_ns", "owner", "token")

    def __init__(
        self, lock: Lock, actor: Actor, mode: str, since_ns: int, asserted_ns: int
    ) -> None:
        super().__init__(lock, actor, mode, since_ns, asserted_ns)
        self.expires_at_ns: int | None = None
        self.token: int | None = None
        self.owner: str | None = None


class Wait(_Claim):
    """One actor's reported wait for one lock (an actor waits for at most one lock)."""

    __slots__ = ("holder_owner", "holder_token", "probed_ns", "ticket")

    def __init__(
        self, lock: Lock, actor: Actor, mode: str, since_ns: int, asserted_ns: int
    ) -> None:
        super().__init__(lock, actor, mode, since_ns, asserted_ns)
        self.probed_ns = since_ns
        """When the waiter looked up ``holder_owner``/``holder_token`` (its report)."""
        self.ticket: int | None = None
        self.holder_owner: str | None = None
        """The lock server's current owner id as the waiter saw it (where cheap)."""
        self.holder_token: int | None = None
        """The current holder's fencing token as the waiter saw it (where cheap)."""


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
