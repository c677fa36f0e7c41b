"""``lockscope demo``: real worker processes walk into a deadlock and a stale holder, and the
agent (in process, or an external one) finds both; the demo's output is what we check."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockscope.agent.web_api import api_deadlocks
from lockscope.agent.web_security import AccessPolicy
from lockscope.testing.agent import InProcessAgent

DEMO = [sys.executable, "-m", "lockscope", "demo"]
FREE_PORTS = ["--http", "127.0.0.1:0", "--otlp", "127.0.0.1:0"]
RUN_TIMEOUT = 150
TOKEN = "demo-s3cret"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def assert_full_story(out: str) -> None:
    # The deadlock: all three participants, their locks, a named victim, then resolution.
    assert "DEADLOCK dl-" in out
    for worker in ("transfer-1", "transfer-2", "transfer-3"):
        assert worker in out
    for account in ("account:alice", "account:bob", "account:carol"):
        assert account in out
    assert "<- victim" in out
    assert "suggested victim: transfer-" in out
    assert "gave up waiting for account:" in out
    assert "resolved (wait_ended)" in out
    # The stale holder: the crashed holder, the reason, the lock taken over after the lease.
    assert "STALE HOLDER found by the agent" in out
    assert "report:daily  nightly-report:" in out
    assert "orphaned" in out
    assert "report-retry acquired report:daily (fencing token 2)" in out
    assert "stale holder resolved" in out
    assert "both resolved:      yes" in out


def test_demo_once_on_sqlite_finds_deadlock_and_stale_holder() -> None:
    result = run_demo("--once", *FREE_PORTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DatabaseLock on the SQLite file" in result.stdout
    assert_full_story(result.stdout)


@pytest.fixture
def agent_with_token() -> Iterator[InProcessAgent]:
    with InProcessAgent(access=AccessPolicy(token=TOKEN)) as agent:
        yield agent


def test_demo_once_on_redis_with_an_external_agent(
    redis_url: str, agent_with_token: InProcessAgent
) -> None:
    agent = agent_with_token
    result = run_demo(
        "--once",
        "--backend",
        "redis",
        "--redis-url",
        redis_url,
        "--agent-otlp",
        agent.otlp_url,
        "--agent-http",
        agent.http_url,
        "--agent-token",
        TOKEN,
        "--linger",
        "1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"RedisLock on {redis_url}" in result.stdout
    assert f"the deadlock stays in place for 1 s: see it at {agent.http_url}/" in result.stdout
    assert_full_story(result.stdout)
    # The findings live in the external agent, where the demo read them.
    deadlocks = agent.call(lambda: api_deadlocks(agent.state))["deadlocks"]
    assert [d["status"] for d in deadlocks] == ["resolved"]
    assert {p["service"] for p in deadlocks[0]["participants"]} == {
        "transfer-1",
        "transfer-2",
        "transfer-3",
    }


def test_demo_with_a_wrong_token_says_so(agent_with_token: InProcessAgent) -> None:
    result = run_demo(
        "--once",
        "--agent-otlp",
        agent_with_token.otlp_url,
        "--agent-http",
        agent_with_token.http_url,
        "--agent-token",
        "not-" + TOKEN,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "HTTP 401" in result.stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_demo_fails_clearly_when_the_agent_hears_nothing(lockscope_agent: InProcessAgent) -> None:
    # The workers report to a closed port: the agent never learns of the deadlock.
    result = run_demo(
        "--once",
        "--timeout",
        "2",
        "--agent-otlp",
        f"http://127.0.0.1:{_closed_port()}",
        "--agent-http",
        lockscope_agent.http_url,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: the agent's deadlock finding: not seen within 2 s" in result.stdout
    assert "deadlock found:     NO" in result.stdout


def test_demo_reports_unreachable_redis() -> None:
    result = run_demo(
        "--once", "--backend", "redis", "--redis-url", f"redis://127.0.0.1:{_closed_port()}/0"
    )
    assert result.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:" in result.stderr


def test_demo_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_demo("--once", "--http", f"127.0.0.1:{port}", "--otlp", "127.0.0.1:0")
    assert result.returncode == 2
    assert "cannot start the agent" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent-otlp", "http://127.0.0.1:4318"], "--agent-otlp and --agent-http go together"),
        (["--timeout", "0"], "--timeout > 0"),
        (["--agent-token", "x"], "--agent-token goes with --agent-otlp/--agent-http"),
        (["--http", "nonsense"], "must be HOST:PORT"),
    ],
)
def test_demo_rejects_bad_options(args: list[str], message: str) -> None:
    result = run_demo("--once", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_demo_help_says_what_it_does_with_an_example() -> None:
    result = run_demo("--help")
    assert result.returncode == 0
    assert "deadlock" in result.stdout
    assert "Examples:" in result.stdout
    assert "lockscope demo --once" in result.stdout


def test_demo_removes_its_temporary_directory_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [*DEMO, "--linger", "120", *FREE_PORTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert demo.stdout is not None
        seen: list[str] = []
        for line in demo.stdout:  # until the deadlock is up: workers running, files in use
            seen.append(line)
            if "DEADLOCK dl-" in line:
                break
        assert any("DEADLOCK dl-" in line for line in seen), "".join(seen)
        (workdir,) = tmp_path.glob("lockscope-demo-*")
        assert (workdir / "locks.db").exists()
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 128 + signal.SIGTERM
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert not list(tmp_path.glob("lockscope-demo-*"))
