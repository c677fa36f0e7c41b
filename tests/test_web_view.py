"""The web view in headless Chromium: the live graph of a deadlock with its cycle
highlighted, a stale holder marked, data escaped (a lock named ``<script>alert(1)</script>``
shows as text), finding pages, and a restrictive Content-Security-Policy.

A screenshot of the page is kept under ``test-artifacts/web-view.png``.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from export_helpers import S, lock_attrs, proc
from lockscope import events as ev
from lockscope.agent.model import Event
from lockscope.testing.agent import InProcessAgent

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
EVIL = "<script>alert(1)</script>"
CYCLE = ("orders/1", "payments/7", EVIL)


def scenario(now: int) -> list[Event]:
    """A three-actor deadlock over CYCLE, one more waiter outside the cycle, and a
    holder of a report lock for ten minutes (stale: over max_hold)."""
    checkout, billing, ledger = proc("checkout", 11), proc("billing", 22), proc("ledger", 33)
    api, reports = proc("api", 44), proc("reports", 55)
    out = []
    for i, (process, held, wanted) in enumerate(
        [(checkout, 0, 1), (billing, 1, 2), (ledger, 2, 0)]
    ):
        out.append(
            Event(
                ev.EVENT_HOLD_START,
                now - 5 * S,
                process,
                lock_attrs(CYCLE[held], "thread:1", now - 5 * S),
            )
        )
        since = now - (3 - i) * S
        out.append(
            Event(ev.EVENT_WAIT_START, since, process, lock_attrs(CYCLE[wanted], "thread:1", since))
        )
    out.append(Event(ev.EVENT_WAIT_START, now - S, api, lock_attrs(CYCLE[0], "task:9", now - S)))
    out.append(
        Event(
            ev.EVENT_HOLD_START,
            now,
            reports,
            lock_attrs("reports/daily", "thread:3", now - 600 * S),
        )
    )
    out.append(Event(ev.EVENT_WAIT_START, now, api, lock_attrs("reports/daily", "task:4", now - S)))
    return out


@pytest.fixture(scope="module")
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as agent:
        agent.post_events(scenario(time.time_ns()))
        agent.wait_for(lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"])
        agent.wait_for(lambda: agent.get("/api/v1/stale-holders?status=active")["stale_holders"])
        yield agent


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    binary = shutil.which("chromium")
    assert binary, "chromium missing: apt-get install chromium"
    result = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=4000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _classes(dom: str, tag: str) -> list[str]:
    return re.findall(rf'<{tag}\b[^>]*class="([^"]*)"', dom)


def test_graph_of_a_live_deadlock(agent: InProcessAgent, tmp_path: Path) -> None:
    dom = chromium(tmp_path, agent.http_url + "/", "--dump-dom")
    assert 'data-rendered="true"' in dom, dom[-3000:]
    assert "<svg" in dom
    nodes = _classes(dom, "g")
    node_classes = [c for c in nodes if c.startswith("node ")]
    # 4 actors in or near the cycle + reports' holder + api's two tasks; 4 locks.
    assert sum("lock" in c.split() for c in node_classes) == 4
    assert sum("in-cycle" in c.split() for c in node_classes) == 6  # 3 actors + 3 locks
    assert sum("stale" in c.split() for c in node_classes) == 1
    edges = [c for c in _classes(dom, "line") if c.startswith("edge ")]
    assert sum("in-cycle" in c.split() for c in edges) == 6  # 3 waits + 3 holds
    assert sum("stale" in c.split() for c in edges) == 1
    # The evil lock name is text on the page, never markup.
    assert html.escape(EVIL, quote=False) in dom
    assert EVIL not in dom
    # The findings list names the deadlock and links its page.
    (deadlock,) = agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
    assert f'href="/findings/deadlock/{deadlock["id"]}"' in dom
    assert "Stale holder" in dom


def test_screenshot_artifact(agent: InProcessAgent, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-view.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, agent.http_url + "/", f"--screenshot={shot}", "--window-size=1400,860")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a drawn graph, not a blank page


def test_finding_page(agent: InProcessAgent, tmp_path: Path) -> None:
    (deadlock,) = agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
    dom = chromium(tmp_path, f"{agent.http_url}/findings/deadlock/{deadlock['id']}", "--dump-dom")
    assert 'data-rendered="true"' in dom, dom[-3000:]
    assert deadlock["id"] in dom
    for service in ("checkout", "billing", "ledger"):
        assert f"<td>{service}</td>" in dom
    assert html.escape(EVIL, quote=False) in dom
    assert EVIL not in dom
    assert sum("in-cycle" in c.split() for c in _classes(dom, "g")) == 6
    ARTIFACTS.mkdir(exist_ok=True)
    chromium(
        tmp_path,
        f"{agent.http_url}/findings/deadlock/{deadlock['id']}",
        f"--screenshot={ARTIFACTS / 'finding.png'}",
        "--window-size=1200,1000",
    )


def test_unknown_finding_page_says_so(agent: InProcessAgent, tmp_path: Path) -> None:
    dom = chromium(tmp_path, agent.http_url + "/findings/deadlock/dl-nope", "--dump-dom")
    assert "no such finding" in dom


def _get(url: str) -> tuple[dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(response.headers), response.read().decode()


def test_pages_carry_a_strict_csp_and_no_inline_script(agent: InProcessAgent) -> None:
    for path in ("/", "/findings/deadlock/x", "/static/view.js"):
        headers, body = _get(agent.http_url + path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        if path != "/static/view.js":
            scripts = re.findall(r"<script([^>]*)>(.*?)</script>", body, flags=re.S)
            assert scripts
            assert all('src="/static/' in attrs and not inner.strip() for attrs, inner in scripts)
    _, script = _get(agent.http_url + "/static/view.js")
    assert not re.search(
        r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|eval\(", script
    )


def test_unknown_static_file_and_kind_are_404(agent: InProcessAgent) -> None:
    for path in ("/static/../web_view.py", "/static/nope.js", "/findings/nonsense/x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(agent.http_url + path, timeout=10)
        assert info.value.code == 404


def test_nodegraph_frames(agent: InProcessAgent) -> None:
    frames = agent.get("/api/v1/graph?format=nodegraph")
    nodes, edges = frames["nodes"], frames["edges"]
    assert {"id", "title", "subTitle", "mainStat", "secondaryStat", "color"} <= set(nodes[0])
    assert all({"id", "source", "target", "mainStat"} <= set(e) for e in edges)
    ids = {n["id"] for n in nodes}
    assert all(e["source"] in ids and e["target"] in ids for e in edges)
    assert sum(e["highlighted"] for e in edges) == 6
    assert any(n["title"] == EVIL for n in nodes)  # JSON data, escaped by whoever renders it
    assert sum(n["color"] == "red" for n in nodes) == 6


def test_stale_holder_page(agent: InProcessAgent, tmp_path: Path) -> None:
    (stale,) = agent.get("/api/v1/stale-holders?status=active")["stale_holders"]
    dom = chromium(tmp_path, f"{agent.http_url}/findings/stale_holder/{stale['id']}", "--dump-dom")
    assert 'data-rendered="true"' in dom, dom[-3000:]
    assert "reports/daily held by reports:55/thread:3 (max_hold)" in dom
    assert "<td>reports</td>" in dom


def test_a_resolved_deadlock_is_no_longer_drawn(tmp_path: Path) -> None:
    now = time.time_ns()
    with InProcessAgent() as agent:
        events = scenario(now)
        agent.post_events(events)
        (deadlock,) = agent.wait_for(
            lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
        )
        # ledger (the youngest waiter) gives up.
        ledger_wait = next(
            e for e in events if e.name == ev.EVENT_WAIT_START and e.process.service == "ledger"
        )
        attrs = {**ledger_wait.attrs, ev.ATTR_OUTCOME: "timeout"}
        agent.post_events([Event(ev.EVENT_WAIT_END, time.time_ns(), ledger_wait.process, attrs)])
        agent.wait_for(lambda: not agent.get("/api/v1/deadlocks?status=active")["deadlocks"])
        dom = chromium(tmp_path, agent.http_url + "/", "--dump-dom")
        assert 'data-rendered="true"' in dom
        assert "<svg" in dom
        assert not any("in-cycle" in c.split() for c in _classes(dom, "g"))
        assert f"/findings/deadlock/{deadlock['id']}" not in dom
        page = chromium(
            tmp_path, f"{agent.http_url}/findings/deadlock/{deadlock['id']}", "--dump-dom"
        )
        assert "<dd>resolved</dd>" in page
        assert "<dd>wait_ended</dd>" in page
