"""Alerts route per service: a deadlock across two services reaches each team's receiver
through a real Alertmanager with one route per service, as one alert per service sharing
the finding's id, each with that service's own lock; the example config routes the same
way (amtool); the runbook link is the one the agent was given."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export_helpers import deadlock_events, proc
from lockscope.agent.export_alert_labels import alert_label_sets
from lockscope.agent.export_alertmanager import alert_options
from lockscope.agent.findings import ORDER_INVERSION, VIOLATION, Finding
from lockscope.testing.agent import InProcessAgent
from lockscope.testing.prometheus import AlertmanagerServer
from polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
PAYMENTS, INVENTORY = proc("payments", 301), proc("inventory", 402)


class Webhooks:
    """A webhook receiver: the notifications Alertmanager POSTs, by path."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {}
        lock = threading.Lock()
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str) -> list[dict[str, Any]]:
        return [a for note in list(self.received.get(path, [])) for a in note["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()
    yield hooks
    hooks.close()


def routed_config(hooks: Webhooks) -> str:
    return f"""
route:
  receiver: everyone-else
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  group_by: [alertname, id]
  routes:
    - matchers: [service="payments"]
      receiver: payments
    - matchers: [service="inventory"]
      receiver: inventory
receivers:
  - name: payments
    webhook_configs: [{{url: "{hooks.url}/payments", send_resolved: true}}]
  - name: inventory
    webhook_configs: [{{url: "{hooks.url}/inventory", send_resolved: true}}]
  - name: everyone-else
    webhook_configs: [{{url: "{hooks.url}/else"}}]
"""


def test_a_cross_service_deadlock_reaches_each_teams_route(
    webhooks: Webhooks, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    order, sku = f"order:{tag}", f"/inventory/sku/{tag}"
    with (
        AlertmanagerServer(config=routed_config(webhooks), base_dir=tmp_path / "am") as am,
        InProcessAgent(
            alertmanager_urls=[am.url],
            http_setup=[
                alert_options(
                    resend_interval=1.0,
                    backoff_initial=0.1,
                    runbook_url="https://wiki.example/locks/{alertname}",
                )
            ],
        ) as agent,
    ):
        # payments holds the order and waits for the SKU inventory holds, and vice versa.
        agent.post_events(deadlock_events(order, sku, a=PAYMENTS, b=INVENTORY))
        (finding,) = agent.wait_for(
            lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
        )
        wait_until(lambda: webhooks.alerts("/payments") and webhooks.alerts("/inventory"),
                   timeout=30, what="both teams notified")  # fmt: skip
        payments = webhooks.alerts("/payments")
        inventory = webhooks.alerts("/inventory")
        assert {a["labels"]["service"] for a in payments} == {"payments"}
        assert {a["labels"]["service"] for a in inventory} == {"inventory"}
        assert {a["labels"]["lock"] for a in payments} == {order}
        assert {a["labels"]["lock"] for a in inventory} == {sku}
        assert {a["labels"]["id"] for a in payments + inventory} == {finding["id"]}
        assert not webhooks.alerts("/else")
        note = payments[0]["annotations"]
        assert note["runbook_url"] == "https://wiki.example/locks/lockdeadlock"
        assert note["services"] == "inventory, payments"
        # Alertmanager holds exactly two alerts for the finding: one per service.
        held = am.alerts(alertname="LockDeadlock", id=finding["id"])
        assert sorted(a["labels"]["service"] for a in held) == ["inventory", "payments"]


def _finding(kind: str, data: dict[str, Any], services: tuple[str, ...]) -> Finding:
    return Finding(
        kind, f"{kind[:3]}-1", "text", data, time.time_ns(), templates=("ledger",),
        systems=("redis",), services=services,
    )  # fmt: skip


def test_a_violation_between_two_services_alerts_both() -> None:
    data = {"lock": "ledger", "service": "billing", "other": {"service": "shipping"}}
    sets = alert_label_sets(_finding(VIOLATION, data, ("billing",)))
    assert [(s["service"], s["lock"]) for s in sets] == [("billing", "ledger"),
                                                          ("shipping", "ledger")]  # fmt: skip
    assert {s["id"] for s in sets} == {"vio-1"}


def test_an_inversion_gives_each_service_the_locks_it_takes() -> None:
    data = {
        "pairs": [
            {"first": "account:{id}", "second": "ledger", "service": "billing"},
            {"first": "ledger", "second": "account:{id}", "service": "shipping"},
            {"first": "ledger", "second": "audit", "service": "shipping"},
        ]
    }
    sets = alert_label_sets(_finding(ORDER_INVERSION, data, ("billing", "shipping")))
    assert [(s["service"], s["lock"]) for s in sets] == [
        ("billing", "account:{id},ledger"),
        ("shipping", "account:{id},audit,ledger"),
    ]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=LockDeadlock", "service=payments"], "payments-pager"),
        (["alertname=LockDeadlock", "service=inventory"], "inventory-pager"),
        (["alertname=LockDeadlock", "service=shipping"], "lock-pager"),
        (["alertname=LockStaleHolder", "service=payments"], "payments-chat"),
        (["alertname=LockscopeAgentDown"], "platform"),
    ],
)
def test_the_example_config_routes_per_service(labels: list[str], receiver: str) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing (prometheus-alertmanager, scripts/setup-system.sh)"
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={EXAMPLE}", *labels],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver
