"""The web view without waiting for its script: a finding page is complete on first paint
(rendered by the agent, code locations included), labels of a crowded graph never
overlap on screen, and the findings list says which time it shows."""

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
from test_web_view import ARTIFACTS, chromium

EVIL = "<b>bold</b>"


def ring(now: int) -> list[Event]:
    a, b = proc("checkout", 11), proc("billing", 22)
    out = []
    for process, held, wanted, line in ((a, "orders/1", EVIL, 41), (b, EVIL, "orders/1", 97)):
        out.append(
            Event(
                ev.EVENT_HOLD_START, now - 5 * S, process, lock_attrs(held, "thread:1", now - 5 * S)
            )
        )
        attrs = {
            **lock_attrs(wanted, "thread:1", now - 3 * S),
            ev.ATTR_CODE_FILE: f"/srv/{process.service}/jobs.py",
            ev.ATTR_CODE_LINE: line,
            ev.ATTR_CODE_FUNCTION: "settle",
        }
        out.append(Event(ev.EVENT_WAIT_START, now - 3 * S, process, attrs))
    return out


def crowd(now: int) -> list[Event]:
    """One holder of a lock and twelve long-named waiters: a crowded picture."""
    holder = proc("inventory-reservations-service", 7)
    out = [Event(ev.EVENT_HOLD_START, now, holder, lock_attrs("sku/4711", "thread:main", now - S))]
    for i in range(12):
        waiter = proc(f"order-fulfilment-worker-{i:02d}", 100 + i)
        out.append(
            Event(ev.EVENT_WAIT_START, now, waiter, lock_attrs("sku/4711", f"thread:w{i}", now - S))
        )
    return out


@pytest.fixture(scope="module")
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as running:
        now = time.time_ns()
        running.post_events(ring(now) + crowd(now))
        running.wait_for(lambda: running.get("/api/v1/deadlocks?status=active")["deadlocks"])
        yield running


def _chromium_at_load(tmp_path: Path, url: str, *args: str) -> None:
    """A screenshot the moment the page has loaded, as a quick ``chromium --screenshot``
    takes it (no virtual time for the script's requests to finish)."""
    binary = shutil.which("chromium")
    assert binary, "chromium missing: apt-get install chromium"
    subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile-now'}",
            "--window-size=1200,900",
            *args,
            url,
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )


def _served(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_a_finding_page_is_complete_without_its_script(
    agent: InProcessAgent, tmp_path: Path
) -> None:
    (deadlock,) = agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
    url = f"{agent.http_url}/findings/deadlock/{deadlock['id']}"
    dom = _served(url)  # the page as the agent sends it, before any script
    assert "loading..." not in dom
    assert f"<dd>{deadlock['id']}</dd>" in dom
    assert "Deadlock: 2 actors over" in dom
    rows = re.findall(r"<tr>(.*?)</tr>", dom.split("<tbody>", 1)[1])
    assert len(rows) == 2
    assert any("<td>checkout</td>" in r and "/srv/checkout/jobs.py:41 (settle)" in r for r in rows)
    assert any("<td>billing</td>" in r and "/srv/billing/jobs.py:97 (settle)" in r for r in rows)
    assert html.escape(EVIL, quote=False) in dom
    assert EVIL not in dom
    assert "waiting since" in dom
    # And a screenshot taken before any script could run shows it (kept as an artifact).
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "finding-first-paint.png"
    shot.unlink(missing_ok=True)
    _chromium_at_load(tmp_path, url, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    blank = ARTIFACTS / "blank-first-paint.png"
    _chromium_at_load(tmp_path, "about:blank", f"--screenshot={blank}")
    assert len(data) > 4 * len(blank.read_bytes())  # text and a table, not an empty page
    blank.unlink()


def test_the_script_keeps_the_code_location(agent: InProcessAgent, tmp_path: Path) -> None:
    (deadlock,) = agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
    dom = chromium(tmp_path, f"{agent.http_url}/findings/deadlock/{deadlock['id']}", "--dump-dom")
    assert 'data-rendered="true"' in dom
    assert "/srv/billing/jobs.py:97 (settle)" in dom


def test_an_unknown_finding_page_says_so_without_script(agent: InProcessAgent) -> None:
    assert "no such finding" in _served(f"{agent.http_url}/findings/deadlock/dl-nope")


def test_labels_of_a_crowded_graph_do_not_overlap(agent: InProcessAgent, tmp_path: Path) -> None:
    dom = chromium(tmp_path, agent.http_url + "/", "--dump-dom", "--window-size=1400,900")
    assert 'data-rendered="true"' in dom
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", dom)
    assert sum(label.startswith("order-fulfilment-worker-") for label in labels) == 12
    overlaps = re.findall(r'data-label-overlaps="(\d+)"', dom)
    assert overlaps == ["0"], overlaps


def test_finding_cards_say_the_time_is_the_detection(agent: InProcessAgent, tmp_path: Path) -> None:
    dom = chromium(tmp_path, agent.http_url + "/", "--dump-dom")
    cards = re.findall(r'<time[^>]*title="([^"]*)"[^>]*>([^<]*)</time>', dom)
    assert cards
    assert all(text.startswith("detected ") and "detected" in title for title, text in cards)
