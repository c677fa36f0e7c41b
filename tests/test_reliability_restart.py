"""Issue 14 items 6 and 7: what an agent restart must not lose, and when an orphan ends.

Real ``lockscope agent`` processes (SIGKILLed and started again on the same ports, with
the same state file), real instrumented workers, real Redis and ZooKeeper."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from reliability_helpers import AgentProcess, Worker, findings, get_json, until

HB = 0.5
"""Heartbeat interval of the workers (seconds): "two heartbeats" is 1 s."""


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    process = AgentProcess().start()
    try:
        yield process
    finally:
        process.stop()


def active(http_url: str, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        f
        for f in findings(http_url, kind)
        if f["status"] == "active" and all(f.get(k) == v for k, v in match.items())
    ]


def test_inversions_and_orphans_come_back_after_an_agent_restart(
    agent: AgentProcess, redis_url: str
) -> None:
    """The report: after SIGKILL and restart an order inversion (pairs are sent once per
    process lifetime) and an orphaned holder (its process is dead: nothing re-reports it;
    here a redis-py lock with no timeout, stuck for good) never came back."""
    one = Worker(
        "order", {"url": redis_url, "first": "ia:1", "second": "ib:1"}, agent.otlp_url, heartbeat=HB
    )
    two = Worker(
        "order", {"url": redis_url, "first": "ib:2", "second": "ia:2"}, agent.otlp_url, heartbeat=HB
    )
    holder = Worker(
        "hold", {"url": redis_url, "name": "stuck:1", "ttl": None}, agent.otlp_url, heartbeat=HB
    )
    try:
        one.expect("done")
        two.expect("done")
        holder.expect("holding")
        until(lambda: get_json(agent.http_url + "/api/v1/locks")["locks"], timeout=10)
        holder.kill()  # SIGKILL: it never releases; the key stays in Redis for good
        inversion = until(lambda: active(agent.http_url, "order-inversions"), timeout=20)
        orphan = until(
            lambda: active(agent.http_url, "stale-holders", reason="orphaned", lock="stuck:1"),
            timeout=20,
        )
        time.sleep(1.5)  # let the agent's periodic save (every second) run
        agent.restart()
        t0 = time.monotonic()
        inversion_again = until(lambda: active(agent.http_url, "order-inversions"), timeout=10)
        orphan_again = until(
            lambda: active(agent.http_url, "stale-holders", reason="orphaned", lock="stuck:1"),
            timeout=10,
        )
        elapsed = time.monotonic() - t0
        print(f"both findings back {elapsed:.2f} s after the restart")
        assert {f["id"] for f in inversion_again} == {f["id"] for f in inversion}
        assert [f["id"] for f in orphan_again] == [f["id"] for f in orphan]
        # ...and the live processes are still tracked as before (their heartbeats).
        processes = get_json(agent.http_url + "/api/v1/processes")["processes"]
        assert {one.pid, two.pid} <= {p["pid"] for p in processes if p["alive"]}
    finally:
        for w in (one, two, holder):
            w.kill()


def test_a_stuck_lock_without_a_lease_stays_orphaned_past_retention(
    redis_url: str, tmp_path: Any
) -> None:
    """Item 7, the second half: a hold no server lease ends (redis-py lock without a
    timeout) stays an active orphan until the lock is released, even past
    ``dead_process_retention``; one with a lease resolves when the lease ends."""
    config = tmp_path / "agent.toml"
    config.write_text("dead_process_retention = 1\nlease_grace = 0.2\n")
    agent = AgentProcess("--config", str(config)).start()
    stuck = Worker(
        "hold", {"url": redis_url, "name": "nolease:1", "ttl": None}, agent.otlp_url, heartbeat=HB
    )
    leased = Worker(
        "hold", {"url": redis_url, "name": "lease:1", "ttl": 3}, agent.otlp_url, heartbeat=HB
    )
    try:
        stuck.expect("holding")
        leased.expect("holding")
        until(lambda: len(get_json(agent.http_url + "/api/v1/locks")["locks"]) == 2, timeout=10)
        stuck.kill()
        leased.kill()
        until(
            lambda: active(agent.http_url, "stale-holders", reason="orphaned", lock="lease:1"),
            timeout=20,
        )
        until(
            lambda: active(agent.http_url, "stale-holders", reason="orphaned", lock="nolease:1"),
            timeout=20,
        )
        # The leased one ends when Redis ends it (3 s after it was taken, plus grace).
        until(lambda: not active(agent.http_url, "stale-holders", lock="lease:1"), timeout=20)
        # Well past retention (1 s) the stuck one is still reported.
        time.sleep(3)
        assert active(agent.http_url, "stale-holders", reason="orphaned", lock="nolease:1")
    finally:
        stuck.kill()
        leased.kill()
        agent.stop()


def test_an_orphaned_zookeeper_hold_resolves_when_its_session_ends(
    agent: AgentProcess, zookeeper_server: Any
) -> None:
    """Item 7, the attack: a ZooKeeper lock holder SIGKILLed; ZooKeeper deleted its
    ephemeral node after the session timeout, yet the finding stayed orphaned more than 2
    minutes later.  It must resolve once the session is over."""
    holder = Worker(
        "zk_hold",
        {"hosts": zookeeper_server.hosts, "path": "/rel/orph", "timeout": 4},
        agent.otlp_url,
        heartbeat=HB,
    )
    observer = KazooClient(hosts=zookeeper_server.hosts)
    observer.start(timeout=30)
    try:
        holder.expect("holding")
        until(lambda: get_json(agent.http_url + "/api/v1/locks")["locks"], timeout=10)
        holder.kill()
        orphan = until(
            lambda: active(agent.http_url, "stale-holders", reason="orphaned", lock="/rel/orph"),
            timeout=20,
        )
        until(lambda: not observer.get_children("/rel/orph"), timeout=60, interval=0.1)
        until(lambda: not active(agent.http_url, "stale-holders", lock="/rel/orph"), timeout=60)
        resolved = [
            f for f in findings(agent.http_url, "stale-holders") if f["id"] == orphan[0]["id"]
        ]
        assert resolved[0]["resolution"] == "lease_expired"
    finally:
        holder.kill()
        observer.stop()
        observer.close()


def test_one_shot_findings_and_dead_holders_come_back_from_the_state_file(tmp_path: Any) -> None:
    """What no process reports again, kept by the state file: a violation (one-shot, with
    its expiry) and a dead process's hold come back in a new agent state, same ids; a
    leased orphan whose lease ended meanwhile comes back resolved."""
    import asyncio

    from agent_helpers import S, World
    from lockscope import events as ev
    from lockscope.agent.durable import DurableFile
    from lockscope.agent.durable_sync import DurableSync

    path = tmp_path / "state.sqlite"
    w = World()
    since1 = w.now
    w.heartbeat(1, holds=[])
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + S, ev.ATTR_LOCK_TOKEN: 5})
    w.advance(2)
    w.hold("2.1", "A", since=w.now - S // 5, **{ev.ATTR_LOCK_TOKEN: 6})
    w.advance(0.5)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since1, **{ev.ATTR_LOCK_TOKEN: 5})])
    w.heartbeat(3, holds=[])
    w.hold("3.1", "stuck")  # no lease: only a release ends it
    w.hold("3.1", "leased", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 5 * S})
    w.advance(3.5)  # process 3 presumed dead: two orphans
    violations = [v["id"] for v in w.active("violations")]
    orphans = sorted(
        (f["lock"], f["id"])
        for f in w.active("stale_holders")
        if f["reason"] == "orphaned" and f["lock"] in ("leased", "stuck")
    )
    assert violations
    assert [lock for lock, _ in orphans] == ["leased", "stuck"]

    async def save() -> None:
        sync = DurableSync(w.state, DurableFile(path))
        await asyncio.wrap_future(sync.save_now())
        await sync.file.close()

    asyncio.run(save())
    w2 = World()
    w2.now = w.now + 10 * S  # the agent was down 10 s: the leased orphan's lease ended

    async def restore() -> dict[str, int]:
        sync = DurableSync(w2.state, DurableFile(path))
        await sync.restore()
        await sync.file.close()
        return sync.restored

    restored = asyncio.run(restore())
    assert restored["holds"] >= 3
    assert [v["id"] for v in w2.active("violations")] == violations
    back = sorted(
        (f["lock"], f["id"])
        for f in w2.active("stale_holders")
        if f["reason"] == "orphaned" and f["lock"] in ("leased", "stuck")
    )
    assert back == [orphans[1]]  # stuck: same id; leased: its lease ended while down
