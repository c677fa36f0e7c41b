"""Lock safety under the shim: the lock library's fault scenarios rerun with the worker
processes instrumented and a real agent watching.  The agent must report each lost lock
or violation that really occurred, and nothing else.

- Kleppmann's pause: a RedisLock holder is stopped past its lease, a successor takes the
  lock with a higher fencing token, the holder wakes and learns it lost the lock at its
  next call: one active lost lock (``lease_expired``) for the holder (while it was
  stopped it was also briefly ``orphaned``, and "still held after its lease ended" when it
  woke: both resolved into the lost lock), no deadlock, and no violation (the lock server
  never let two holders in: the lease had ended);
- contention across processes (the counting test): four instrumented processes, a hundred
  critical sections, no lost update, and no finding at all.

Redis killed under a holder and a ZooKeeper session expiring are in
tests/test_reliability_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lockscope.testing import faults
from reliability_helpers import LOCKSCOPE, AgentProcess, findings, get_json, request, until

WORKER = str(Path(__file__).with_name("redis_lock_worker.py"))


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    process = AgentProcess().start()
    try:
        yield process
    finally:
        process.stop()


def instrumented(cfg: dict[str, Any], endpoint: str) -> subprocess.Popen[str]:
    """tests/redis_lock_worker.py under the shim, reporting to ``endpoint``."""
    env = {
        "LOCKSCOPE_ENDPOINT": endpoint,
        "LOCKSCOPE_HEARTBEAT": "0.2",
        "LOCKSCOPE_REPORT_AFTER": "0.02",
        "LOCKSCOPE_METRICS_EXPORT": "none",
        "OTEL_SERVICE_NAME": "safety",
    }
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
    return subprocess.Popen(
        [*LOCKSCOPE, "instrument", "--", sys.executable, WORKER, json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**base, **env},
    )


def everything(http_url: str) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: findings(http_url, kind)
        for kind in ("deadlocks", "stale-holders", "violations", "order-inversions")
    }


def test_paused_holder_past_its_lease_is_one_lost_lock(agent: AgentProcess, redis_url: str) -> None:
    name = f"safety-{uuid.uuid4().hex[:8]}"
    cfg = {"mode": "hold", "kind": "redis", "urls": [redis_url], "name": name, "ttl": 0.5}
    holder = instrumented(cfg, agent.otlp_url)
    successor = None
    try:
        assert holder.stdout is not None
        first = json.loads(holder.stdout.readline())
        until(
            lambda: any(
                x["name"] == name for x in get_json(agent.http_url + "/api/v1/locks")["locks"]
            )
        )
        with faults.paused(holder.pid):
            # Past the lease: the successor gets in (the lock server enforces it).
            client = redis.Redis.from_url(redis_url)
            until(lambda: client.exists(name) == 0 and client.exists(f"{name}") == 0, timeout=10)
            successor = instrumented({**cfg, "ttl": 30}, agent.otlp_url)
            assert successor.stdout is not None
            second = json.loads(successor.stdout.readline())
            assert second["token"] > first["token"]
        out, _ = holder.communicate("go\n", timeout=30)
        assert json.loads(out.strip().splitlines()[-1]) == {
            "extend": "LockLost",
            "release": "LockNotOwned",
        }
        lost = until(
            lambda: [
                s
                for s in findings(agent.http_url, "stale-holders")
                if s["pid"] == holder.pid and s["reason"] == "lease_expired"
            ],
            timeout=10,
        )
        assert lost[0]["lock"] == name
        out, _ = successor.communicate("go\n", timeout=30)
        assert json.loads(out.strip().splitlines()[-1]) == {"extend": "ok", "release": "ok"}
        seen = everything(agent.http_url)
        print([(f["reason"], f["status"], f["resolution"]) for f in seen["stale-holders"]])
        assert seen["deadlocks"] == []
        assert seen["violations"] == []
        assert seen["order-inversions"] == []
        # Only the holder's lost lock (and, while it was stopped, its orphaned hold).
        assert {(s["pid"], s["lock"]) for s in seen["stale-holders"]} == {(holder.pid, name)}
        assert {s["reason"] for s in seen["stale-holders"]} <= {"lease_expired", "orphaned"}
        # What stays active is the one lost lock; the transient ones were superseded by it.
        active = [s for s in seen["stale-holders"] if s["status"] == "active"]
        assert [(s["reason"], s["detail"]) for s in active] == [
            ("lease_expired", "the holder lost the lock")
        ]
    finally:
        for process in (holder, successor):
            if process is not None and process.poll() is None:
                faults.resume(process.pid)
                process.kill()
                process.wait()


def test_contention_across_instrumented_processes_finds_nothing(
    agent: AgentProcess, redis_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    cfg = {
        "mode": "count",
        "kind": "redis",
        "urls": [redis_url],
        "name": f"count-{tag}",
        "data_url": redis_url,
        "counter": f"counter-{tag}",
        "tokens": f"tokens-{tag}",
        "iterations": 25,
    }
    workers = [instrumented(cfg, agent.otlp_url) for _ in range(4)]
    for worker in workers:
        worker.communicate(timeout=120)
        assert worker.returncode == 0
    data = redis.Redis.from_url(redis_url)
    assert int(data.get(f"counter-{tag}") or 0) == 100
    tokens = [int(t) for t in data.lrange(f"tokens-{tag}", 0, -1)]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 100
    until(lambda: len(get_json(agent.http_url + "/api/v1/processes")["processes"]) >= 4)
    assert everything(agent.http_url) == {
        "deadlocks": [],
        "stale-holders": [],
        "violations": [],
        "order-inversions": [],
    }


def test_clock_skew_between_hosts_invents_no_violation(agent: AgentProcess, redis_url: str) -> None:
    """Three instrumented processes whose clocks are 0, -2 and +2 s off take turns on one
    Redis lock (holds of 0.3 s, so every hold is reported): the skewed timestamps make the
    holds look overlapping or far apart, yet the lock server let one in at a time, and
    the agent reports no violation, no stale holder and no deadlock."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
    env.update(
        {
            "LOCKSCOPE_ENDPOINT": agent.otlp_url,
            "LOCKSCOPE_HEARTBEAT": "0.2",
            "LOCKSCOPE_REPORT_AFTER": "0.05",
            "LOCKSCOPE_METRICS_EXPORT": "none",
            "OTEL_SERVICE_NAME": "skewed",
        }
    )
    worker = str(Path(__file__).with_name("reliability_worker.py"))
    name = f"skew-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                worker,
                "skewed",
                json.dumps(
                    {"url": redis_url, "name": name, "skew": skew, "rounds": 4, "hold": 0.3}
                ),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for skew in (0, -2, 2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["event"] == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        # Watch the lock while they work: every process's holds reach the agent (so the
        # check below could fail).
        holders: set[int] = set()

        def all_done() -> bool:
            status, _, body = request(f"{agent.http_url}/api/v1/locks/{name}")
            if status == 200:
                holders.update(h["pid"] for h in json.loads(body)["holders"])
            return all(proc.poll() is not None for proc in procs)

        until(all_done, timeout=60, interval=0.05)
        assert [proc.returncode for proc in procs] == [0, 0, 0]
        assert holders == {proc.pid for proc in procs}
        assert everything(agent.http_url) == {
            "deadlocks": [],
            "stale-holders": [],
            "violations": [],
            "order-inversions": [],
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
