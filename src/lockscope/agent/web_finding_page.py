"""One finding's page (``/findings/{kind}/{id}``), rendered by the agent.

The page is complete on first paint, with no script run: title, facts, the participants
table (with code locations) and the raw JSON are filled in here, so a screenshot, a text
browser or a link preview shows the finding, never "loading...".  The page's script then
keeps it up to date and draws the live graph.  Every value is HTML-escaped: lock names,
actors and services are whatever the apps reported.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["KIND_TITLES", "code_location", "describe", "participants", "render"]

KIND_TITLES: Final = {
    "deadlock": "Deadlock",
    "stale_holder": "Stale holder",
    "violation": "Mutual-exclusion violation",
    "order_inversion": "Lock-order inversion",
}
_FACTS: Final = (
    ("id", "id"),
    ("status", "status"),
    ("detected", "detected_at"),
    ("resolved", "resolved_at"),
    ("resolution", "resolution"),
    ("locks", "locks"),
    ("lock", "lock"),
    ("system", "system"),
    ("reason", "reason"),
    ("detail", "detail"),
    ("suggested victim", "victim"),
)


def describe(kind: str, f: Mapping[str, Any]) -> str:
    """The one-line description the findings list and the page title use."""
    locks = [str(x) for x in f.get("locks") or []]
    if kind == "deadlock":
        return f"{len(f.get('participants') or [])} actors over {', '.join(locks)}"
    if kind == "stale_holder":
        return f"{f.get('lock')} held by {f.get('actor')} ({f.get('reason')})"
    if kind == "violation":
        return f"{f.get('lock')}: {f.get('detail') or f.get('reason')}"
    if kind == "order_inversion":
        return " \u2192 ".join(locks + locks[:1])
    return str(f.get("id"))


def participants(kind: str, f: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The rows of the participants table."""
    if kind == "deadlock":
        return [p for p in f.get("participants") or [] if isinstance(p, Mapping)]
    return [
        {
            "actor": f.get("actor"),
            "service": f.get("service"),
            "pid": f.get("pid"),
            "holds": [f["lock"]] if f.get("lock") else [],
            "waiting_since": f.get("since"),
            "code": f.get("code"),
        }
    ]


def code_location(code: Any) -> str:
    """``file:line (function)`` of a participant's code location, or empty."""
    if not isinstance(code, Mapping) or not code.get("file"):
        return ""
    where = str(code["file"])
    if code.get("line"):
        where += f":{code['line']}"
    if code.get("function"):
        where += f" ({code['function']})"
    return where


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def render(template: str, kind: str, finding: Mapping[str, Any] | None) -> str:
    """``template`` (static/finding.html) with the finding filled in (None: unknown id)."""
    esc = html.escape
    title = KIND_TITLES.get(kind, kind)
    if finding is None:
        values = {
            "doc_title": f"lockscope: {title} (unknown)",
            "status": "no such finding (it may have been forgotten)",
            "status_class": " error",
            "title": title,
            "facts": "",
            "participants": "",
            "json": "",
        }
        return _fill(template, {k: esc(v) if k != "status_class" else v for k, v in values.items()})
    facts = "".join(
        f"<dt>{esc(name)}</dt><dd>{esc(_text(finding.get(key)))}</dd>"
        for name, key in _FACTS
        if finding.get(key) not in (None, "", [])
    )
    rows = []
    for p in participants(kind, finding):
        cells = [
            p.get("actor"),
            p.get("service"),
            p.get("pid"),
            p.get("holds") or [],
            p.get("waits_for"),
            p.get("waiting_since"),
            code_location(p.get("code")),
        ]
        rows.append("<tr>" + "".join(f"<td>{esc(_text(c))}</td>" for c in cells) + "</tr>")
    return _fill(
        template,
        {
            "doc_title": esc(f"lockscope: {title} {finding.get('id')}"),
            "status": esc(f"{finding.get('status')} \u00b7 as of page load"),
            "status_class": "",
            "title": esc(f"{title}: {describe(kind, finding)}"),
            "facts": facts,
            "participants": "".join(rows),
            "json": esc(json.dumps(finding, indent=2, default=str)),
        },
    )


def _fill(template: str, values: Mapping[str, str]) -> str:
    out = template
    for key, value in values.items():
        out = out.replace(f"@@{key}@@", value)
    return out
