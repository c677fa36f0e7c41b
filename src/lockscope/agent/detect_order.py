"""Lock-order inversions: cycles in the fleet-wide merged lock-order graph (as lockdep).

Each process reports a pair (held ``first``, then acquired ``second``, by lock template)
the first time it sees it.  A cycle in the merged graph means two code paths take the
same locks in opposite orders: a deadlock waiting for the right timing, reported before it
happens.

Modes matter: a cycle is only dangerous where, at every lock on it, the mode one path holds
it in conflicts with the mode the next path requests it in - two readers never block each
other, so read/read orderings are not inversions.  The search runs on a graph whose nodes
are ``(lock, mode the lock is requested in)``: pair (A held in ``ma``, then B requested in
``mb``) links ``(A, c)`` to ``(B, mb)`` for every request mode ``c`` that conflicts with
``ma``.  A cycle there is exactly a cycle whose every lock is contended.

:class:`OrderDetector` handles the ``lockscope.order.pair`` events itself (the store
routes them to it): the order graph is its own state, apart from the live graph.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lockscope import events as ev
from lockscope.agent.findings import ORDER_INVERSION, Finding, FindingStore, rfc3339, stable_id
from lockscope.agent.graph import Process
from lockscope.agent.model import EXCLUSIVE, Event, RejectedEvent, attr_str

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["OrderDetector", "OrderGraph", "OrderPair", "inversion_finding"]

_R = "r"
_W = "w"

Node = tuple[str, str]
"""(system, template); system is "" when unknown."""


def _cls(mode: str) -> str:
    return _R if mode == "read" else _W


def _conflicting_requests(held_mode: str) -> tuple[str, ...]:
    return (_W,) if held_mode == "read" else (_R, _W)


@dataclass(slots=True)
class OrderPair:
    """One distinct ordered pair, with who reported it first."""

    first: Node
    second: Node
    first_mode: str
    second_mode: str
    service: str
    pid: int
    instance: str
    actor: str | None
    seen_at_ns: int

    def to_json(self) -> dict[str, Any]:
        """API form."""
        return {
            "first": self.first[1],
            "first_system": self.first[0] or None,
            "first_mode": self.first_mode,
            "second": self.second[1],
            "second_system": self.second[0] or None,
            "second_mode": self.second_mode,
            "service": self.service,
            "pid": self.pid,
            "actor": self.actor,
            "seen_at": rfc3339(self.seen_at_ns),
        }


class OrderGraph:
    """The merged lock-order graph; :meth:`add` returns new inversions as pair cycles."""

    def __init__(self, max_pairs: int, self_pairs: bool = False) -> None:
        self._max_pairs = max_pairs
        self._self_pairs = self_pairs
        self.pairs: dict[tuple[Node, str, Node, str], OrderPair] = {}
        self._adj: dict[tuple[Node, str], dict[tuple[Node, str], OrderPair]] = {}
        self.limit_hits = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, pair: OrderPair) -> list[list[OrderPair]]:
        """Merge one reported pair; returns each new cycle it closes (possibly none)."""
        key = (pair.first, pair.first_mode, pair.second, pair.second_mode)
        if key in self.pairs:
            return []
        if pair.first == pair.second and not self._self_pairs:
            return []
        if len(self.pairs) >= self._max_pairs:
            self.limit_hits += 1
            return []
        self.pairs[key] = pair
        cycles = []
        target = (pair.second, _cls(pair.second_mode))
        for c in _conflicting_requests(pair.first_mode):
            source = (pair.first, c)
            edges = self._adj.setdefault(source, {})
            if target in edges:
                continue
            edges[target] = pair
            path = self._path(target, source)
            if path is not None:
                cycles.append([*path, pair])
        return cycles

    def _path(self, start: tuple[Node, str], goal: tuple[Node, str]) -> list[OrderPair] | None:
        if start == goal:
            return []
        seen = {start}
        stack: list[tuple[tuple[Node, str], list[OrderPair]]] = [(start, [])]
        while stack:
            node, path = stack.pop()
            for nxt, p in self._adj.get(node, {}).items():
                if nxt == goal:
                    return [*path, p]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, p]))
        return None

    def to_networkx(self) -> Any:
        """The merged order graph over templates (``networkx.MultiDiGraph``)."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for p in self.pairs.values():
            g.add_edge(p.first, p.second, first_mode=p.first_mode, second_mode=p.second_mode)
        return g


class OrderDetector:
    """Merges reported lock-order pairs and reports each new inversion (a store detector)."""

    batches = False
    """Its flush does nothing: the store skips it after each event."""

    def __init__(self, findings: FindingStore, max_pairs: int, self_pairs: bool = False) -> None:
        self._findings = findings
        self.graph = OrderGraph(max_pairs, self_pairs)
        self.inversions_detected = 0
        self._store: LockStore | None = None

    def attach(self, store: LockStore) -> None:
        """Handle ``lockscope.order.pair`` events."""
        self._store = store
        store.handle(ev.EVENT_ORDER_PAIR, self.on_order_pair)

    def flush(self, now_ns: int) -> None:
        """Nothing is batched."""

    def tick(self, now_ns: int) -> None:
        """Nothing is timed."""

    def on_order_pair(self, event: Event, proc: Process) -> None:
        """``lockscope.order.pair``: the process took ``second`` while holding ``first``."""
        assert self._store is not None
        attrs = event.attrs
        first = attr_str(attrs, ev.ATTR_ORDER_FIRST)
        second = attr_str(attrs, ev.ATTR_ORDER_SECOND)
        if not first or not second:
            raise RejectedEvent(f"missing {ev.ATTR_ORDER_FIRST} or {ev.ATTR_ORDER_SECOND}")
        first_mode = attr_str(attrs, ev.ATTR_ORDER_FIRST_MODE, EXCLUSIVE) or EXCLUSIVE
        second_mode = attr_str(attrs, ev.ATTR_ORDER_SECOND_MODE, EXCLUSIVE) or EXCLUSIVE
        for m in (first_mode, second_mode):
            if m not in ev.MODES:
                raise RejectedEvent(
                    f"order pair mode must be one of {', '.join(ev.MODES)}, not {m!r}"
                )
        sys1 = attr_str(attrs, ev.ATTR_ORDER_SYSTEM_FIRST, "") or ""
        sys2 = attr_str(attrs, ev.ATTR_ORDER_SYSTEM_SECOND, "") or ""
        pair = OrderPair(
            first=(sys.intern(sys1), sys.intern(first)),
            second=(sys.intern(sys2), sys.intern(second)),
            first_mode=first_mode,
            second_mode=second_mode,
            service=proc.info.service,
            pid=proc.info.pid,
            instance=proc.info.instance,
            actor=attr_str(attrs, ev.ATTR_ACTOR_ID),
            seen_at_ns=event.time_ns,
        )
        before = self.graph.limit_hits
        for cycle in self.graph.add(pair):
            if self._findings.add(inversion_finding(cycle, self._store.now_ns)):
                self.inversions_detected += 1
        if self.graph.limit_hits != before:
            self._store.limit_hit("max_order_pairs")


def inversion_finding(cycle: list[OrderPair], now_ns: int) -> Finding:
    """A finding for one order cycle; its id depends only on the locks in the cycle."""
    nodes = [p.first for p in cycle]
    fid = stable_id("inv", [f"{s}:{t}" for s, t in set(nodes)])
    closing = cycle[-1]
    names = [t for _s, t in nodes]
    data: dict[str, Any] = {
        "lock": names[0],
        "locks": names,
        "systems": sorted({s for s, _t in nodes if s}),
        "actor": closing.actor,
        "service": closing.service,
        "pid": closing.pid,
        "instance": closing.instance,
        "reason": "order_inversion",
        "since": rfc3339(min(p.seen_at_ns for p in cycle)),
        "pairs": [p.to_json() for p in cycle],
    }
    order = " -> ".join([*names, names[0]])
    text = (
        f"lock-order inversion {order} ("
        + "; ".join(f"{p.service}:{p.pid} took {p.first[1]} then {p.second[1]}" for p in cycle)
        + ")"
    )
    return Finding(
        ORDER_INVERSION,
        fid,
        text,
        data,
        detected_at_ns=now_ns,
        templates=tuple(sorted(set(names))),
        systems=tuple(data["systems"]),
        services=tuple(sorted({p.service for p in cycle})),
        reason="order_inversion",
    )
