"""The agent's JSON API (``/api/v1/...`` on the HTTP address), as SPEC's "Agent JSON API".

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

SPEC names each finding list ``{"<kind>": [...]}``; the list stands under the identifier
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

from lockscope.agent.app_keys import STATE_KEY
from lockscope.agent.state import AgentState
from lockscope.agent.web_nodegraph import nodegraph_frames

__all__ = ["API_PREFIX", "setup_api_routes"]

API_PREFIX: Final = "/api/v1"
STATUSES: Final = ("active", "resolved", "all")
DEFAULT_LOCKS_LIMIT: Final = 1000

# path -> (key of the list in the response, query on the state)
_FINDINGS: Final[dict[str, tuple[str, Callable[[AgentState, bool], dict[str, Any]]]]] = {
    "/deadlocks": ("deadlocks", AgentState.api_deadlocks),
    "/stale-holders": ("stale_holders", AgentState.api_stale_holders),
    "/violations": ("violations", AgentState.api_violations),
    "/order-inversions": ("order_inversions", AgentState.api_order_inversions),
}

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


async def _locks(request: web.Request) -> web.Response:
    text = request.query.get("limit", str(DEFAULT_LOCKS_LIMIT))
    if not text.isdigit() or int(text) < 1:
        return json_error(400, "limit must be a positive integer")
    return _json(request.app[STATE_KEY].api_locks(limit=int(text)))


async def _lock(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    detail = request.app[STATE_KEY].api_lock(name)
    if detail is None:
        return json_error(404, f"unknown lock {name!r}")
    return _json(detail)


async def _graph(request: web.Request) -> web.Response:
    include_idle = request.query.get("include_idle", "false").lower()
    if include_idle not in ("true", "false", "1", "0"):
        return json_error(400, "include_idle must be true or false")
    state = request.app[STATE_KEY]
    graph = state.api_graph(include_idle=include_idle in ("true", "1"))
    if request.query.get("format") == "nodegraph":
        # The nodes and edges frames of Grafana's Node Graph panel (web_nodegraph).
        return _json(nodegraph_frames(graph, state.api_stale_holders(True)))
    return _json(graph)


async def _processes(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].api_processes())


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
