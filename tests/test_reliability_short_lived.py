"""Processes that live less than one heartbeat (cron jobs, CLIs, batch workers): the agent
knows each of them, with its exact acquisition count, and tells a clean exit from a death;
one that exits holding a lock that outlives it is a stale holder until the lease ends.

Real agent process, real Redis, real instrumented processes (``lockscope instrument``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from reliability_helpers import LOCKSCOPE, AgentProcess, findings, get_json, until

WORKER = str(Path(__file__).with_name("short_lived_worker.py"))
PROCESSES = 50
WAVE = 10
"""Parallel processes at a time (50 interpreters at once would crowd a 2-core machine)."""


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    process = AgentProcess().start()
    try:
        yield process
    finally:
        process.stop()


def _start(cfg: dict[str, Any], endpoint: str, service: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
    env = {
        **base,
        "LOCKSCOPE_ENDPOINT": endpoint,
        "LOCKSCOPE_METRICS_EXPORT": "agent",
        "OTEL_SERVICE_NAME": service,
    }
    return subprocess.Popen(
        [*LOCKSCOPE, "instrument", "--", sys.executable, WORKER, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(worker: subprocess.Popen[str]) -> str:
    _out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    return err


def _counts() -> dict[int, int]:
    """Each worker's number (in its service name) -> the acquisitions it makes."""
    return {i: 1 + i % 7 for i in range(PROCESSES)}


def _listed(agent: AgentProcess, tag: str) -> dict[int, dict[str, Any]]:
    out = {}
    for p in get_json(agent.http_url + "/api/v1/processes")["processes"]:
        if p["service"].startswith(f"short-{tag}-"):
            out[int(p["service"].rsplit("-", 1)[1])] = p
    return out


def _all_listed(agent: AgentProcess, tag: str, expected: dict[int, int]) -> bool:
    listed = _listed(agent, tag)
    return len(listed) == len(expected) and all(
        listed[i]["acquisitions"].get("acquired") == n for i, n in expected.items()
    )


def _check(agent: AgentProcess, tag: str, expected: dict[int, int], stderr: dict[int, str]) -> None:
    try:
        until(lambda: _all_listed(agent, tag, expected), timeout=30)
    except AssertionError:
        listed = _listed(agent, tag)
        missing = sorted(set(expected) - set(listed))
        wrong = {
            i: (p["exited"], p["acquisitions"], stderr.get(i))
            for i, p in listed.items()
            if i in expected and (p["acquisitions"].get("acquired") != expected[i])
        }
        raise AssertionError(
            f"{len(listed)}/{len(expected)} listed; missing {missing}; wrong counts {wrong}"
        ) from None
    # Each exit is told apart from a death where its last snapshot made it within the exit
    # flush's 1 s bound (on a loaded machine a few may not; they still count as known).
    listed = _listed(agent, tag)
    assert all(p["holds"] == 0 for p in listed.values())
    assert sum(p["exited"] for p in listed.values()) > 0
    assert findings(agent.http_url, "stale-holders") == []  # clean exits leave nothing


@pytest.mark.timeout(400)  # 50 interpreters start, one after another, on a shared machine
def test_short_lived_processes_one_after_another_are_each_listed(
    agent: AgentProcess, redis_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    expected = _counts()
    stderr = {}
    for i, n in expected.items():
        cfg = {"url": redis_url, "name": f"cron-{tag}", "count": n}
        stderr[i] = _finish(_start(cfg, agent.otlp_url, f"short-{tag}-{i}"))
    _check(agent, tag, expected, stderr)


@pytest.mark.timeout(400)
def test_short_lived_processes_in_parallel_are_each_listed(
    agent: AgentProcess, redis_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    expected = _counts()
    stderr = {}
    for first in range(0, PROCESSES, WAVE):
        wave = [
            _start(
                {"url": redis_url, "name": f"batch-{tag}", "count": expected[i]},
                agent.otlp_url,
                f"short-{tag}-{i}",
            )
            for i in range(first, first + WAVE)
        ]
        for i, worker in enumerate(wave, first):
            stderr[i] = _finish(worker)
    _check(agent, tag, expected, stderr)


def test_exit_holding_a_redis_lock_is_stale_until_the_key_expires(
    agent: AgentProcess, redis_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    left = f"left-{tag}"
    ttl = 3.0  # a 30 s lease would make the test wait 30 s for the same thing
    cfg = {"url": redis_url, "name": f"job-{tag}", "count": 2, "leave_ttl": ttl, "leave_name": left}
    _finish(_start(cfg, agent.otlp_url, f"short-{tag}-0"))
    client = redis.Redis.from_url(redis_url)
    assert client.exists(left)  # the process is gone, its lock is not

    def active() -> list[dict[str, Any]]:
        doc = get_json(agent.http_url + "/api/v1/stale-holders?status=active")
        return [s for s in doc["stale_holders"] if s["lock"] == left]

    [stale] = until(active, timeout=15)
    assert (stale["reason"], stale["service"], stale["status"]) == (
        "exited_holding",
        f"short-{tag}-0",
        "active",
    )
    [proc] = _listed(agent, tag).values()
    assert (proc["alive"], proc["exited"]) == (False, True)
    # The lease ends (plus the agent's lease_grace): the finding resolves with it.
    until(lambda: not active(), timeout=ttl + 15)
    assert not client.exists(left)  # resolved after the key expired, not before
    [resolved] = [
        s
        for s in get_json(agent.http_url + "/api/v1/stale-holders?status=resolved")["stale_holders"]
        if s["id"] == stale["id"]
    ]
    assert resolved["resolution"] == "lease_expired"
