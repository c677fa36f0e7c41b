"""The agent's JSON API (``/api/v1/...`` on the HTTP address); docs/agent.md documents
it for users.

===============================  ===============================================
``GET /api/v1/deadlocks``        ``{"deadlocks": [...]}``
``GET /api/v1/stale-holders``    ``{"stale_holders": [...], "stale-holders": [...]}``
``GET /api/v1/violations``       ``{"violations": [...]}``
``GET /api/v1/order-inversions`` ``{"order_inversions": [...], "order-inversions": [...]}``
``GET /api/v1/locks``            ``{"locks": [...]}``
``GET /api/v1/locks/{name}``     one lock: holders, waiters, timeline (404 if unknown)
``GET /api/v1/graph``            ``{"nodes": [...], "edges": [...]}``: the wait-for graph
``GET /api/v1/processes``        ``{"processes": [...]}``
===============================  ===============================================

Each finding list is an object ``{"<kind>": [...]}``; the list stands under the identifier
spelling (``stale_holders``) and, where the path spells it differently, under the path's
spelling too (``stale-holders``), so clients written either way read it.

The four finding lists take ``?status=active|resolved|all`` (default ``all``); the lock
list takes ``?limit=N`` (default 1000, most waiters first); the graph shows only locks
with waiters unless ``?include_idle=true``.  A lock
name may contain ``/`` and any other character: percent-encode it, or not, the rest of
the path after ``/api/v1/locks/`` is the name.  Errors are JSON too: ``{"error": "..."}``.
Times are RFC 3339 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

from aiohttp import web

from lockscope import events as ev
from lockscope.agent.app_keys import METRICS_STORE_KEY, STATE_KEY
from lockscope.agent.findings import (
    DEADLOCK,
    ORDER_INVERSION,
    STALE_HOLDER,
    VIOLATION,
    actor_json,
    rfc3339,
)
from lockscope.agent.graph import Actor, Lock, actor_label, queue_order, waits_for
from lockscope.agent.metrics_store import MetricsStore
from lockscope.agent.state import AgentState
from lockscope.agent.web_nodegraph import nodegraph_frames

__all__ = [
    "API_PREFIX",
    "api_deadlocks",
    "api_graph",
    "api_lock",
    "api_locks",
    "api_order_inversions",
    "api_processes",
    "api_stale_holders",
    "api_status",
    "api_violations",
    "setup_api_routes",
]

API_PREFIX: Final = "/api/v1"
STATUSES: Final = ("active", "resolved", "all")
DEFAULT_LOCKS_LIMIT: Final = 1000

# path -> (key of the list in the response, query on the state)


_dumps = partial(json.dumps, default=str, separators=(",", ":"))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def json_error(status: int, message: str) -> web.Response:
    """A JSON error response: ``{"error": message}``."""
    return _json({"error": message}, status=status)


def _finding_handler(
    key: str, alias: str, query: Callable[[AgentState, bool], dict[str, Any]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        status = request.query.get("status", "all")
        if status not in STATUSES:
            return json_error(400, f"status must be one of {', '.join(STATUSES)}")
        body = query(request.app[STATE_KEY], status == "active")
        if status == "resolved":
            body = {**body, key: [item for item in body[key] if item.get("status") == status]}
        if alias != key:
            body = {**body, alias: body[key]}
        return _json(body)

    return handler


# -- documents (times RFC 3339 UTC) ----------------------------------------------------
def _kind_json(state: AgentState, kind: str, key: str, active_only: bool) -> dict[str, Any]:
    items = [f.to_json() for f in state.finding_store.of_kind(kind) if f.active or not active_only]
    return {key: items}


def api_deadlocks(state: AgentState, active_only: bool = False) -> dict[str, Any]:
    """``{"deadlocks": [...]}``, active first, newest first."""
    return _kind_json(state, DEADLOCK, "deadlocks", active_only)


def api_stale_holders(state: AgentState, active_only: bool = False) -> dict[str, Any]:
    """``{"stale_holders": [...]}``."""
    return _kind_json(state, STALE_HOLDER, "stale_holders", active_only)


def api_violations(state: AgentState, active_only: bool = False) -> dict[str, Any]:
    """``{"violations": [...]}``."""
    return _kind_json(state, VIOLATION, "violations", active_only)


def api_order_inversions(state: AgentState, active_only: bool = False) -> dict[str, Any]:
    """``{"order_inversions": [...]}``."""
    return _kind_json(state, ORDER_INVERSION, "order_inversions", active_only)


def _actor_json(actor: Actor) -> dict[str, Any]:
    return {
        **actor_json(actor),
        "actor_name": actor.name,
        "alive": actor.process.alive,
    }


def _lock_summary(lock: Lock) -> dict[str, Any]:
    oldest_hold = min((h.since_ns for h in lock.holds), default=None)
    oldest_wait = min((w.since_ns for w in lock.waits), default=None)
    return {
        "name": lock.name,
        "key": lock.key,
        "system": lock.system,
        "namespace": lock.namespace,
        "template": lock.template,
        "kind": lock.kind,
        "fifo": lock.fifo,
        "reentrant": lock.reentrant,
        "max_leases": lock.max_leases,
        "holder_count": len(lock.holds),
        "waiter_count": len(lock.waits),
        "held_since": rfc3339(oldest_hold),
        "oldest_wait_since": rfc3339(oldest_wait),
    }


def api_locks(state: AgentState, limit: int = 1000) -> dict[str, Any]:
    """``{"locks": [...], "total": n}``: the ``limit`` locks with most waiters first."""
    locks = sorted(state.locks(), key=lambda lk: (-len(lk.waits), lk.key))[:limit]
    return {"locks": [_lock_summary(lk) for lk in locks], "total": state.lock_count}


def api_lock(state: AgentState, name: str) -> dict[str, Any] | None:
    """One lock (by key or name): summary plus ``holders``, ``waiters`` (queue order)
    and ``timeline`` (recent events, oldest first); None if not tracked."""
    lock = state.find_lock(name)
    if lock is None:
        return None
    out = _lock_summary(lock)
    out["holders"] = [
        {
            **_actor_json(h.actor),
            "mode": h.mode,
            "since": rfc3339(h.since_ns),
            "expires_at": rfc3339(h.expires_at_ns),
            "token": h.token,
            "owner": h.owner,
        }
        for h in sorted(lock.holds, key=lambda h: h.since_ns)
    ]
    waits = queue_order(lock.waits)
    out["waiters"] = [
        {
            **_actor_json(w.actor),
            "mode": w.mode,
            "since": rfc3339(w.since_ns),
            "ticket": w.ticket,
            "waits_for": sorted({t.label for t, _l, _k in waits_for(w.actor)}),
        }
        for w in waits
    ]
    out["timeline"] = [
        {
            "time": rfc3339(t),
            "event": what,
            "actor": actor_label(info, actor_id, name),
            "mode": mode,
            "detail": detail,
        }
        for t, key, what, info, actor_id, name, mode, detail in state.timeline
        if key == lock.key
    ]
    return out


def api_graph(state: AgentState, include_idle: bool = False) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [...]}``: locks with waiters, their holders and
    waiters, and the derived ``waits_for`` edges (``include_idle``: every lock)."""
    locks = [lk for lk in state.locks() if include_idle or lk.waits]
    actors: dict[Actor, None] = {}
    for lock in locks:
        actors.update(dict.fromkeys(h.actor for h in lock.holds))
        actors.update(dict.fromkeys(w.actor for w in lock.waits))
    in_deadlock = {m for members in state.deadlocks.active_members() for m in members}
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for lock in locks:
        nodes.append(
            {
                "id": lock.key,
                "type": "lock",
                "name": lock.name,
                "system": lock.system,
                "template": lock.template,
                "kind": lock.kind,
            }
        )
        for h in lock.holds:
            edges.append(
                {"source": lock.key, "target": h.actor.key, "type": "held_by", "mode": h.mode}
            )
        for w in lock.waits:
            edges.append(
                {"source": w.actor.key, "target": lock.key, "type": "waits", "mode": w.mode}
            )
    for actor in actors:
        nodes.append(
            {
                "id": actor.key,
                "type": "actor",
                **_actor_json(actor),
                "deadlocked": actor in in_deadlock,
            }
        )
        for target, lock, kind in waits_for(actor):
            edges.append(
                {
                    "source": actor.key,
                    "target": target.key,
                    "type": "waits_for",
                    "lock": lock.key,
                    "kind": kind,
                }
            )
    return {"nodes": nodes, "edges": edges}


def _acquisitions(metrics: MetricsStore | None, instance: str) -> dict[str, int]:
    """A process's lock acquisitions by result, from its exported metrics."""
    out: dict[str, int] = {}
    if metrics is None:
        return out
    for (name, labels), value in metrics.process_sums(instance).items():
        if name == ev.METRIC_ACQUISITIONS:
            result = dict(labels).get(ev.ATTR_OUTCOME, "unknown")
            out[result] = out.get(result, 0) + int(value)
    return out


def api_processes(state: AgentState, metrics: MetricsStore | None = None) -> dict[str, Any]:
    """``{"processes": [...]}`` with liveness and what each reports (``acquisitions`` by
    result, from the process's metrics, when ``metrics`` is given)."""
    out = []
    for p in state.processes():
        info = p.info
        out.append(
            {
                "instance": info.instance,
                "service": info.service,
                "host": info.host,
                "pid": info.pid,
                "alive": p.alive,
                "exited": p.exited,
                "last_seen": rfc3339(p.last_seen_ns),
                "last_heartbeat": rfc3339(p.last_heartbeat_ns or None),
                "heartbeat_interval": p.interval,
                "dead_since": rfc3339(p.dead_since_ns),
                "holds": sum(len(a.holds) for a in p.actors.values()),
                "waits": sum(1 for a in p.actors.values() if a.wait is not None),
                "dropped": p.dropped,
                "schema_version": p.schema_version,
                "acquisitions": _acquisitions(metrics, info.instance),
            }
        )
    out.sort(key=lambda d: (d["service"], d["host"], d["pid"]))
    return {"processes": out}


def api_status(state: AgentState) -> dict[str, Any]:
    """Sizes and counters at a glance (for ``/readyz`` details and debugging)."""
    return {
        "processes": sum(1 for _ in state.processes()),
        "reporting_processes": state.reporting_processes(),
        "locks": state.lock_count,
        "holds": state.hold_count,
        "waits": state.wait_count,
        "findings": len(state.finding_store),
        "active": state.active_counts(),
        "deadlock_candidates_rejected": state.deadlocks.counters.candidates_rejected_total,
        "limits_hit": dict(state.counters.limits_hit),
    }


_FINDINGS: Final[dict[str, tuple[str, Callable[[AgentState, bool], dict[str, Any]]]]] = {
    "/deadlocks": ("deadlocks", api_deadlocks),
    "/stale-holders": ("stale_holders", api_stale_holders),
    "/violations": ("violations", api_violations),
    "/order-inversions": ("order_inversions", api_order_inversions),
}


async def _locks(request: web.Request) -> web.Response:
    text = request.query.get("limit", str(DEFAULT_LOCKS_LIMIT))
    if not text.isdigit() or int(text) < 1:
        return json_error(400, "limit must be a positive integer")
    return _json(api_locks(request.app[STATE_KEY], limit=int(text)))


async def _lock(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    detail = api_lock(request.app[STATE_KEY], name)
    if detail is None:
        return json_error(404, f"unknown lock {name!r}")
    return _json(detail)


async def _graph(request: web.Request) -> web.Response:
    include_idle = request.query.get("include_idle", "false").lower()
    if include_idle not in ("true", "false", "1", "0"):
        return json_error(400, "include_idle must be true or false")
    state = request.app[STATE_KEY]
    graph = api_graph(state, include_idle=include_idle in ("true", "1"))
    if request.query.get("format") == "nodegraph":
        # The nodes and edges frames of Grafana's Node Graph panel (web_nodegraph).
        return _json(nodegraph_frames(graph, api_stale_holders(state, True)))
    return _json(graph)


async def _processes(request: web.Request) -> web.Response:
    app = request.app
    return _json(api_processes(app[STATE_KEY], app.get(METRICS_STORE_KEY)))


_INDEX: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lockscope agent</title></head>
<body><h1>lockscope agent</h1>
<ul>
<li><a href="/api/v1/deadlocks">deadlocks</a></li>
<li><a href="/api/v1/stale-holders">stale holders</a></li>
<li><a href="/api/v1/violations">mutual-exclusion violations</a></li>
<li><a href="/api/v1/order-inversions">lock-order inversions</a></li>
<li><a href="/api/v1/locks">locks</a></li>
<li><a href="/api/v1/graph">wait-for graph</a></li>
<li><a href="/api/v1/processes">processes</a></li>
<li><a href="/healthz">healthz</a> / <a href="/readyz">readyz</a></li>
</ul></body></html>
"""


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=_INDEX, content_type="text/html")


def setup_api_routes(app: web.Application, *, index: bool = True) -> None:
    """Add the JSON API routes (and, unless ``index`` is False, a plain ``/`` page that
    links them); the app must carry :data:`lockscope.agent.app_keys.STATE_KEY`."""
    for path, (key, query) in _FINDINGS.items():
        app.router.add_get(API_PREFIX + path, _finding_handler(key, path.lstrip("/"), query))
    app.router.add_get(API_PREFIX + "/locks", _locks)
    app.router.add_get(API_PREFIX + "/locks/{name:.+}", _lock)
    app.router.add_get(API_PREFIX + "/graph", _graph)
    app.router.add_get(API_PREFIX + "/processes", _processes)
    if index:
        app.router.add_get("/", _index)
