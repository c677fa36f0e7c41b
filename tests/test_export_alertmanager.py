"""Findings pushed to a real Alertmanager (API v2): one LockDeadlock alert per deadlock, also
with two agents pushing (HA), resolved when the deadlock ends, and nothing lost while
Alertmanager is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export_helpers import BILLING, SHIPPING, S, deadlock_events, end_wait, metrics_text, samples
from lockscope.agent.export_alertmanager import alert_options
from lockscope.agent.findings import Finding
from lockscope.testing.agent import InProcessAgent, encode_logs
from lockscope.testing.prometheus import AlertmanagerServer
from lockscope.testing.server import free_port

EXTERNAL = "https://lockscope.example.test"
FAST = {"resend_interval": 1.0, "backoff_initial": 0.1, "backoff_max": 0.5}


def _agent(am_urls: list[str], **options: Any) -> InProcessAgent:
    return InProcessAgent(
        alertmanager_urls=am_urls,
        http_setup=[alert_options(external_url=EXTERNAL, **{**FAST, **options})],
    )


@pytest.fixture
def locks() -> tuple[str, str]:
    """Lock names unique to the test: the Alertmanager is shared by the session."""
    tag = uuid.uuid4().hex[:8]
    return (f"pay-{tag}-a", f"pay-{tag}-b")


@pytest.fixture
def agent(alertmanager_server: AlertmanagerServer) -> Iterator[InProcessAgent]:
    with _agent([alertmanager_server.url]) as agent:
        yield agent


def deadlock_alerts(am: AlertmanagerServer, locks: tuple[str, str]) -> list[Any]:
    """billing's alert of the deadlock over ``locks`` (billing holds the first lock; each
    service gets its own alert, see test_export_alert_routing.py)."""
    return am.alerts(alertname="LockDeadlock", service="billing", lock=locks[0])


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(interval)


def test_a_deadlock_is_one_alert_per_service_with_labels_and_annotations(
    agent: InProcessAgent, alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    agent.post_events(deadlock_events(*locks))
    (alert,) = wait_until(lambda: deadlock_alerts(alertmanager_server, locks))
    (finding,) = agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
    labels = alert["labels"]
    assert labels["alertname"] == "LockDeadlock"
    assert labels["id"] == finding["id"]
    assert labels["kind"] == "deadlock"
    assert labels["severity"] == "critical"
    assert labels["service"] == "billing"
    assert labels["lock"] == locks[0]  # billing's part: the lock it holds
    (other,) = alertmanager_server.alerts(alertname="LockDeadlock", id=finding["id"],
                                          service="shipping")  # fmt: skip
    assert other["labels"]["lock"] == locks[1]
    # Nothing that names the agent replica, or HA pairs would not deduplicate.
    port = agent.http_url.rsplit(":", 1)[1]
    assert not any(port in value for value in labels.values())
    assert not {"instance", "agent", "replica", "job"} & set(labels)
    notes = alert["annotations"]
    assert locks[0] in notes["summary"]
    assert locks[1] in notes["summary"]  # the summary names the whole cycle
    assert notes["services"] == "billing, shipping"
    assert locks[0] in notes["description"]
    assert locks[1] in notes["description"]
    assert "billing" in notes["description"]
    assert notes["runbook_url"].endswith("docs/runbook.md#lockdeadlock")
    assert notes["finding_url"] == f"{EXTERNAL}/findings/deadlock/{finding['id']}"
    assert alert["generatorURL"] == notes["finding_url"]
    # Re-sent while active: still exactly one alert after several resend intervals.
    wait_until(lambda: _sent(agent) >= 3)
    assert len(deadlock_alerts(alertmanager_server, locks)) == 1


def _sent(agent: InProcessAgent) -> float:
    sent = samples(metrics_text(agent), "lockscope_agent_alerts_sent_total")
    return sum(sent.values())


def test_two_agents_give_one_alert(
    alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    now = time.time_ns()
    with _agent([alertmanager_server.url]) as one, _agent([alertmanager_server.url]) as two:
        for agent in (one, two):
            agent.post_events(deadlock_events(*locks, now=now))
        for agent in (one, two):
            wait_until(lambda agent=agent: _sent(agent) >= 1)
        ids = {a.get("/api/v1/deadlocks")["deadlocks"][0]["id"] for a in (one, two)}
        assert len(ids) == 1
        assert len(deadlock_alerts(alertmanager_server, locks)) == 1
        wait_until(lambda: _sent(one) >= 3 and _sent(two) >= 3)
        assert len(deadlock_alerts(alertmanager_server, locks)) == 1


def test_alert_resolves_when_the_deadlock_ends(
    alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    # A long resend interval puts endsAt minutes ahead: only an explicit resolution (endsAt
    # = when the deadlock ended) can make the alert go within the deadline below.
    with _agent([alertmanager_server.url], resend_interval=120.0) as agent:
        now = time.time_ns()
        agent.post_events(deadlock_events(*locks, now=now))
        (alert,) = wait_until(lambda: deadlock_alerts(alertmanager_server, locks))
        assert alert["status"]["state"] == "active"
        # The younger waiter (shipping) gives up.
        agent.post_events([end_wait(SHIPPING, locks[0], "thread:2", now - 1 * S)])
        wait_until(lambda: agent.get("/api/v1/deadlocks?status=resolved")["deadlocks"])
        wait_until(lambda: not deadlock_alerts(alertmanager_server, locks), timeout=10)


def test_alertmanager_down_then_up_loses_nothing(
    agent: InProcessAgent, alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    alertmanager_server.stop()
    agent.post_events(deadlock_events(*locks))
    wait_until(lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"])

    def errors() -> float:
        return sum(samples(metrics_text(agent), "lockscope_agent_alert_errors_total").values())

    wait_until(lambda: errors() >= 2)  # it tried, failed and is retrying
    pending = samples(metrics_text(agent), "lockscope_agent_alerts_pending")
    assert sum(pending.values()) >= 1
    alertmanager_server.start()
    (alert,) = wait_until(lambda: deadlock_alerts(alertmanager_server, locks))
    assert alert["labels"]["kind"] == "deadlock"
    wait_until(
        lambda: not sum(samples(metrics_text(agent), "lockscope_agent_alerts_pending").values())
    )


def test_resolution_during_an_outage_is_delivered(
    agent: InProcessAgent, alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    """Alertmanager restarts empty; an alert that resolved meanwhile must not linger."""
    now = time.time_ns()
    agent.post_events(deadlock_events(*locks, now=now))
    wait_until(lambda: deadlock_alerts(alertmanager_server, locks))
    alertmanager_server.stop()
    agent.post_events([end_wait(SHIPPING, locks[0], "thread:2", now - 1 * S)])
    wait_until(lambda: agent.get("/api/v1/deadlocks?status=resolved")["deadlocks"])
    alertmanager_server.start()
    # Another deadlock while it was down arrives; the resolved one is not resurrected.
    other = (locks[0] + "-x", locks[1] + "-x")
    agent.post_events(deadlock_events(*other, a=BILLING, b=SHIPPING))
    wait_until(lambda: deadlock_alerts(alertmanager_server, other))
    assert deadlock_alerts(alertmanager_server, locks) == []


def test_two_alertmanagers_each_get_the_alert(
    alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    with AlertmanagerServer() as second, _agent([alertmanager_server.url, second.url]) as agent:
        agent.post_events(deadlock_events(*locks))
        wait_until(lambda: deadlock_alerts(alertmanager_server, locks))
        wait_until(lambda: deadlock_alerts(second, locks))


def test_no_alertmanager_url_means_no_exporter() -> None:
    with InProcessAgent() as agent:
        text = metrics_text(agent)
    assert "lockscope_agent_alerts_sent_total" not in text


def test_lockscope_agent_command_pushes_with_its_external_url(
    alertmanager_server: AlertmanagerServer, locks: tuple[str, str]
) -> None:
    """The real ``lockscope agent`` process: --alertmanager-url and --external-url."""
    otlp, http = free_port(), free_port()
    agent = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "lockscope"),
            "agent",
            f"--otlp=127.0.0.1:{otlp}",
            f"--http=127.0.0.1:{http}",
            f"--alertmanager-url={alertmanager_server.url}",
            "--external-url=https://locks.example.test/",
        ],
        env={**os.environ, "LOCKSCOPE_LOG_LEVEL": "warning"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
                    status: int = r.status
                    return status == 200
            except OSError:
                return False

        wait_until(ready)
        request = urllib.request.Request(
            f"http://127.0.0.1:{otlp}/v1/logs",
            data=encode_logs(deadlock_events(*locks)),
            headers={"Content-Type": "application/x-protobuf"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        (alert,) = wait_until(lambda: deadlock_alerts(alertmanager_server, locks))
        link = alert["annotations"]["finding_url"]
        assert link.startswith("https://locks.example.test/findings/deadlock/dl-"), link
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, agent.stderr.read() if agent.stderr else ""


def _finding(n: int, active: bool) -> Finding:
    finding = Finding(
        kind="violation",
        id=f"viol-{n}",
        text=f"violation {n}",
        data={},
        detected_at_ns=time.time_ns(),
        templates=("x",),
    )
    if not active:
        finding.resolved_at_ns = time.time_ns()
    return finding


def test_alert_memory_is_bounded_and_never_drops_active_alerts() -> None:
    from lockscope.agent.export_alertmanager import AlertExporter, AlertOptions

    exporter = AlertExporter([], AlertOptions(max_alerts=3))
    for n in range(3):
        exporter.on_finding(_finding(n, active=True))
    for n in range(3, 8):
        exporter.on_finding(_finding(n, active=True))
        resolved = _finding(n, active=False)
        exporter.on_finding(resolved)
    assert len(exporter) == 4  # the three active ones plus the newest resolved
    assert exporter.dropped == 4
    assert {"viol-0", "viol-1", "viol-2", "viol-7"} == set(exporter._alerts)
