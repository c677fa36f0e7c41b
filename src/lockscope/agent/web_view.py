"""The live web view at ``/``: the wait-for graph as a picture, findings beside it.

- ``GET /``: the graph (actors and locks, wait and hold edges; deadlock cycles in red,
  stale holders marked), redrawn from ``/api/v1/graph`` every second, with the active
  findings listed beside it;
- ``GET /findings/{kind}/{id}``: one finding's page (the link Alertmanager alerts carry),
  complete on first paint (:mod:`lockscope.agent.web_finding_page`);
- ``GET /api/v1/findings/{id}``: that finding as JSON (404 when unknown);
- ``GET /static/...``: the page's script and style sheet, shipped as package data.

Both pages share ``static/page.html`` (the document head, the script and style sheet, the
site name); ``static/index.html`` and ``static/finding.html`` are what follows the site
name in each.

The page is self-contained (no CDN, no fonts from elsewhere) and strict about data: the
script builds every element with ``textContent``/``setAttribute``, never ``innerHTML``, and
every response carries a Content-Security-Policy that allows scripts only from this origin
(no inline script), so a lock named ``<script>...</script>`` stays text.
"""

from __future__ import annotations

import importlib.resources
from typing import Final

from aiohttp import web

from lockscope.agent.app_keys import STATE_KEY
from lockscope.agent.findings import KINDS
from lockscope.agent.web_finding_page import render as render_finding_page

__all__ = ["CSP", "setup_web_view"]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_STATIC: Final = {
    "view.js": "text/javascript",
    "view.css": "text/css",
}


def _asset(name: str) -> bytes:
    return importlib.resources.files("lockscope.agent.static").joinpath(name).read_bytes()


def _page(name: str, page: str, doc_title: str) -> str:
    """``static/<name>`` inside the shared layout, as the ``data-page`` the script reads."""
    layout = _asset("page.html").decode("utf-8")
    content = _asset(name).decode("utf-8")
    return (
        layout.replace("@@page@@", page)
        .replace("@@doc_title@@", doc_title)
        .replace("@@content@@", content)
    )


def _html(text: str) -> web.Response:
    return web.Response(
        text=text, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
    )


async def _index(request: web.Request) -> web.Response:
    return _html(_page("index.html", "graph", "lockscope: live wait-for graph"))


async def _finding_page(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise web.HTTPNotFound(text="unknown finding kind\n")
    finding = request.app[STATE_KEY].finding_store.get(request.match_info["id"])
    # The finding page's own fields, its title among them, are filled in by render().
    template = _page("finding.html", "finding", "@@doc_title@@")
    return _html(render_finding_page(template, kind, finding.to_json() if finding else None))


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = _STATIC.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text="not found\n")
    return web.Response(
        body=_asset(name), content_type=content_type, charset="utf-8", headers=_SECURITY_HEADERS
    )


async def _finding_json(request: web.Request) -> web.Response:
    finding = request.app[STATE_KEY].finding_store.get(request.match_info["id"])
    if finding is None:
        return web.json_response({"error": "unknown finding"}, status=404)
    return web.json_response(finding.to_json(), dumps=_dumps)


def _dumps(data: object) -> str:
    import json

    return json.dumps(data, default=str, separators=(",", ":"))


def setup_web_view(app: web.Application) -> None:
    """Add the web view routes to the agent's HTTP app."""
    app.router.add_get("/", _index)
    app.router.add_get("/findings/{kind}/{id}", _finding_page)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/v1/findings/{id}", _finding_json)
