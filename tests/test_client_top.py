"""``lockscope top``: refreshes in place on a terminal (driven under tmux with send-keys and
read with capture-pane), plain frames when not a terminal, wait p99 from the histogram."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lockscope import events as ev
from lockscope.agent.model import Event, ProcessInfo
from lockscope.client.top import _buckets, wait_p99
from lockscope.testing.agent import InProcessAgent
from polling import wait_until

BILLING = ProcessInfo("billing", "h1", 101, "billing-101")
SHIPPING = ProcessInfo("shipping", "h2", 202, "shipping-202")
S = 1_000_000_000


def attrs(lock: str, actor: str, since: int) -> dict[str, Any]:
    return {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: "127.0.0.1:6379/0",
        ev.ATTR_LOCK_NAME: lock,
        ev.ATTR_LOCK_MODE: "exclusive",
        ev.ATTR_ACTOR_ID: actor,
        ev.ATTR_SINCE: since,
    }


def ring(now: int) -> list[Event]:
    return [
        Event(ev.EVENT_HOLD_START, now - 3 * S, BILLING, attrs("acct/1", "thread:1", now - 3 * S)),
        Event(ev.EVENT_HOLD_START, now - 3 * S, SHIPPING, attrs("acct/2", "thread:2", now - 3 * S)),
        Event(ev.EVENT_WAIT_START, now - 2 * S, BILLING, attrs("acct/2", "thread:1", now - 2 * S)),
        Event(ev.EVENT_WAIT_START, now - S, SHIPPING, attrs("acct/1", "thread:2", now - S)),
    ]


@pytest.fixture
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as running:
        running.post_events(ring(time.time_ns()))
        running.wait_for(lambda: running.get("/api/v1/deadlocks?status=active")["deadlocks"])
        yield running


class Tmux:
    """A private tmux server (its own socket) with one detached session."""

    def __init__(self, command: list[str], width: int = 160, height: int = 40) -> None:
        self.socket = f"lockscope-test-{uuid.uuid4().hex[:8]}"
        self.tmux(
            "new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
            "env", f"PATH={os.environ['PATH']}", *command,
        )  # fmt: skip

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top").returncode == 0

    def close(self) -> None:
        self.tmux("kill-server")


def test_top_refreshes_in_place_under_tmux(agent: InProcessAgent) -> None:
    assert shutil.which("tmux"), "tmux is missing: scripts/setup-system.sh installs it"
    top = Tmux([sys.executable, "-m", "lockscope.cli", "top", "--http", agent.http_url,
                "--interval", "0.3"])  # fmt: skip
    try:
        wait_until(lambda: "acct/2" in top.screen(), timeout=30, what="the first frame")
        screen = top.screen()
        assert screen.splitlines()[0].startswith("lockscope top - " + agent.http_url)
        assert "1 deadlocks" in screen
        rows = [line for line in screen.splitlines() if line.startswith("acct/")]
        assert len(rows) == 2
        assert rows[0].split()[1] == "1"  # one waiter
        assert "billing:101/thread:1" in rows[0]  # acct/1's holder
        finding = next(line for line in screen.splitlines() if line.startswith("deadlock "))
        assert "acct/1, acct/2" in finding
        assert "(billing, shipping)" in finding
        # A new lock appears in the same screen, not in a scrolled copy below.
        now = time.time_ns()
        agent.post_events(
            [Event(ev.EVENT_HOLD_START, now, BILLING, attrs("ledger", "thread:9", now - 5 * S))]
        )
        wait_until(lambda: "ledger" in top.screen(), timeout=30, what="a refreshed frame")
        screen = top.screen()
        assert screen.count("lockscope top - ") == 1
        assert screen.count("ACTIVE FINDINGS") == 1
        top.tmux("send-keys", "-t", "top", "q")
        wait_until(lambda: not top.alive(), timeout=30, what="q to quit")
    finally:
        top.close()


def test_top_prints_plain_frames_when_not_a_terminal(agent: InProcessAgent) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lockscope.cli",
            "top",
            "--http",
            agent.http_url,
            "-n",
            "2",
            "--interval",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert result.stdout.count("lockscope top - ") == 2
    assert all(len(line) <= 120 for line in result.stdout.splitlines())


def test_top_unreachable_agent_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lockscope.cli", "top", "--http", "http://127.0.0.1:9", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot reach the lockscope agent at http://127.0.0.1:9" in result.stderr


METRICS = """\
# TYPE lockscope_lock_wait_seconds histogram
lockscope_lock_wait_seconds_bucket{lock="acct/{id}",system="redis",le="0.01"} 90
lockscope_lock_wait_seconds_bucket{lock="acct/{id}",system="redis",le="0.1"} 98
lockscope_lock_wait_seconds_bucket{lock="acct/{id}",system="redis",le="1.0"} 100
lockscope_lock_wait_seconds_bucket{lock="acct/{id}",system="redis",le="+Inf"} 100
"""


def test_wait_p99_of_all_then_of_the_interval() -> None:
    first = _buckets(METRICS)
    assert wait_p99(first) == {"acct/{id}": 1.0}
    later = _buckets(METRICS.replace(" 90\n", " 190\n").replace(" 98\n", " 198\n")
                     .replace(" 100\n", " 200\n"))  # fmt: skip
    assert wait_p99(later, first) == {"acct/{id}": 0.01}  # the 100 new waits were all fast
    assert wait_p99(later, later) == {"acct/{id}": None}  # no wait in the interval
