"""The second round's lock targets end to end: app processes under the shim
(tests/reach_worker.py), an in-process agent, real Redis and ZooKeeper, real files.

Per target: a ring of two processes is found as a deadlock with both participants; heavy
contention in one lock order is not; a crashed holder is an orphaned stale holder where
the lock outlives its process (a SoftFileLock file, python-redis-lock without expiry)
and not where the kernel releases it (flock/lockf locks).  Plus one key taken through
three Redis libraries, the asyncio executor ring (a task holding a ``redis.asyncio``
lock waits for a kazoo lock through ``run_in_executor``/``to_thread``, on asyncio's loop
and on uvloop's), and rings and consistent-order contention of asyncio tasks with
filelock's ``AsyncFileLock`` and pottery's ``AIORedlock``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockscope.testing.agent import InProcessAgent
from reach_helpers import Api, App, started, unique, until

WAIT = 25.0
"""Timeout of the waits in a ring: the ring is found long before (the apps are killed)."""


class Fleet(Api):
    def __init__(self, agent: InProcessAgent) -> None:
        super().__init__(agent.http_url)
        self.agent = agent
        self.apps: list[App] = []

    def take(self, n: int) -> list[App]:
        self.apps = [a for a in self.apps if a.proc.poll() is None]
        missing = n - len(self.apps)
        if missing > 0:
            self.apps += started([App(self.agent.otlp_url) for _ in range(missing)])
        return self.apps[:n]

    def close(self) -> None:
        for app in self.apps:
            app.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with InProcessAgent() as agent:
        pool = Fleet(agent)
        try:
            pool.take(2)
            yield pool
        finally:
            pool.close()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path


def spec(kind: str, stem: str, files: Path, redis_url: str) -> tuple[dict[str, Any], str]:
    """(the worker's lock fields, the lock's name in the agent) for a fresh lock."""
    name = unique(stem)
    if kind == "portalocker_sem":
        return {"kind": kind, "name": name, "max": 1, "dir": str(files)}, f"{files}/{name}.*.lock"
    if kind in ("redis_lock", "pottery", "redis"):
        agent_name = {"redis_lock": "lock:", "pottery": "redlock:"}.get(kind, "") + name
        return {"kind": kind, "name": name, "url": redis_url}, agent_name
    path = str(files / f"{name}.lock")
    return {"kind": kind, "name": path}, os.path.abspath(path)


RING_KINDS = [
    "filelock",
    "softfilelock",
    "portalocker",
    "portalocker_rlock",
    "portalocker_sem",
    "fasteners",
    "fasteners_write",
    "redis_lock",
    "pottery",
]


def ring(fleet: Fleet, locks: list[tuple[dict[str, Any], str]]) -> tuple[list[App], Any]:
    """Apps A and B take locks 0 and 1, then each waits for the other's: the deadlock."""
    a, b = fleet.take(2)
    (x, x_name), (y, y_name) = locks[:2]
    a.acquire("h", "x", x)
    b.acquire("h", "y", y)
    a.start_acquire("h", "y2", locks[2][0] if len(locks) > 2 else y, timeout=WAIT)
    b.start_acquire("h", "x2", locks[3][0] if len(locks) > 3 else x, timeout=WAIT)
    found = until(lambda: fleet.deadlock_on({x_name, y_name}), timeout=15)
    return [a, b], found


@pytest.mark.parametrize("kind", RING_KINDS)
def test_a_ring_of_two_processes_is_a_deadlock(
    fleet: Fleet, kind: str, files: Path, redis_url: str
) -> None:
    x, y = spec(kind, "ring", files, redis_url), spec(kind, "ring", files, redis_url)
    (a, b), found = ring(fleet, [x, y])
    try:
        got = {p["pid"]: (p["waits_for"], set(p["holds"])) for p in found["participants"]}
        assert got == {a.pid: (y[1], {x[1]}), b.pid: (x[1], {y[1]})}
        assert found["victim"] in {p["actor"] for p in found["participants"]}
    finally:
        a.kill()
        b.kill()


def test_one_key_is_one_lock_across_redis_py_python_redis_lock_and_pottery(
    fleet: Fleet, files: Path, redis_url: str
) -> None:
    """A holds ``lock:<n>`` through redis-py, B holds ``redlock:<m>`` through pottery; A
    waits for it through redis-py, B for ``lock:<n>`` through python-redis-lock."""
    n, m = unique("shared"), unique("shared")
    held_a = ({"kind": "redis", "name": f"lock:{n}", "url": redis_url}, f"lock:{n}")
    held_b = ({"kind": "pottery", "name": m, "url": redis_url}, f"redlock:{m}")
    wait_a = ({"kind": "redis", "name": f"redlock:{m}", "url": redis_url}, "")
    wait_b = ({"kind": "redis_lock", "name": n, "url": redis_url}, "")
    (a, b), found = ring(fleet, [held_a, held_b, wait_a, wait_b])
    try:
        got = {p["pid"]: (p["waits_for"], set(p["holds"])) for p in found["participants"]}
        assert got == {a.pid: (held_b[1], {held_a[1]}), b.pid: (held_a[1], {held_b[1]})}
    finally:
        a.kill()
        b.kill()


@pytest.mark.parametrize(
    ("kind", "threads"),
    [("filelock", 3), ("portalocker", 3), ("fasteners", 1), ("redis_lock", 3), ("pottery", 2)],
)
def test_heavy_contention_in_one_order_is_no_deadlock(
    fleet: Fleet, kind: str, threads: int, files: Path, redis_url: str
) -> None:
    """Two processes, each with ``threads`` threads (fasteners' lockf does not exclude the
    threads of one process: one each), take x then y many times; some holds last long
    enough for the waits to be reported."""
    x, y = spec(kind, "order", files, redis_url), spec(kind, "order", files, redis_url)
    apps = fleet.take(2)
    fields = {k: v for k, v in x[0].items() if k != "name"}
    cids = [
        app.send(
            "contend",
            actor="c",
            names=[x[0]["name"], y[0]["name"]],
            threads=threads,
            iterations=36 // threads,
            long_every=2 if threads == 1 else 4,
            long_hold=0.3,
            **fields,
        )
        for app in apps
    ]
    # The contention is real: the agent sees a reported wait while the apps run.
    until(lambda: any((fleet.lock(n) or {}).get("waiters") for n in (x[1], y[1])), timeout=60)
    done = [app.reply(cid, "done", timeout=120) for app, cid in zip(apps, cids, strict=True)]
    assert all(d["timeouts"] == 0 for d in done)
    found = [d for d in fleet.findings("deadlocks") if {x[1], y[1]} & set(d["locks"])]
    assert found == []


@pytest.mark.parametrize(
    ("kind", "outlives"),
    [
        ("softfilelock", True),
        ("redis_lock", True),
        ("filelock", False),
        ("portalocker", False),
        ("fasteners", False),
    ],
)
def test_a_crashed_holder_is_orphaned_only_where_the_lock_outlives_it(
    fleet: Fleet, kind: str, outlives: bool, files: Path, redis_url: str
) -> None:
    fields, name = spec(kind, "crash", files, redis_url)
    (app,) = fleet.take(1)
    app.acquire("h", "x", fields)
    until(lambda: fleet.holding(name, app.pid), timeout=10)
    app.kill()
    until(lambda: fleet.dead(app.pid), timeout=15)
    stale = [s for s in fleet.findings("stale-holders") if s["lock"] == name]
    if outlives:
        stale = until(lambda: [s for s in fleet.findings("stale-holders") if s["lock"] == name])
        assert [(s["reason"], s["pid"]) for s in stale] == [("orphaned", app.pid)]
    else:
        assert stale == []
        assert not fleet.holding(name, app.pid)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("via", ["run_in_executor", "to_thread"])
def test_a_task_waiting_through_an_executor_closes_the_ring(
    fleet: Fleet, via: str, loop: str, redis_url: str, zookeeper_server: Any
) -> None:
    """A's task holds a redis.asyncio lock and waits for a kazoo lock in a worker thread;
    B holds the kazoo lock and waits for the Redis lock: one deadlock, A's side an
    asyncio task (not the executor's thread), on asyncio's own loop and on uvloop's."""
    a, b = fleet.take(2)
    key, path = unique("exring"), "/" + unique("exring")
    b.acquire("h", "z", {"kind": "kazoo", "name": path, "hosts": zookeeper_server.hosts})
    cid = a.send("executor_ring", actor="loop", url=redis_url, hosts=zookeeper_server.hosts,
                 redis_key=key, zk_path=path, via=via, loop=loop, timeout=WAIT)  # fmt: skip
    a.reply(cid, "holding")
    b.start_acquire("h", "r", {"kind": "redis", "name": key, "url": redis_url}, timeout=WAIT)
    try:
        found = until(lambda: fleet.deadlock_on({key, path}), timeout=15)
        got = {p["pid"]: (p["waits_for"], set(p["holds"])) for p in found["participants"]}
        assert got == {a.pid: (path, {key}), b.pid: (key, {path})}
        mine = next(p for p in found["participants"] if p["pid"] == a.pid)
        assert mine["actor"].endswith("/ring-task")  # the task, not the executor's thread
    finally:
        a.kill()
        b.kill()


def _async_spec(kind: str, stem: str, files: Path, redis_url: str) -> tuple[dict[str, Any], str]:
    """(the worker's fields, the lock's name in the agent) for a fresh asyncio lock."""
    if kind == "aioredlock":
        name = unique(stem)
        return {"kind": kind, "name": name, "url": redis_url}, f"redlock:{name}"
    path = str(files / f"{unique(stem)}.lock")
    return {"kind": kind, "name": path}, os.path.abspath(path)


@pytest.mark.parametrize("kind", ["async_filelock", "aioredlock"])
def test_a_ring_of_two_processes_tasks_is_a_deadlock(
    fleet: Fleet, kind: str, files: Path, redis_url: str
) -> None:
    """filelock's ``AsyncFileLock`` and pottery's ``AIORedlock``: a task in A holds x and
    waits for y, a task in B holds y and waits for x; both tasks are the participants."""
    x, y = (
        _async_spec(kind, "aring", files, redis_url),
        _async_spec(kind, "aring", files, redis_url),
    )
    fields = {k: v for k, v in x[0].items() if k != "name"}
    a, b = fleet.take(2)
    try:
        for app, first, then in ((a, x, y), (b, y, x)):
            cid = app.send("async_ring", actor="loop", key="r", first=first[0]["name"],
                           then=then[0]["name"], timeout=WAIT, **fields)  # fmt: skip
            app.reply(cid, "holding")
        for app in (a, b):  # both hold their first lock: now each waits for the other's
            app.reply(app.send("go", actor="go", key="r"), "went")
        found = until(lambda: fleet.deadlock_on({x[1], y[1]}), timeout=15)
        got = {p["pid"]: (p["waits_for"], set(p["holds"])) for p in found["participants"]}
        assert got == {a.pid: (y[1], {x[1]}), b.pid: (x[1], {y[1]})}
        assert all(p["actor"].endswith("/ring-task") for p in found["participants"])
    finally:
        a.kill()
        b.kill()


@pytest.mark.parametrize("kind", ["async_filelock", "aioredlock"])
def test_heavy_async_contention_in_one_order_is_no_deadlock(
    fleet: Fleet, kind: str, files: Path, redis_url: str
) -> None:
    """Two processes, three tasks each, take x then y many times: waits, no deadlock."""
    x, y = (
        _async_spec(kind, "aorder", files, redis_url),
        _async_spec(kind, "aorder", files, redis_url),
    )
    fields = {k: v for k, v in x[0].items() if k != "name"}
    apps = fleet.take(2)
    cids = [
        app.send(
            "async_contend",
            actor="c",
            names=[x[0]["name"], y[0]["name"]],
            tasks=3,
            iterations=12,
            long_every=4,
            long_hold=0.3,
            **fields,
        )
        for app in apps
    ]
    until(lambda: any((fleet.lock(n) or {}).get("waiters") for n in (x[1], y[1])), timeout=60)
    done = [app.reply(cid, "done", timeout=120) for app, cid in zip(apps, cids, strict=True)]
    assert all(d["timeouts"] == 0 and d["ops"] == 36 for d in done)
    found = [d for d in fleet.findings("deadlocks") if {x[1], y[1]} & set(d["locks"])]
    assert found == []
