"""The wait-for graph as the two data frames of Grafana's Node Graph panel.

``GET /api/v1/graph?format=nodegraph`` answers ``{"nodes": [...], "edges": [...]}``: one
row per node and per edge with the field names the panel reads (``id``, ``title``,
``subTitle``, ``mainStat``, ``secondaryStat``, ``color``, ``arc__*``, ``detail__*``; edges
``id``, ``source``, ``target``, ``mainStat``, ``highlighted``).  In Grafana, query it with
the Infinity data source twice (refId ``nodes`` with root selector ``nodes``, refId
``edges`` with root selector ``edges``); see docs/exports.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["nodegraph_frames"]

_DEADLOCKED: Final = "red"
_STALE: Final = "orange"
_NORMAL: Final = "blue"
_LOCK: Final = "purple"


def nodegraph_frames(
    graph: Mapping[str, Any], stale: Mapping[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Convert ``web_api.api_graph(state)`` (and, optionally, ``api_stale_holders(state, True)``)
    into Node Graph rows."""
    stale_pairs = {
        (s.get("lock_key"), s.get("actor"))
        for s in (stale or {}).get("stale_holders", [])
        if s.get("status", "active") == "active"
    }
    nodes_in = graph.get("nodes", [])
    edges_in = graph.get("edges", [])
    deadlocked = {n["id"] for n in nodes_in if n.get("type") == "actor" and n.get("deadlocked")}
    actor_label = {n["id"]: n.get("actor") for n in nodes_in if n.get("type") == "actor"}
    # A lock is on a cycle when a deadlocked actor waits for it and another holds it.
    waited_by_dead = {
        e["target"] for e in edges_in if e["type"] == "waits" and e["source"] in deadlocked
    }
    held_by_dead = {
        e["source"] for e in edges_in if e["type"] == "held_by" and e["target"] in deadlocked
    }
    cycle_locks = waited_by_dead & held_by_dead
    stale_actors = {actor for (_lock, actor) in stale_pairs}
    waiting = {e["target"]: 0 for e in edges_in if e["type"] == "waits"}
    for e in edges_in:
        if e["type"] == "waits":
            waiting[e["target"]] += 1
    nodes: list[dict[str, Any]] = []
    for n in nodes_in:
        if n.get("type") == "lock":
            on_cycle = n["id"] in cycle_locks
            nodes.append(
                {
                    "id": n["id"],
                    "title": n.get("name"),
                    "subTitle": f"lock ({n.get('system')})",
                    "mainStat": f"{waiting.get(n['id'], 0)} waiting",
                    "secondaryStat": n.get("template"),
                    "color": _DEADLOCKED if on_cycle else _LOCK,
                    "arc__deadlocked": 1.0 if on_cycle else 0.0,
                    "arc__ok": 0.0 if on_cycle else 1.0,
                    "detail__kind": "lock",
                    "detail__system": n.get("system"),
                }
            )
        else:
            dead = n["id"] in deadlocked
            is_stale = n.get("actor") in stale_actors
            nodes.append(
                {
                    "id": n["id"],
                    "title": n.get("actor"),
                    "subTitle": f"{n.get('service')} pid {n.get('pid')}",
                    "mainStat": "deadlocked" if dead else "stale holder" if is_stale else "",
                    "secondaryStat": n.get("host"),
                    "color": _DEADLOCKED if dead else _STALE if is_stale else _NORMAL,
                    "arc__deadlocked": 1.0 if dead else 0.0,
                    "arc__ok": 0.0 if dead else 1.0,
                    "detail__kind": "actor",
                    "detail__system": None,
                }
            )
    edges: list[dict[str, Any]] = []
    for i, e in enumerate(edges_in):
        if e["type"] == "waits_for":
            continue  # derived actor -> actor edges: the picture shows them through locks
        source, target = e["source"], e["target"]
        if e["type"] == "waits":
            hot = source in deadlocked and target in cycle_locks
        else:
            hot = source in cycle_locks and target in deadlocked
        is_stale = e["type"] == "held_by" and (source, actor_label.get(target)) in stale_pairs
        edges.append(
            {
                "id": f"e{i}",
                "source": source,
                "target": target,
                "mainStat": e["type"].replace("_", " "),
                "secondaryStat": e.get("mode"),
                "highlighted": hot,
                "color": _DEADLOCKED if hot else _STALE if is_stale else "gray",
            }
        )
    return {"nodes": nodes, "edges": edges}
