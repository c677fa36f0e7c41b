"""Every ``lockscope agent`` / ``lockscope status`` error names the setting, where its
value came from, and what is expected; the settings table in docs/agent.md is the one
generated from the options; ``--help`` names every route."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lockscope.agent import cli as agent_cli
from lockscope.agent.cli_doc import BEGIN, END, agent_parser, markdown_table
from lockscope.agent.config import AgentConfig
from lockscope.client import status
from lockscope.testing.agent import InProcessAgent

LOCKSCOPE = [sys.executable, "-m", "lockscope.cli"]
ROOT = Path(__file__).resolve().parent.parent


def resolve(argv: list[str], env: dict[str, str] | None = None) -> agent_cli.AgentSettings:
    return agent_cli.resolve(agent_parser().parse_args(argv), env or {})


def test_unknown_file_key_lists_every_known_key_and_the_nearest(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('alertmanager_url = "http://am:9093"\n')
    with pytest.raises(agent_cli.SettingsError) as info:
        resolve(["--config", str(config)])
    message = str(info.value)
    assert message.startswith(f"config file {config}: unknown key 'alertmanager_url'")
    assert "did you mean 'alertmanager_urls'?" in message
    known = message.split("(known keys: ", 1)[1]
    for key in [*agent_cli.FILE_KEYS, *(f.name for f in dataclasses.fields(AgentConfig))]:
        assert f"{key}," in known or f"{key})" in known, key


def test_a_bad_file_value_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('log_level = "verbose"\n')
    with pytest.raises(agent_cli.SettingsError) as info:
        resolve(["--config", str(config)])
    assert str(info.value) == (
        f"config file {config}: log_level = 'verbose': unknown log level "
        "(expected debug, info, warning or error)"
    )


def test_a_bad_variable_names_the_variable() -> None:
    with pytest.raises(agent_cli.SettingsError) as info:
        resolve([], {"LOCKSCOPE_AGENT_HTTP": "nonsense"})
    assert str(info.value).startswith("LOCKSCOPE_AGENT_HTTP='nonsense': the HTTP address must")


def test_a_bad_flag_names_the_flag() -> None:
    with pytest.raises(agent_cli.SettingsError) as info:
        resolve(["--otlp", "localhost"])
    assert str(info.value).startswith("--otlp 'localhost': the OTLP address must be HOST:PORT")


def test_a_bad_repeatable_flag_names_the_flag_as_typed() -> None:
    # The setting is alertmanager_urls; the flag people type is --alertmanager-url.
    with pytest.raises(agent_cli.SettingsError) as info:
        resolve(["--alertmanager-url", "am:9093"])
    assert str(info.value).startswith("--alertmanager-url 'am:9093': an Alertmanager URL must")


def test_the_token_is_never_echoed() -> None:
    with pytest.raises(agent_cli.SettingsError) as info:
        resolve([], {"LOCKSCOPE_AGENT_TOKEN": " secret "})
    assert "secret" not in str(info.value)
    assert "LOCKSCOPE_AGENT_TOKEN" in str(info.value)


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKSCOPE_")}
    return subprocess.run(
        [*LOCKSCOPE, "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_a_port_in_use_names_the_listener_and_the_flag() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_agent("--otlp", "127.0.0.1:0", "--http", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"the HTTP API cannot listen on 127.0.0.1:{port} (--http" in result.stderr
    assert "in use" in result.stderr


def test_an_unresolvable_host_names_the_address() -> None:
    result = run_agent("--otlp", "nosuchhost.invalid:4318", "--http", "127.0.0.1:0")
    assert result.returncode == 1
    assert "the OTLP receiver cannot listen on nosuchhost.invalid:4318 (--otlp" in result.stderr
    assert "does not resolve" in result.stderr


def test_status_on_the_otlp_port_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with InProcessAgent() as agent:
        otlp_url = agent.otlp_url
        args = argparse.Namespace(http=otlp_url, timeout=5.0, json=False, token=None)
        assert status.run(args) == 2
    err = capsys.readouterr().err
    assert f"{otlp_url} is an OTLP receiver" in err
    assert "--http" in err


def test_status_names_a_bad_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKSCOPE_AGENT_HTTP", "htp://x")
    args = argparse.Namespace(http=None, timeout=5.0, json=False, token=None)
    assert status.run(args) == 2
    assert "LOCKSCOPE_AGENT_HTTP='htp://x'" in capsys.readouterr().err


def test_docs_agent_settings_table_is_the_generated_one() -> None:
    text = (ROOT / "docs" / "agent.md").read_text()
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table(agent_parser()), (
        "docs/agent.md's settings table is stale: python -m lockscope.agent.cli_doc docs/agent.md"
    )
    for flag in ("--token", "--token-file", "--tls-cert", "--tls-key", "--external-url",
                 "--no-metrics-auth"):  # fmt: skip
        assert f"`{flag}" in table


def test_agent_help_names_every_route_and_the_settings() -> None:
    result = subprocess.run(
        [*LOCKSCOPE, "agent", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    for route in (" / (", "/metrics", "/api/v1/", "/healthz", "/readyz", "/v1/logs"):
        assert route in result.stdout, route
    assert "LOCKSCOPE_AGENT_TOKEN_FILE" in result.stdout.split("settings:", 1)[1]


def test_runbook_url_from_flag_variable_or_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('runbook_url = "https://wiki.example/file"\n')
    from_file = resolve(["--config", str(config)])
    assert from_file.runbook_url == "https://wiki.example/file"
    from_env = resolve(["--config", str(config)], {"LOCKSCOPE_RUNBOOK_URL": "https://w/env"})
    assert from_env.runbook_url == "https://w/env"
    from_flag = resolve(
        ["--runbook-url", "https://w/flag"], {"LOCKSCOPE_RUNBOOK_URL": "https://w/e"}
    )
    assert from_flag.runbook_url == "https://w/flag"
    assert resolve([]).runbook_url is None
    with pytest.raises(agent_cli.SettingsError, match="LOCKSCOPE_RUNBOOK_URL='wiki'"):
        resolve([], {"LOCKSCOPE_RUNBOOK_URL": "wiki"})


def test_runbook_link() -> None:
    from lockscope.agent.export_alertmanager import runbook_link

    assert runbook_link("https://w/runbook", "LockDeadlock") == "https://w/runbook#lockdeadlock"
    assert (
        runbook_link("https://w/{alertname}.html", "LockDeadlock") == "https://w/lockdeadlock.html"
    )


def test_status_names_the_variable_an_unreachable_address_came_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKSCOPE_AGENT_HTTP", "nonsense")
    args = argparse.Namespace(http=None, timeout=2.0, json=False, token=None)
    assert status.run(args) == 2
    err = capsys.readouterr().err
    assert "cannot reach the lockscope agent at http://nonsense" in err
    assert "LOCKSCOPE_AGENT_HTTP='nonsense'" in err
