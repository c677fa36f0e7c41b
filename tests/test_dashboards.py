"""dashboards/: the committed JSON is the generator's output and provisioning-ready, and
every panel's query works: a real Prometheus scrapes a real agent fed by a real instrumented
app (``lockscope instrument --``, real Redis locks, including a deadlock), and each query is
evaluated through Prometheus's HTTP API; it must parse and return data."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lockscope.agent.config import AgentConfig
from lockscope.testing.agent import InProcessAgent
from lockscope.testing.prometheus import PrometheusServer
from lockscope.testing.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
WORKLOAD = Path(__file__).resolve().parent / "dashboard_workload.py"
BIN = Path(sys.executable).parent
LOCK = "jobs:{id}"
VARIABLES = {
    "$__rate_interval": "10s",
    "$__range": "2m",
    "$job": "lockscope",
    "$lock": LOCK,
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lockscope_dashboards", DASHBOARDS / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboards() -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return [p for p in out if p["type"] != "row"]


# -- static checks ------------------------------------------------------------------------
def test_committed_json_is_the_generators_output() -> None:
    generated = _generator().generate()
    assert set(generated) == {p.name for p in DASHBOARDS.glob("*.json")}
    for name, text in generated.items():
        assert (DASHBOARDS / name).read_text() == text, (
            f"{name} is stale: run dashboards/generate.py"
        )


def test_dashboards_are_provisioning_ready() -> None:
    uids = set()
    for name, d in _dashboards().items():
        assert d["id"] is None, name
        assert d["uid"].startswith("lockscope-"), name
        uids.add(d["uid"])
        assert "lockscope" in d["tags"]
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in _panels(d):
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                uid = target["datasource"]["uid"]
                assert uid in ("${datasource}", "${infinity}"), (name, panel["title"])
    assert uids == {"lockscope-overview", "lockscope-lock"}
    provisioning = (DASHBOARDS / "provisioning" / "lockscope.yaml").read_text()
    assert "type: file" in provisioning
    assert "apiVersion: 1" in provisioning


def test_overview_covers_the_issue_list() -> None:
    titles = {p["title"] for p in _panels(_dashboards()["lockscope-overview.json"])}
    for needed in (
        "Acquisition rate by result",
        "Acquisition outcomes",
        "Wait time quantiles",
        "Hold time quantiles",
        "Top contended locks (wait seconds per second)",
        "Waiters by lock",
        "Active deadlocks",
        "Stale holders",
        "Mutual-exclusion violations",
        "Lock-order inversions",
        "Agents up",
        "Events dropped and rejected",
        "Wait-for graph (live)",
    ):
        assert needed in titles


def test_per_lock_dashboard_is_templated_by_lock() -> None:
    d = _dashboards()["lockscope-lock.json"]
    assert "lock" in {v["name"] for v in d["templating"]["list"]}
    for panel in _panels(d):
        for target in panel["targets"]:
            assert '$lock"' in target["expr"], panel["title"]


# -- live: real app -> real agent -> real Prometheus ------------------------------------------
@pytest.fixture(scope="module")
def live(
    redis_server: RedisServer, prometheus_server: PrometheusServer
) -> Iterator[tuple[InProcessAgent, PrometheusServer]]:
    redis_server.ensure_running()
    redis_server.flush()
    with InProcessAgent(AgentConfig(max_hold=2.0)) as agent:
        env = {
            **os.environ,
            "LOCKSCOPE_ENDPOINT": agent.otlp_url,
            "LOCKSCOPE_REPORT_AFTER": "0.05",
            "LOCKSCOPE_HEARTBEAT": "0.25",
            "LOCKSCOPE_METRICS_EXPORT": "agent",
            "LOCKSCOPE_METRICS_INTERVAL": "0.5",
            "OTEL_SERVICE_NAME": "dashboard-app",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
        app = subprocess.Popen(
            [str(BIN / "lockscope"), "instrument", "--", sys.executable, str(WORKLOAD),
             redis_server.url],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert app.stdout is not None
            assert app.stdout.readline().strip() == "ready", app.stderr
            # One undecodable export, so the rejection series exist as they would in a fleet.
            bad = urllib.request.Request(
                agent.otlp_url + "/v1/logs",
                data=b"\x0a\xff",
                headers={"Content-Type": "application/x-protobuf"},
            )
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(bad, timeout=10)
            prometheus_server.scrape([agent.http_url.split("://", 1)[1]])
            _wait_for_data(prometheus_server)
            yield agent, prometheus_server
        finally:
            prometheus_server.scrape([])
            if app.stdin is not None:
                app.stdin.close()
            app.terminate()
            app.wait(timeout=30)


READY_QUERIES = (
    'up{job="lockscope"} == 1',
    "lockscope_deadlocks_active > 0",
    "lockscope_lock_order_inversions > 0",
    'lockscope_stale_holders{reason="max_hold"} > 0',
    "lockscope_mutual_exclusion_violations_total > 0",
    "lockscope_locks_lost_total > 0",
    'lockscope_lock_acquisitions_total{result="error"} > 0',
    f'rate(lockscope_lock_hold_seconds_count{{lock="{LOCK}"}}[10s]) > 0',
    f'rate(lockscope_lock_wait_seconds_count{{lock="{LOCK}"}}[10s]) > 0',
    "count_over_time(lockscope_deadlocks_active[2m]) > 5",
)


def _wait_for_data(prometheus: PrometheusServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    missing = list(READY_QUERIES)
    while missing:
        missing = [q for q in missing if not prometheus.query(q)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no data for {missing} within {timeout} s")
        time.sleep(0.5)


def _expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def _has_value(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = series.get("values") or [series.get("value")]
        if any(v is not None and math.isfinite(float(v[1])) for v in values):
            return True
    return False


@pytest.mark.parametrize("name", ["lockscope-overview.json", "lockscope-lock.json"])
def test_every_panel_query_returns_data(
    live: tuple[InProcessAgent, PrometheusServer], name: str
) -> None:
    _agent, prometheus = live
    checked = 0
    for panel in _panels(_dashboards()[name]):
        for target in panel["targets"]:
            if "expr" not in target:
                continue
            expr = _expand(target["expr"])
            now = time.time()
            if target.get("instant"):
                result = prometheus.query(expr)
            else:
                result = prometheus.api(
                    "query_range", query=expr, start=str(now - 30), end=str(now), step="1"
                )["result"]
            assert _has_value(result), f"{panel['title']}: {expr} returned no data"
            checked += 1
    assert checked >= 8


def test_the_node_graph_panel_reads_the_agent(
    live: tuple[InProcessAgent, PrometheusServer],
) -> None:
    agent, _ = live
    (panel,) = [
        p for p in _panels(_dashboards()["lockscope-overview.json"]) if p["type"] == "nodeGraph"
    ]
    frames = {}
    for target in panel["targets"]:
        assert target["datasource"]["type"] == "yesoreyeram-infinity-datasource"
        url = target["url"].replace("${agent_url}", agent.http_url)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        frames[target["refId"]] = body[target["root_selector"]]
        assert target["format"] == f"node-graph-{target['refId']}"
    nodes, edges = frames["nodes"], frames["edges"]
    assert nodes
    assert edges
    # The live deadlock is in it, highlighted.
    assert any(e["highlighted"] for e in edges)
    assert {"orders:1", "payments:9"} <= {n["title"] for n in nodes}


def test_live_metrics_of_a_real_app_pass_promtool(
    live: tuple[InProcessAgent, PrometheusServer],
) -> None:
    agent, _ = live
    with urllib.request.urlopen(agent.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "lockscope_lock_wait_seconds_bucket{" in text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr
