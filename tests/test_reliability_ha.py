"""High availability: two agents get the same events (the shim fans out to both through
``LOCKSCOPE_ENDPOINT=A,B``), both push to one real Alertmanager, and its webhook receiver
gets one notification per finding (firing, then resolved).  With one agent down, the other
still finds and alerts, and the shim keeps delivering to it."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from lockscope.agent.export_alertmanager import alert_options
from lockscope.testing.agent import InProcessAgent
from lockscope.testing.prometheus import AlertmanagerServer
from reliability_helpers import Worker, until

HB = 0.5


class Webhook:
    """An Alertmanager webhook receiver that counts notifications per alert and status."""

    def __init__(self) -> None:
        self.notifications: Counter[tuple[str, str]] = Counter()
        self.payloads: list[Any] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = json.loads(body)
                hook.payloads.append(payload)
                for alert in payload["alerts"]:
                    hook.notifications[(alert["fingerprint"], alert["status"])] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def for_finding(self, finding_id: str) -> Counter[str]:
        """Notifications (by status) of the alert about one finding."""
        out: Counter[str] = Counter()
        seen: set[tuple[str, str, int]] = set()
        for payload in list(self.payloads):
            for alert in payload["alerts"]:
                if alert["labels"].get("id") == finding_id:
                    key = (alert["fingerprint"], alert["status"], id(payload))
                    if key not in seen:
                        seen.add(key)
                        out[alert["status"]] += 1
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def alertmanager(webhook: Webhook) -> Iterator[AlertmanagerServer]:
    config = (
        "route:\n"
        "  receiver: hook\n"
        "  group_by: ['alertname', 'lock']\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"  # a duplicate notification within the test would be a bug
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: '{webhook.url}'\n"
        "        send_resolved: true\n"
    )
    with AlertmanagerServer(config=config) as server:
        yield server


def agent_for(am: AlertmanagerServer) -> InProcessAgent:
    return InProcessAgent(
        alertmanager_urls=[am.url],
        http_setup=[
            alert_options(
                external_url="https://lockscope.example.test",
                resend_interval=1.0,
                backoff_initial=0.1,
                backoff_max=0.5,
            )
        ],
    )


def alerts_sent(agent: InProcessAgent) -> float:
    from reliability_helpers import metric_value, request

    text = request(agent.http_url + "/metrics")[2].decode()
    return metric_value(text, "lockscope_agent_alerts_sent_total")


def active(agent: InProcessAgent, locks: set[str]) -> list[dict[str, Any]]:
    return [
        d
        for d in agent.get("/api/v1/deadlocks")["deadlocks"]
        if d["status"] == "active" and set(d["locks"]) == locks
    ]


def deadlock(url: str, endpoint: str, a: str, b: str) -> tuple[Worker, Worker]:
    one = Worker("deadlock", {"url": url, "first": a, "second": b}, endpoint, heartbeat=HB)
    two = Worker("deadlock", {"url": url, "first": b, "second": a}, endpoint, heartbeat=HB)
    one.expect("holding")
    two.expect("holding")
    one.send("go")
    two.send("go")
    return one, two


def test_two_agents_one_notification_per_finding(
    alertmanager: AlertmanagerServer, webhook: Webhook, redis_url: str
) -> None:
    locks = {"ha:a", "ha:b"}
    with agent_for(alertmanager) as one, agent_for(alertmanager) as two:
        endpoint = f"{one.otlp_url},{two.otlp_url}"
        pair = deadlock(redis_url, endpoint, "ha:a", "ha:b")
        try:
            found = [until(functools.partial(active, a, locks), timeout=20)[0] for a in (one, two)]
            assert found[0]["id"] == found[1]["id"]  # the same stable id on both agents
            fid = found[0]["id"]
            until(lambda: webhook.for_finding(fid)["firing"] >= 1, timeout=30)
            # Both agents keep re-sending; Alertmanager still holds one alert and the
            # receiver got one notification.
            base = (alerts_sent(one), alerts_sent(two))
            until(lambda: alerts_sent(one) >= base[0] + 3 and alerts_sent(two) >= base[1] + 3)
            alerts = alertmanager.alerts(alertname="LockDeadlock", id=fid)
            assert len({a["fingerprint"] for a in alerts}) == 1
            pair[0].kill()  # the victim
            until(lambda: webhook.for_finding(fid)["resolved"] >= 1, timeout=60)
            until(lambda: not active(one, locks) and not active(two, locks))
            assert webhook.for_finding(fid) == Counter({"firing": 1, "resolved": 1})
        finally:
            for worker in pair:
                worker.kill()


def test_one_agent_down_the_other_still_alerts(
    alertmanager: AlertmanagerServer, webhook: Webhook, redis_url: str
) -> None:
    locks = {"ha2:a", "ha2:b"}
    with agent_for(alertmanager) as one:
        two = agent_for(alertmanager).start()
        endpoint = f"{two.otlp_url},{one.otlp_url}"  # the dead one first
        two.stop()
        pair = deadlock(redis_url, endpoint, "ha2:a", "ha2:b")
        try:
            found = until(lambda: active(one, locks), timeout=20)[0]
            until(lambda: webhook.for_finding(found["id"])["firing"] >= 1, timeout=30)
            assert webhook.for_finding(found["id"])["firing"] == 1
        finally:
            for worker in pair:
                worker.kill()
