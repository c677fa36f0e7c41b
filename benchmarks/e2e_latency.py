"""End-to-end detection latency with real processes and default settings.

Real redis-server and ZooKeeper, a real ``lockscope agent`` (or a shard tier: three shard
agents and a detector, ``--sharded``), and app processes under ``lockscope instrument``
with the default ``LOCKSCOPE_REPORT_AFTER`` (0.2 s) and ``LOCKSCOPE_HEARTBEAT`` (1 s).
Every round builds one deadlock whose participants start waiting at random moments
(gaps of 0 to ``--stagger`` seconds, so the earlier waiters' reports are old when the
cycle closes), and measures the time from the moment the last participant starts to
wait (the cycle closes; the worker's own clock, same host) to the agent's ``detected_at``
for the deadlock, and to the first API poll that lists it.  ``orphan`` kills a holder
(SIGKILL) and measures until ``/api/v1/stale-holders`` lists it as orphaned.

    .venv/bin/python benchmarks/e2e_latency.py                       # every scenario
    .venv/bin/python benchmarks/e2e_latency.py --rounds 5 --only ring2,orphan
    .venv/bin/python benchmarks/e2e_latency.py --sharded             # across 3 shards

Scenarios: ``ring2``, ``ring3``, ``ring8`` (Redis locks, one process per participant),
``zk3`` (ZooKeeper ``Lock``: FIFO), ``mixed4`` (Redis and ZooKeeper alternating),
``fifo_rw`` (a cycle that closes only through a ZooKeeper read-write queue edge: a reader
queued behind a waiting writer), ``orphan``.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import contextlib

from lockscope.testing import RedisServer, ZooKeeperServer
from reliability_helpers import AgentProcess

WORKER = str(Path(__file__).with_name("_e2e_worker.py"))
HOLD_AFTER_CLOSE = 4.0
"""Seconds the ring stays deadlocked after it closed (then the waits time out)."""


class App:
    """One ``lockscope instrument -- python _e2e_worker.py`` process."""

    def __init__(self, cfg: dict[str, Any], endpoint: str, service: str) -> None:
        env = {
            k: v
            for k, v in __import__("os").environ.items()
            if not k.startswith(("LOCKSCOPE_", "OTEL_"))
        }
        env.update(
            {
                "LOCKSCOPE_ENDPOINT": endpoint,
                "LOCKSCOPE_METRICS_EXPORT": "none",
                "OTEL_SERVICE_NAME": service,
            }
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lockscope",
                "instrument",
                "--",
                sys.executable,
                WORKER,
                json.dumps(cfg),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.get("event") == event:
                return line
        raise RuntimeError(f"app {self.proc.pid}: no {event!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def poll(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    return None


def shown(spec: dict[str, Any]) -> str:
    """The lock's name as the agent lists it (ZooKeeper locks by their node path)."""
    if spec["system"] == "redis":
        return str(spec["name"])
    return "/bench/" + str(spec["name"]).replace(":", "_")


def plan(scenario: str, r: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(first lock, second lock) per participant, in ring order."""

    def lk(system: str, i: int) -> dict[str, Any]:
        return {"system": system, "name": f"e2e:{scenario}:{r}:{i}"}

    sizes = {"ring2": 2, "ring3": 3, "ring8": 8, "zk3": 3, "mixed4": 4}
    n = sizes[scenario]
    systems = {
        "zk3": ["zk"] * n,
        "mixed4": ["redis", "zk", "redis", "zk"],
    }.get(scenario, ["redis"] * n)
    locks = [lk(systems[i], i) for i in range(n)]
    return [(locks[i], locks[(i + 1) % n]) for i in range(n)]


def ring_round(
    scenario: str, r: int, apps: list[App], api: str, stagger: float
) -> dict[str, float] | None:
    pairs = plan(scenario, r)
    for app, (first, _second) in zip(apps, pairs, strict=False):
        app.send(op="hold", lock=first)
    for app in apps[: len(pairs)]:
        app.expect("holding")
    delays = [0.0]
    for _ in pairs[1:]:
        delays.append(delays[-1] + random.uniform(0, stagger))
    random.shuffle(delays)
    close = max(delays)
    for app, (_first, second), delay in zip(apps, pairs, delays, strict=False):
        app.send(op="wait", lock=second, delay=delay, timeout=close - delay + HOLD_AFTER_CLOSE)
    waits = [app.expect("waiting")["t"] for app in apps[: len(pairs)]]
    closed = max(waits)
    names = {shown(p[0]) for p in pairs}

    def listed() -> Any:
        for d in get(api + "/api/v1/deadlocks")["deadlocks"]:
            if d["status"] == "active" and set(d["locks"]) == names:
                return d
        return None

    found = poll(listed, HOLD_AFTER_CLOSE - 0.5)
    seen = time.time()
    for app in apps[: len(pairs)]:
        app.expect("done", 30)
    if found is None:
        return None
    return {"detected": parse_time(found["detected_at"]) - closed, "listed": seen - closed}


def fifo_rw_round(r: int, apps: list[App], api: str, stagger: float) -> dict[str, float] | None:
    a, b, c = apps[:3]
    x = {"system": "zk_read", "name": f"e2e:rw:{r}:x"}
    xw = {"system": "zk_write", "name": x["name"]}
    m = {"system": "redis", "name": f"e2e:rw:{r}:m"}
    a.send(op="hold", lock=x)
    c.send(op="hold", lock=m)
    a.expect("holding")
    c.expect("holding")
    b.send(op="wait", lock=xw, delay=0, timeout=30)  # the writer waits for reader A
    b.expect("waiting")
    time.sleep(0.3)  # B's node is queued: C's read request queues behind it
    gap = random.uniform(0, stagger)
    c.send(op="wait", lock=x, delay=0, timeout=gap + HOLD_AFTER_CLOSE)
    c.expect("waiting")
    a.send(op="wait", lock=m, delay=gap, timeout=HOLD_AFTER_CLOSE)
    closed = a.expect("waiting")["t"]
    names = {shown(x), shown(m)}

    def listed() -> Any:
        for d in get(api + "/api/v1/deadlocks")["deadlocks"]:
            if d["status"] == "active" and set(d["locks"]) >= names:
                return d
        return None

    found = poll(listed, HOLD_AFTER_CLOSE - 0.5)
    seen = time.time()
    for app in (a, c, b):
        app.expect("done", 40)
    if found is None:
        return None
    return {"detected": parse_time(found["detected_at"]) - closed, "listed": seen - closed}


def orphan_round(r: int, app: App, api: str) -> dict[str, float] | None:
    name = f"e2e:orphan:{r}"
    app.send(op="hold", lock={"system": "redis", "name": name})
    app.expect("holding")
    time.sleep(1.5 + random.uniform(0, 1.0))  # reported, at a random heartbeat phase
    killed = time.time()
    app.kill()

    def listed() -> Any:
        for s in get(api + "/api/v1/stale-holders")["stale_holders"]:
            if s["lock"] == name and s["reason"] == "orphaned" and s["status"] == "active":
                return s
        return None

    found = poll(listed, 10)
    seen = time.time()
    if found is None:
        return None
    return {"detected": parse_time(found["detected_at"]) - killed, "listed": seen - killed}


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p50 = statistics.median(values)
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return f"p50 {p50:.3f} s  p99 {p99:.3f} s  max {values[-1]:.3f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--stagger", type=float, default=1.0)
    parser.add_argument("--only", default="ring2,ring3,ring8,zk3,mixed4,fifo_rw,orphan")
    parser.add_argument("--sharded", action="store_true", help="3 shard agents + a detector")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    results: dict[str, list[dict[str, float]]] = {}
    missed: dict[str, int] = {}
    with RedisServer() as redis_server, ZooKeeperServer() as zk_server:
        agents: list[AgentProcess] = []
        if args.sharded:
            detector = AgentProcess("--role", "detector").start()
            agents.append(detector)
            for _ in range(3):
                agents.append(
                    AgentProcess("--role", "shard", "--forward-to", detector.otlp_url).start()
                )
            endpoints = [a.otlp_url for a in agents[1:]]
            api = detector.http_url
        else:
            agents.append(AgentProcess().start())
            endpoints = [agents[0].otlp_url]
            api = agents[0].http_url
        cfg = {"redis": redis_server.url, "zk": zk_server.hosts}
        try:
            for scenario in args.only.split(","):
                n = {"ring2": 2, "ring3": 3, "ring8": 8, "zk3": 3, "mixed4": 4}.get(scenario, 3)
                if scenario == "orphan":
                    n = 0
                apps = [App(cfg, endpoints[i % len(endpoints)], f"bench-{i}") for i in range(n)]
                out: list[dict[str, float]] = []
                missed[scenario] = 0
                for r in range(args.rounds):
                    if scenario == "orphan":
                        app = App(cfg, endpoints[r % len(endpoints)], "bench-orphan")
                        # The shard that owns the process reports its orphans.
                        owner = agents[1 + r % 3].http_url if args.sharded else api
                        res = orphan_round(r, app, owner)
                    elif scenario == "fifo_rw":
                        res = fifo_rw_round(r, apps, api, args.stagger)
                    else:
                        res = ring_round(scenario, r, apps, api, args.stagger)
                    if res is None:
                        missed[scenario] += 1
                    else:
                        out.append(res)
                results[scenario] = out
                for app in apps:
                    app.kill()
                print(
                    f"{scenario:8} n={len(out):3} missed={missed[scenario]}  "
                    f"detected: {summary([x['detected'] for x in out])}  |  "
                    f"listed: {summary([x['listed'] for x in out])}",
                    flush=True,
                )
        finally:
            for agent in agents:
                agent.stop()
    if args.json:
        args.json.write_text(json.dumps({"results": results, "missed": missed}, indent=1))
    return 1 if any(missed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
