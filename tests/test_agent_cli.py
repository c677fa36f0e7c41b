"""``lockscope agent`` settings (flag > env > file > default), ``--help``, a real agent
process (/healthz, /readyz, graceful SIGTERM with a request in flight)."""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockscope.agent import cli as agent_cli
from lockscope.client import status
from lockscope.testing.agent import encode_logs
from test_client_status import ring_events

LOCKSCOPE = [sys.executable, "-m", "lockscope"]
READY_LINE = re.compile(r"OTLP on (http://\S+), HTTP on (http://\S+)")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    return parser.parse_args(argv)


# -- settings -----------------------------------------------------------------------------


def test_defaults_are_the_spec_addresses() -> None:
    settings = agent_cli.resolve(parse(), environ={})
    assert settings.otlp == ("127.0.0.1", 4318)
    assert settings.http == ("127.0.0.1", 9477)
    assert settings.alertmanager_urls == ()
    assert settings.config_path is None
    assert settings.max_request_bytes == 16 * 1024 * 1024
    assert set(settings.sources.values()) == {"default"}


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'otlp = "10.0.0.1:1111"\n'
        'http = "10.0.0.1:2222"\n'
        'alertmanager_urls = ["http://file:9093"]\n'
        'log_level = "warning"\n'
        "max_request_bytes = 2048\n"
        "max_hold = 42\n"
        "[limits]\nmax_processes = 7\n"
    )
    file_only = agent_cli.resolve(parse("--config", str(config)), environ={})
    assert file_only.otlp == ("10.0.0.1", 1111)
    assert file_only.http == ("10.0.0.1", 2222)
    assert file_only.alertmanager_urls == ("http://file:9093",)
    assert file_only.log_level == "WARNING"
    assert file_only.max_request_bytes == 2048
    loaded = agent_cli.load_config(file_only)
    assert loaded.max_hold == 42.0
    assert loaded.limits.max_processes == 7

    env = {
        "LOCKSCOPE_AGENT_CONFIG": str(config),
        "LOCKSCOPE_AGENT_OTLP": "10.0.0.2:3333",
        "LOCKSCOPE_ALERTMANAGER_URL": "http://env1:9093, http://env2:9093",
        "LOCKSCOPE_AGENT_MAX_REQUEST_BYTES": "4096",
    }
    from_env = agent_cli.resolve(parse(), environ=env)
    assert from_env.config_path == config
    assert from_env.otlp == ("10.0.0.2", 3333)
    assert from_env.http == ("10.0.0.1", 2222)  # not in env: the file's
    assert from_env.alertmanager_urls == ("http://env1:9093", "http://env2:9093")
    assert from_env.max_request_bytes == 4096
    assert from_env.sources["otlp"] == "env"
    assert from_env.sources["http"] == "file"

    flags = agent_cli.resolve(
        parse(
            "--otlp",
            "[::1]:4444",
            "--alertmanager-url",
            "http://a:9093",
            "--alertmanager-url",
            "https://b:9093",
            "--max-request-bytes",
            "8192",
        ),
        environ=env,
    )
    assert flags.otlp == ("::1", 4444)
    assert flags.alertmanager_urls == ("http://a:9093", "https://b:9093")
    assert flags.max_request_bytes == 8192
    assert flags.sources["otlp"] == "flag"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:4318", ("127.0.0.1", 4318)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":9477", ("0.0.0.0", 9477)),
        ("[::]:4318", ("::", 4318)),
        ("localhost:80", ("localhost", 80)),
        ("http://127.0.0.1:4318/", ("127.0.0.1", 4318)),
    ],
)
def test_parse_address(value: str, expected: tuple[str, int]) -> None:
    assert agent_cli.parse_address(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", "host:port", "host:70000", ""])
def test_bad_addresses_are_rejected(value: str) -> None:
    with pytest.raises(agent_cli.SettingsError):
        agent_cli.parse_address(value)


@pytest.mark.parametrize(
    ("argv", "env", "file_text", "message"),
    [
        (["--alertmanager-url", "alertmanager:9093"], {}, None, "http://"),
        ([], {"LOCKSCOPE_AGENT_HTTP": "nope"}, None, "HOST:PORT"),
        ([], {}, "max_hold = 'long'\n", "max_hold"),
        ([], {}, "not_a_setting = 1\n", "not_a_setting"),
        ([], {}, "this is [ not toml", "TOML"),
        ([], {"LOCKSCOPE_AGENT_MAX_REQUEST_BYTES": "lots"}, None, "max_request_bytes"),
        (["--otlp", "127.0.0.1:5000", "--http", "127.0.0.1:5000"], {}, None, "differ"),
        ([], {"LOCKSCOPE_LOG_LEVEL": "chatty"}, None, "log level"),
        (["--role", "shard"], {}, None, "--forward-to"),
        (["--forward-to", "http://127.0.0.1:1"], {}, None, "--role shard"),
        ([], {"LOCKSCOPE_AGENT_ROLE": "boss"}, None, "role must be one of"),
        (["--role", "shard", "--forward-to", "ftp://x"], {}, None, "http://"),
    ],
)
def test_bad_settings_exit_2_with_a_message(
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    file_text: str | None,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("LOCKSCOPE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if file_text is not None:
        config = tmp_path / "agent.toml"
        config.write_text(file_text)
        argv = [*argv, "--config", str(config)]
    assert agent_cli.run(parse(*argv)) == 2
    assert message in capsys.readouterr().err


def test_roles_from_flags_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('role = "shard"\nforward_to = ["http://d1:4318", "http://d2:4318"]\n')
    shard = agent_cli.resolve(parse("--config", str(config)), environ={})
    assert (shard.role, shard.forward_to) == ("shard", ("http://d1:4318", "http://d2:4318"))
    env = {"LOCKSCOPE_AGENT_ROLE": "shard", "LOCKSCOPE_AGENT_FORWARD_TO": "http://a, http://b"}
    assert agent_cli.resolve(parse(), environ=env).forward_to == ("http://a", "http://b")
    detector = agent_cli.resolve(parse("--role", "detector"), environ={})
    assert agent_cli.load_config(detector).stale_holder_findings is False
    assert agent_cli.load_config(agent_cli.resolve(parse(), environ={})).stale_holder_findings


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_cli.run(parse("--config", str(tmp_path / "absent.toml"))) == 2
    assert "absent.toml" in capsys.readouterr().err


def test_help_documents_flags_env_and_an_example() -> None:
    result = subprocess.run(
        [*LOCKSCOPE, "agent", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for text in (
        "--otlp",
        "--http",
        "--config",
        "--alertmanager-url",
        "LOCKSCOPE_AGENT_OTLP",
        "LOCKSCOPE_AGENT_HTTP",
        "LOCKSCOPE_AGENT_CONFIG",
        "LOCKSCOPE_ALERTMANAGER_URL",
        "127.0.0.1:4318",
        "127.0.0.1:9477",
        "Example",
    ):
        assert text in result.stdout
    result = subprocess.run(
        [*LOCKSCOPE, "status", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "--http" in result.stdout


# -- a real agent process -----------------------------------------------------------------


class AgentProcess:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.otlp_url, self.http_url = self._wait_ready()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def _wait_ready(self, timeout: float = 30.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.stderr.append(line)
            match = READY_LINE.search(line)
            if match:
                return match.group(1), match.group(2)
        raise AssertionError(f"agent did not start: {''.join(self.stderr)}")

    def rest_of_stderr(self) -> str:
        while not self.lines.empty():
            self.stderr.append(self.lines.get())
        return "".join(self.stderr)


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[AgentProcess]:
    # Ports 0 come from the config file, read through the environment variable.
    config = tmp_path / "agent.toml"
    config.write_text('otlp = "127.0.0.1:0"\nhttp = "127.0.0.1:0"\nmax_hold = 60\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKSCOPE_")}
    env["LOCKSCOPE_AGENT_CONFIG"] = str(config)
    proc = subprocess.Popen(
        [*LOCKSCOPE, "agent"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    try:
        yield AgentProcess(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_real_agent_serves_health_readiness_and_the_api(agent_process: AgentProcess) -> None:
    assert http_get(agent_process.http_url + "/healthz") == (200, {"status": "ok"})
    status_code, body = http_get(agent_process.http_url + "/readyz")
    assert (status_code, body["status"]) == (200, "ready")
    assert body["state"]["processes"] == 0
    status_code, body = http_get(agent_process.http_url + "/api/v1/deadlocks")
    assert (status_code, body) == (200, {"deadlocks": []})


async def test_readyz_is_503_until_ready_and_while_stopping() -> None:
    import aiohttp

    from lockscope.agent.app import AgentRunner

    runner = AgentRunner(otlp=("127.0.0.1", 0), http=("127.0.0.1", 0))
    await runner.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(runner.http_url + "/readyz") as response:
                assert response.status == 200
            runner.ready.clear()  # what stop() does first
            async with session.get(runner.http_url + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["status"] == "not ready"
            async with session.get(runner.http_url + "/healthz") as response:
                assert response.status == 200
    finally:
        await runner.stop()


def test_sigterm_finishes_the_request_in_flight_then_exits_0(agent_process: AgentProcess) -> None:
    host, port = agent_process.otlp_url.removeprefix("http://").rsplit(":", 1)
    body = encode_logs([ring_events(time.time_ns())[0]])
    half = len(body) // 2
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/logs HTTP/1.1\r\nHost: agent\r\n"
            b"Content-Type: application/x-protobuf\r\n"
            b"Expect: 100-continue\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        # "100 Continue" comes from the handler's task: the request is now in flight.
        assert conn.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        conn.sendall(body[:half])
        agent_process.proc.send_signal(signal.SIGTERM)
        # Shutdown has begun once the listener refuses new connections.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "the agent kept accepting after SIGTERM"
            time.sleep(0.02)
        assert agent_process.proc.poll() is None  # still finishing our request
        conn.sendall(body[half:])
        response = conn.recv(4096)
    assert response.startswith(b"HTTP/1.1 200"), response
    assert agent_process.proc.wait(timeout=15) == 0
    assert "shutting down" in agent_process.rest_of_stderr()


def test_sigint_exits_0(agent_process: AgentProcess) -> None:
    agent_process.proc.send_signal(signal.SIGINT)
    assert agent_process.proc.wait(timeout=15) == 0


def test_a_busy_port_exits_1(agent_process: AgentProcess, tmp_path: Path) -> None:
    busy = agent_process.http_url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKSCOPE_")}
    result = subprocess.run(
        [*LOCKSCOPE, "agent", "--otlp", "127.0.0.1:0", "--http", busy],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


# -- lockscope status against the OTLP port (the rest: test_client_status.py) -----------


def test_status_against_something_that_is_not_the_agent_exits_2(
    agent_process: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    # The OTLP port has no /api/v1 routes: an error, not findings.
    args = argparse.Namespace(http=agent_process.otlp_url, timeout=5.0, json=False)
    assert status.run(args) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err
    assert "is an OTLP receiver" in err
    assert "--http" in err
