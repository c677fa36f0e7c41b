"""``lockscope check``: a test event sent the way the shim sends, confirmed through the API;
each failure names the URL and what failed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lockscope.agent.web_security import AccessPolicy
from lockscope.client import AgentClient
from lockscope.client.check import SERVICE, CheckFailed, check
from lockscope.testing.agent import InProcessAgent

LOCKSCOPE = [sys.executable, "-m", "lockscope.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as running:
        yield running


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
    return subprocess.run(
        [*LOCKSCOPE, "check", "--timeout", "3", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
    )


def test_check_passes_and_the_agent_lists_the_test_process(agent: InProcessAgent) -> None:
    result = run_check("--endpoint", agent.otlp_url, "--http", agent.http_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("lockscope check: OK:")
    assert agent.otlp_url + "/v1/logs" in result.stdout
    services = [p["service"] for p in AgentClient(agent.http_url).processes()]
    assert SERVICE in services


def test_check_reads_the_shims_settings(agent: InProcessAgent) -> None:
    # No flags: LOCKSCOPE_ENDPOINT given with the signal path (OTLP's full-path habit).
    env = {
        "LOCKSCOPE_ENDPOINT": agent.otlp_url + "/v1/logs",
        "LOCKSCOPE_AGENT_HTTP": agent.http_url,
    }
    result = run_check(env=env)
    assert result.returncode == 0, result.stderr
    env = {
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": agent.otlp_url + "/v1/logs",
        "LOCKSCOPE_AGENT_HTTP": agent.http_url,
    }
    assert run_check(env=env).returncode == 0


def test_check_closed_port_says_refused(agent: InProcessAgent) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_check("--endpoint", url, "--http", agent.http_url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{url}/v1/logs" in result.stderr
    assert "connection refused" in result.stderr


def test_check_api_port_is_not_an_otlp_receiver(agent: InProcessAgent) -> None:
    result = run_check("--endpoint", agent.http_url, "--http", agent.http_url)
    assert result.returncode == 1
    assert f"{agent.http_url}/v1/logs" in result.stderr
    assert "not an OTLP receiver" in result.stderr
    assert "HTTP API" in result.stderr
    assert "4318" in result.stderr


def test_check_wrong_path(agent: InProcessAgent) -> None:
    url = agent.otlp_url + "/otlp"
    result = run_check("--endpoint", url, "--http", agent.http_url)
    assert result.returncode == 1
    assert f"{url}/v1/logs: HTTP 404, not an OTLP receiver" in result.stderr


def test_check_unauthorized_then_with_the_token() -> None:
    with InProcessAgent(access=AccessPolicy("s3cret")) as guarded:
        result = run_check("--endpoint", guarded.otlp_url, "--http", guarded.http_url)
        assert result.returncode == 1
        assert f"{guarded.otlp_url}/v1/logs: HTTP 401, unauthorized" in result.stderr
        ok = run_check("--endpoint", guarded.otlp_url, "--http", guarded.http_url,
                       "--token", "s3cret")  # fmt: skip
        assert ok.returncode == 0, ok.stderr


def test_check_timed_out(agent: InProcessAgent) -> None:
    # A listener that accepts connections but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(CheckFailed, match=f"{url}/v1/logs: timed out"):
            check(url, agent.http_url, timeout=0.5, env={})


def test_check_accepted_elsewhere_is_not_confirmed(agent: InProcessAgent) -> None:
    # The event went to another agent: the one at --http never sees it.
    with (
        InProcessAgent() as other,
        pytest.raises(CheckFailed, match="did not see it within 1 s") as info,
    ):
        check(other.otlp_url, agent.http_url, timeout=1.0, env={})
    assert agent.http_url in str(info.value)


def test_check_api_unreachable(agent: InProcessAgent) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CheckFailed, match="could not confirm: cannot reach") as info:
        check(agent.otlp_url, url, timeout=1.0, env={})
    assert url in str(info.value)


@pytest.mark.parametrize("endpoint", ["htp://127.0.0.1:4318", "foo", "http://:4318"])
def test_check_rejects_a_url_that_does_not_parse(endpoint: str) -> None:
    result = run_check("--endpoint", endpoint)
    assert result.returncode == 1
    assert f"--endpoint={endpoint!r}" in result.stderr


def test_check_names_a_bad_environment_endpoint() -> None:
    result = run_check(env={"LOCKSCOPE_ENDPOINT": "htp://127.0.0.1:4318"})
    assert result.returncode == 1
    assert "LOCKSCOPE_ENDPOINT='htp://127.0.0.1:4318'" in result.stderr
