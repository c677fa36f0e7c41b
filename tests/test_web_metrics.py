"""/metrics on a live in-process agent fed over real OTLP/HTTP: SPEC names, HELP text,
labels, the lock-label cap, counter resets, and ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from export_helpers import (
    BILLING,
    SHIPPING,
    deadlock_events,
    families,
    lock_attrs,
    metrics_body,
    metrics_text,
    post_metrics,
    proc,
    samples,
)
from lockscope import events as ev
from lockscope.agent.config import AgentConfig, Limits
from lockscope.agent.model import Event
from lockscope.agent.web_metrics import OTHER_LOCK, LabelCap
from lockscope.testing.agent import InProcessAgent

SPEC_METRICS = {
    # family name -> (type, label names of its samples)
    "lockscope_lock_acquisitions": ("counter", {"lock", "system", "result"}),
    "lockscope_lock_wait_seconds": ("histogram", {"lock", "system"}),
    "lockscope_lock_hold_seconds": ("histogram", {"lock", "system"}),
    "lockscope_lock_waiters": ("gauge", {"lock"}),
    "lockscope_deadlocks_detected": ("counter", set()),
    "lockscope_deadlocks_active": ("gauge", set()),
    "lockscope_stale_holders": ("gauge", {"reason"}),
    "lockscope_mutual_exclusion_violations": ("counter", {"lock"}),
    "lockscope_lock_order_inversions": ("gauge", set()),
    "lockscope_locks_lost": ("counter", {"lock"}),
    "lockscope_agent_events_received": ("counter", {"signal"}),
    "lockscope_agent_events_rejected": ("counter", {"reason"}),
    "lockscope_agent_reporting_processes": ("gauge", set()),
}
BOUNDS = (0.01, 0.1, 1.0)


@pytest.fixture
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as agent:
        yield agent


def _feed(agent: InProcessAgent) -> None:
    agent.post_events(deadlock_events())
    agent.wait_for(lambda: agent.get("/api/v1/deadlocks?status=active")["deadlocks"])
    post_metrics(
        agent,
        metrics_body(
            BILLING,
            acquisitions=[("orders/{id}", "acquired", 7), ("orders/{id}", "timeout", 2)],
            waits=[("orders/{id}", BOUNDS, [3, 2, 1, 1], 2.5)],
            lost=[("orders/{id}", 1)],
        ),
    )
    # A bad request is rejected and counted by reason.
    bad = urllib.request.Request(
        agent.otlp_url + "/v1/logs",
        data=b"\xff\x00garbage",
        headers={"Content-Type": "application/x-protobuf"},
    )
    with pytest.raises(urllib.error.HTTPError, match="400"):
        urllib.request.urlopen(bad, timeout=10)


def test_every_spec_metric_with_help_type_and_labels(agent: InProcessAgent) -> None:
    _feed(agent)
    text = metrics_text(agent)
    found = families(text)
    for name, (kind, labels) in SPEC_METRICS.items():
        assert name in found, f"{name} missing"
        family = found[name]
        assert family.type == kind, name
        assert len(family.documentation) > 20, f"{name} has no useful HELP"
        assert f"# HELP {name}" in text
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    # Values from the live state and the shim's metrics.
    assert samples(text, "lockscope_deadlocks_active")[()] == 1
    assert samples(text, "lockscope_deadlocks_detected_total")[()] == 1
    assert samples(text, "lockscope_agent_reporting_processes")[()] == 2
    waiters = samples(text, "lockscope_lock_waiters")
    assert sum(waiters.values()) == 2
    acquisitions = samples(text, "lockscope_lock_acquisitions_total")
    assert acquisitions[(("lock", "orders/{id}"), ("result", "acquired"), ("system", "redis"))] == 7
    assert acquisitions[(("lock", "orders/{id}"), ("result", "timeout"), ("system", "redis"))] == 2
    buckets = samples(text, "lockscope_lock_wait_seconds_bucket")
    by_le = {dict(k)["le"]: v for k, v in buckets.items()}
    assert by_le == {"0.01": 3, "0.1": 5, "1.0": 6, "+Inf": 7}  # cumulative, as Prometheus wants
    assert (
        samples(text, "lockscope_lock_wait_seconds_count")[
            (("lock", "orders/{id}"), ("system", "redis"))
        ]
        == 7
    )
    assert samples(text, "lockscope_locks_lost_total")[(("lock", "orders/{id}"),)] == 1
    received = samples(text, "lockscope_agent_events_received_total")
    assert received[(("signal", "logs"),)] == 4
    assert received[(("signal", "metrics"),)] >= 3
    assert (
        samples(text, "lockscope_agent_events_rejected_total")[(("reason", "decode_error"),)] == 1
    )
    # Base units and conventions: no milliseconds, counters end in _total.
    for family in found.values():
        assert "millis" not in family.name
        assert "_ms" not in family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_promtool_check_metrics_on_live_output(agent: InProcessAgent) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    _feed(agent)
    text = metrics_text(agent)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


def test_promtool_catches_a_bad_exposition() -> None:
    """The check above can fail: promtool flags a counter without _total."""
    bad = "# HELP foo_seconds x\n# TYPE foo_seconds counter\nfoo_seconds 1\n"
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0 or result.stdout.strip() or result.stderr.strip()


def test_lock_label_cap_folds_into_other_and_counts() -> None:
    config = AgentConfig(limits=Limits(max_label_values=3))
    with InProcessAgent(config) as agent:
        templates = [f"tpl-{c}" for c in "abcde"]
        post_metrics(
            agent,
            metrics_body(BILLING, acquisitions=[(t, "acquired", 10) for t in templates]),
        )
        text = metrics_text(agent)
        acquisitions = samples(text, "lockscope_lock_acquisitions_total")
        locks = {dict(k)["lock"]: v for k, v in acquisitions.items()}
        assert len(locks) == 4
        assert locks[OTHER_LOCK] == 20
        assert sum(locks.values()) == 50
        labels = samples(text, "lockscope_agent_lock_labels")
        assert labels[(("state", "kept"),)] == 3
        assert labels[(("state", "folded"),)] == 2
        # The cap is sticky: the same series on the next scrape.
        again = samples(metrics_text(agent), "lockscope_lock_acquisitions_total")
        assert again == acquisitions


def test_label_cap_is_sticky_and_maps_the_states_overflow() -> None:
    cap = LabelCap(2)
    assert cap("a") == "a"
    assert cap("b") == "b"
    assert cap("c") == OTHER_LOCK
    assert cap("a") == "a"
    assert cap("{other}") == OTHER_LOCK
    assert (cap.kept, cap.folded) == (2, 1)


def test_counters_never_decrease_across_process_restarts(agent: InProcessAgent) -> None:
    series = (("lock", "jobs"), ("result", "acquired"), ("system", "redis"))

    def total() -> float:
        return samples(metrics_text(agent), "lockscope_lock_acquisitions_total").get(series, 0)

    t0 = time.time_ns()
    post_metrics(
        agent, metrics_body(BILLING, [("jobs", "acquired", 10)], start_ns=t0, time_ns=t0 + 1)
    )
    assert total() == 10
    post_metrics(
        agent, metrics_body(BILLING, [("jobs", "acquired", 15)], start_ns=t0, time_ns=t0 + 2)
    )
    assert total() == 15
    # The SDK restarted inside the process: a lower cumulative value, a later start.
    post_metrics(
        agent, metrics_body(BILLING, [("jobs", "acquired", 4)], start_ns=t0 + 3, time_ns=t0 + 4)
    )
    assert total() == 19
    # The process restarted: a new service.instance.id, counting from zero again.
    restarted = proc("billing", 101, instance="billing-101-restarted")
    post_metrics(
        agent, metrics_body(restarted, [("jobs", "acquired", 2)], start_ns=t0 + 5, time_ns=t0 + 6)
    )
    assert total() == 21
    # Forgetting the dead process keeps its totals in the sum.
    agent.call(lambda: agent.runner.metrics_store.forget_process(BILLING.instance))
    assert total() == 21


def test_lost_locks_are_not_counted_twice(agent: InProcessAgent) -> None:
    """A lost lock arrives as the shim's counter and as a lock.lost event: counted once."""

    now = time.time_ns()
    agent.post_events(
        [
            Event(
                ev.EVENT_HOLD_START,
                now - 2_000_000_000,
                SHIPPING,
                lock_attrs("ledger", "thread:1", now - 2_000_000_000),
            ),
            Event(
                ev.EVENT_LOCK_LOST,
                now,
                SHIPPING,
                lock_attrs("ledger", "thread:1", now - 2_000_000_000),
            ),
        ]
    )
    agent.wait_for(lambda: samples(metrics_text(agent), "lockscope_locks_lost_total"))
    post_metrics(agent, metrics_body(SHIPPING, lost=[("ledger", 1)]))
    assert samples(metrics_text(agent), "lockscope_locks_lost_total")[(("lock", "ledger"),)] == 1
