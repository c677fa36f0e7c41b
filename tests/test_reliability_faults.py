"""Faults around the apps and around the agent, with real processes under the shim and a
real agent process:

- the shim recovers by itself when its agent comes back from 500s, a black hole or a
  restart, and counts what it dropped meanwhile;
- an agent restarted (SIGKILL) during a live deadlock finds it again from the next
  heartbeats, under the same stable id;
- with 10% of lock events dropped at random and delivery reordered (a fault proxy between
  shims and agent), random contention yields no false deadlock and an injected deadlock is
  still found (the long version is ``benchmarks/soak.py``);
- Redis killed and restarted under a holder, and a ZooKeeper session expiring under a
  holder: the findings are the lost lock that really happened, and nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from kazoo.client import KazooClient

from lockscope.agent.web_api import api_processes
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing import faults
from lockscope.testing.agent import InProcessAgent
from reliability_helpers import AgentProcess, FaultProxy, Worker, findings, get_json, until

HB = 0.5
"""Heartbeat interval of the worker processes (seconds)."""


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    process = AgentProcess().start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def workers(*items: Worker) -> Iterator[tuple[Worker, ...]]:
    try:
        yield items
    finally:
        for worker in items:
            worker.kill()


def active_deadlocks(http_url: str, locks: set[str]) -> list[dict[str, Any]]:
    return [
        d
        for d in findings(http_url, "deadlocks")
        if d["status"] == "active" and set(d["locks"]) == locks
    ]


def deadlock_pair(url: str, endpoint: str, a: str, b: str) -> tuple[Worker, Worker]:
    first = Worker("deadlock", {"url": url, "first": a, "second": b}, endpoint, heartbeat=HB)
    second = Worker("deadlock", {"url": url, "first": b, "second": a}, endpoint, heartbeat=HB)
    first.expect("holding")
    second.expect("holding")
    first.send("go")
    second.send("go")
    return first, second


# -- the shim recovers by itself ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "429", "black_hole", "agent_down"])
def test_the_shim_recovers_by_itself_when_the_agent_returns(fault: str) -> None:
    with InProcessAgent() as upstream, FaultProxy(upstream=upstream.otlp_url) as proxy:
        if fault == "black_hole":
            proxy.mode = "black_hole"
        elif fault == "agent_down":
            proxy.mode, proxy.status = "status", 503  # as a Collector with no agent behind
        else:
            proxy.mode, proxy.status = "status", int(fault)
            proxy.retry_after = "0.2" if fault == "429" else None
        config = ShimConfig(
            endpoint=proxy.endpoint,
            report_after=0.02,
            heartbeat=0.05,
            metrics_export="none",
            queue_size=50,
            http_timeout=0.3,
        )
        instrumentor = LockscopeInstrumentor()
        instrumentor.instrument(config=config)
        try:
            shim = runtime.current
            assert shim is not None
            until(lambda: shim.reporter.failed_posts >= 2)
            assert shim.reporter.sent == 0
            assert shim.recorder.pending() <= 50  # bounded while the agent is away
            proxy.mode = "pass"
            until(lambda: shim.reporter.sent > 0)
            until(
                lambda: any(
                    p["instance"] == shim.instance_id
                    for p in upstream.call(partial(api_processes, upstream.state))["processes"]
                )
            )
            # What could not be delivered was counted, and the agent learns the count.
            if fault == "500":
                assert shim.recorder.dropped > 0
        finally:
            instrumentor.uninstrument(flush_timeout=0.2)


# -- the agent restarted during a live deadlock -----------------------------------------------


def test_agent_restart_during_a_live_deadlock(agent: AgentProcess, redis_url: str) -> None:
    locks = {"restart:a", "restart:b"}
    with workers(*deadlock_pair(redis_url, agent.otlp_url, "restart:a", "restart:b")):
        before = until(lambda: active_deadlocks(agent.http_url, locks), timeout=20)
        agent.restart()
        assert findings(agent.http_url, "deadlocks") == []  # a fresh agent: no memory
        restarted = time.monotonic()
        after = until(lambda: active_deadlocks(agent.http_url, locks), timeout=2 * HB + 10)
        took = time.monotonic() - restarted
        print(f"deadlock found again {took:.2f} s after the restart (heartbeat {HB} s)")
        # Same participants, same stable id: Alertmanager sees the same alert, not a new one.
        assert after[0]["id"] == before[0]["id"]
        assert {p["pid"] for p in after[0]["participants"]} == {
            p["pid"] for p in before[0]["participants"]
        }


# -- lossy, reordered delivery ---------------------------------------------------------------


def test_dropped_and_reordered_events_no_false_deadlock_and_injected_one_found(
    agent: AgentProcess, redis_url: str
) -> None:
    """The CI-sized soak: 4 processes x 300 operations (benchmarks/soak.py runs 10 x 10,000)."""
    with FaultProxy(upstream=agent.otlp_url, seed=7) as proxy:
        proxy.drop, proxy.reorder = 0.10, True
        cfg = {"url": redis_url, "ops": 300, "threads": 2, "locks": 4, "long_every": 5}
        soakers = [
            Worker("soak", {**cfg, "seed": n}, proxy.endpoint, heartbeat=HB, report_after=0.02)
            for n in range(4)
        ]
        with workers(*soakers):
            with workers(*deadlock_pair(redis_url, proxy.endpoint, "inj:a", "inj:b")) as pair:
                until(lambda: active_deadlocks(agent.http_url, {"inj:a", "inj:b"}), timeout=30)
                pair[0].kill()  # the victim: the deadlock must resolve
                until(lambda: not active_deadlocks(agent.http_url, {"inj:a", "inj:b"}), timeout=30)
            for worker in soakers:
                assert worker.wait(300) == 0
                worker.expect("done")
        print(dict(proxy.counts))
        assert proxy.counts["records_dropped"] > 0
        false = [
            {"locks": d["locks"], "detected_at": d["detected_at"], "resolved_at": d["resolved_at"]}
            for d in findings(agent.http_url, "deadlocks")
            if not set(d["locks"]) <= {"inj:a", "inj:b"}
        ]
        assert false == []
        assert findings(agent.http_url, "violations") == []


# -- lock servers failing under holders ---------------------------------------------------------


def test_redis_killed_and_restarted_under_a_holder(
    agent: AgentProcess, redis_server: Any, redis_url: str
) -> None:
    holder = Worker("hold", {"url": redis_url, "name": "rk:x", "ttl": 60}, agent.otlp_url)
    busy = Worker(
        "soak",
        {"url": redis_url, "ops": 400, "threads": 2, "locks": 3, "long_every": 4},
        agent.otlp_url,
        report_after=0.02,
    )
    with workers(holder, busy):
        holder.expect("holding")
        until(lambda: any(x["name"] == "rk:x" for x in get_locks(agent.http_url)), timeout=10)
        redis_server.kill()  # no persistence: every lease is gone
        redis_server.start()
        holder.send("release")
        holder.expect("lost")
        stale = until(
            lambda: [s for s in findings(agent.http_url, "stale-holders") if s["lock"] == "rk:x"],
            timeout=10,
        )
        assert stale[0]["pid"] == holder.pid
        assert stale[0]["reason"] == "lease_expired"
        summary = busy.expect("done", timeout=120)
        print("load during the restart:", summary)
        # The load's connection errors are not findings; the leases it really lost are.
        expected = {"rk:x", *summary["lost"]}
        until(
            lambda: {s["lock"] for s in findings(agent.http_url, "stale-holders")} == expected,
            timeout=10,
        )
        assert findings(agent.http_url, "deadlocks") == []
        assert findings(agent.http_url, "violations") == []


def get_locks(http_url: str) -> list[dict[str, Any]]:
    return list(get_json(http_url + "/api/v1/locks")["locks"])


def test_zookeeper_session_expiry_for_a_holder(agent: AgentProcess, zookeeper_server: Any) -> None:
    holder = Worker(
        "zk_hold",
        {"hosts": zookeeper_server.hosts, "path": "/rel/zk", "timeout": 2},
        agent.otlp_url,
    )
    with workers(holder):
        holder.expect("holding")
        until(lambda: get_locks(agent.http_url), timeout=10)
        until(lambda: heartbeated(agent.http_url, holder.pid), timeout=10)
        # Stop the holder past its session timeout: the server expires the session and
        # deletes its lock node; on waking the client learns the session is LOST.
        observer = KazooClient(hosts=zookeeper_server.hosts)
        observer.start(timeout=30)
        try:
            assert observer.get_children("/rel/zk")
            with faults.paused(holder.pid):
                orphaned = until(lambda: stale_for(agent.http_url, holder.pid), timeout=20)
                assert [s["reason"] for s in orphaned] == ["orphaned"]
                # The session expired when the server deleted the holder's lock node.
                until(lambda: not observer.get_children("/rel/zk"), timeout=30, interval=0.1)
        finally:
            observer.stop()
            observer.close()
        holder.expect("lost", timeout=30)
        holder.send("release")
        holder.expect("done", timeout=30)
        lost = until(
            lambda: [
                s for s in stale_for(agent.http_url, holder.pid) if s["reason"] == "lease_expired"
            ],
            timeout=15,
        )
        assert lost[0]["lock"] == "/rel/zk"
        reasons = {s["reason"] for s in stale_for(agent.http_url, holder.pid)}
        print("stale-holder findings for the expired holder:", reasons)
        assert reasons == {"orphaned", "lease_expired"}
        assert findings(agent.http_url, "deadlocks") == []
        assert findings(agent.http_url, "violations") == []


def heartbeated(http_url: str, pid: int) -> bool:
    processes = get_json(http_url + "/api/v1/processes")["processes"]
    return any(p["pid"] == pid and p["last_heartbeat"] for p in processes)


def stale_for(http_url: str, pid: int) -> list[dict[str, Any]]:
    return [s for s in findings(http_url, "stale-holders") if s["pid"] == pid]


def test_thread_frames_pause_the_collector_on_python_311(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak froze an instrumented app in sys._current_frames() (CPython gh-106883): the
    reporter must call it with the garbage collector paused, and turn it back on."""
    import gc
    import sys

    from lockscope.instrumentation import reporter

    seen: list[bool] = []

    def current_frames() -> dict[int, object]:
        seen.append(gc.isenabled())
        return {}

    monkeypatch.setattr(sys, "_current_frames", current_frames)
    assert gc.isenabled()
    reporter._thread_frames()
    assert seen == [sys.version_info >= (3, 12)]
    assert gc.isenabled()
    gc.disable()
    try:
        reporter._thread_frames()  # the app's choice is left alone
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_reordered_older_heartbeat_does_not_hide_a_deadlock() -> None:
    """Found by the soak: a heartbeat taken just before a wait was reported, delivered just
    after it, dropped the wait; the next heartbeats listing it were then ignored for
    tombstone_ttl, and the deadlock went unseen.  A newer snapshot now brings it back."""
    from agent_helpers import World

    w = World()
    w.hold("1.1", "ro:a")
    w.hold("2.1", "ro:b")
    w.heartbeat(1, holds=[w.entry("1.1", "ro:a", w.held_since("1.1", "ro:a"))])
    w.heartbeat(2, holds=[w.entry("2.1", "ro:b", w.held_since("2.1", "ro:b"))])
    w.advance(0.1)
    began = w.now - 30_000_000
    # Process 1 began waiting 30 ms ago; its heartbeat 10 ms ago did not list the wait yet
    # (not reported then); the wait.start (stamped with its start, as the shim does) and
    # then that heartbeat arrive, in this order.
    w.wait("1.1", "ro:b", since=began, t=began)
    hold_a = w.entry("1.1", "ro:a", w.held_since("1.1", "ro:a"))
    w.heartbeat(1, holds=[hold_a], t=w.now - 10_000_000)
    assert w.wait_since("1.1") is None  # the older snapshot dropped it (for now)
    w.advance(0.5)
    wait_b = w.entry("1.1", "ro:b", began)
    w.heartbeat(1, holds=[hold_a], waits=[wait_b])  # the next snapshot lists it
    assert w.wait_since("1.1") is not None
    w.wait("2.1", "ro:a")
    w.heartbeat(2, holds=[w.entry("2.1", "ro:b", w.held_since("2.1", "ro:b"))],
                waits=[w.entry("2.1", "ro:a", w.now)])  # fmt: skip
    w.advance(0.1)
    assert w.deadlocks() == [w.keys("1.1", "2.1")]
