"""End to end: real app processes under the shim, real Redis, ZooKeeper and PostgreSQL,
a real agent; every assertion goes through the agent's JSON API (``/api/v1/...``).

Each app is ``tests/e2e_worker.py`` (it instruments itself at start, as an app would; the
robustness tests start it with ``lockscope instrument --``), driven line by line so that
a ring closes deterministically: every participant first takes its own lock, then the
participants ask for the next lock one after the other, each only once the agent has seen
the previous one wait.  The wall time just before the closing acquire is the moment the
ring closed; the detection time printed by each test runs from there to the first API
answer listing the deadlock (the issue asks for 1 s; this shared machine is loaded, so the
assertion is a generous ``DETECT_BOUND``).

Covered: rings of 2, 3 and 8 processes (redis-py ``Lock`` and lockscope ``RedisLock``); a
ring across Redis, ZooKeeper (kazoo and lockscope) and PostgreSQL; self-deadlocks; a
read-write upgrade deadlock; a FIFO-queue deadlock that exists only through queue order;
resolution by timeout, by cancellation and by SIGKILL; heavy consistent-order contention
with no finding; orphaned and lease-expired stale holders, a violation after a SIGSTOP past
the lease, an order inversion from two never-overlapping code paths; an agent restarted
mid-deadlock; lossy, reordered delivery.  ``pytest tests/test_e2e_detection.py -s`` prints
the measured times; ``E2E_HEARTBEAT=1.0`` runs the apps with the shim's default heartbeat
(a deadlock is confirmed once every participant's wait is known to have lasted past the
moment the ring closed, so detection takes report_after plus up to one heartbeat).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from lockscope.testing import faults
from lockscope.testing.agent import InProcessAgent
from reliability_helpers import AgentProcess, FaultProxy, get_json, letters, until

HB = float(os.environ.get("E2E_HEARTBEAT", "0.5"))
"""Heartbeat interval of the apps (seconds; the shim's default is 1.0); report_after stays
at its default, 0.2 s."""
DETECT_BOUND = 5.0
"""Generous bound on detection time (the target is 1 s; the CI machine is shared)."""
WAIT_TIMEOUT = 20.0
"""Acquire timeout of the participants that are not meant to give up."""
WORKER = str(Path(__file__).with_name("e2e_worker.py"))
MEASURED: dict[str, float] = {}
_names = itertools.count()


def unique(prefix: str) -> str:
    """A lock-name stem no other test uses, without digits (templates stay distinct)."""
    return f"{prefix}{letters(next(_names))}"


# -- the app processes ------------------------------------------------------------------------


class App:
    """One ``e2e_worker.py`` process under the shim, reporting to ``endpoint``."""

    def __init__(self, endpoint: str, *, service: str = "e2e", via_cli: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
        env.update(
            {
                "LOCKSCOPE_ENDPOINT": endpoint,
                "LOCKSCOPE_HEARTBEAT": str(HB),
                "LOCKSCOPE_METRICS_EXPORT": "none",
                "OTEL_SERVICE_NAME": service,
                "E2E_SELF_INSTRUMENT": "0" if via_cli else "1",
            }
        )
        cli = [sys.executable, "-m", "lockscope", "instrument", "--threading", "--"]
        command = [*(cli if via_cli else []), sys.executable, WORKER]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.replies.put(json.loads(line))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, op: str, **fields: Any) -> int:
        cid = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "id": cid, **fields}) + "\n")
        self.proc.stdin.flush()
        return cid

    def reply(self, cid: int | None, *events: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first reply to command ``cid`` whose event is one of ``events``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if line["id"] == cid and line["event"] in events:
                    self.seen.remove(line)
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"app {self.pid}: no {events} for {cid} within {timeout} s")
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.replies.get(timeout=min(left, 0.2)))

    def acquire(self, actor: str, key: str, lock: dict[str, Any], timeout: float = 30) -> None:
        """Take ``lock`` on thread ``actor`` (it must be free)."""
        cid = self.send("acquire", actor=actor, key=key, timeout=timeout, **lock)
        self.reply(cid, "acquired", timeout=timeout + 30)

    def start_acquire(
        self, actor: str, key: str, lock: dict[str, Any], timeout: float = WAIT_TIMEOUT
    ) -> tuple[int, float]:
        """Ask for ``lock`` on thread ``actor``; returns the command id and the wall time
        just before the acquire call."""
        cid = self.send("acquire", actor=actor, key=key, timeout=timeout, **lock)
        return cid, float(self.reply(cid, "waiting")["t"])

    def release(self, actor: str, key: str) -> str:
        cid = self.send("release", actor=actor, key=key)
        return str(self.reply(cid, "released", "lost", "error")["event"])

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.alive():
            with contextlib.suppress(OSError):
                self.send("exit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def started(apps: list[App]) -> list[App]:
    for app in apps:
        app.reply(None, "ready", timeout=60)
    return apps


class Api:
    """The agent's JSON API."""

    def __init__(self, http_url: str) -> None:
        self.http_url = http_url

    def get(self, path: str) -> Any:
        return get_json(self.http_url + path)

    def lock(self, name: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                self.http_url + "/api/v1/locks/" + urllib.parse.quote(name, safe=""), timeout=10
            ) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def waiting(self, name: str, pid: int) -> bool:
        lock = self.lock(name)
        return lock is not None and any(w["pid"] == pid for w in lock["waiters"])

    def holding(self, name: str, pid: int) -> bool:
        lock = self.lock(name)
        return lock is not None and any(h["pid"] == pid for h in lock["holders"])

    def findings(self, kind: str, status: str = "all") -> list[dict[str, Any]]:
        return list(self.get(f"/api/v1/{kind}?status={status}")[kind.replace("-", "_")])


class Fleet(Api):
    """A module's agent (in process) and a pool of apps reporting to it; killed apps are
    replaced on demand."""

    def __init__(self, agent: InProcessAgent) -> None:
        super().__init__(agent.http_url)
        self.agent = agent
        self.apps: list[App] = []

    def take(self, n: int) -> list[App]:
        self.apps = [a for a in self.apps if a.alive()]
        missing = n - len(self.apps)
        if missing > 0:
            self.apps += started([App(self.agent.otlp_url) for _ in range(missing)])
        return self.apps[:n]

    def close(self) -> None:
        for app in self.apps:
            app.close()


@pytest.fixture(scope="module", autouse=True)
def _print_measured() -> Iterator[None]:
    yield
    if MEASURED:
        print("\nmeasured (s):", json.dumps(MEASURED, indent=1))


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with InProcessAgent() as agent:
        pool = Fleet(agent)
        try:
            pool.take(8)
            yield pool
        finally:
            pool.close()


# -- deadlock helpers -------------------------------------------------------------------------


def redis_lock(url: str, name: str, kind: str = "redis") -> dict[str, Any]:
    return {"kind": kind, "name": name, "url": url, "ttl": 60}


def zk_lock(hosts: str, path: str, kind: str = "kazoo") -> dict[str, Any]:
    return {"kind": kind, "name": path, "hosts": hosts}


def deadlock_on(api: Api, locks: set[str], status: str = "active") -> dict[str, Any] | None:
    """The deadlock (active by default) over exactly ``locks``; an empty set matches the
    in-process locks, whose names are their creation sites (``file:line#n``)."""
    for d in api.findings("deadlocks", status):
        if set(d["locks"]) == locks or (not locks and d["systems"] == ["threading"]):
            return d
    return None


def seconds_since(rfc3339: str, t: float) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() - t


def detected(api: Api, locks: set[str], closed_at: float, label: str) -> dict[str, Any]:
    """Poll for the active deadlock on ``locks``; record and bound the detection time."""
    found = until(lambda: deadlock_on(api, locks), timeout=DETECT_BOUND + 15, interval=0.01)
    seen = time.time() - closed_at
    agent_side = seconds_since(found["detected_at"], closed_at)
    MEASURED[label] = round(seen, 3)
    MEASURED[label + " (agent detected_at)"] = round(agent_side, 3)
    print(f"{label}: in the API {seen:.3f} s after the ring closed (detected_at +{agent_side:.3f})")
    assert seen <= DETECT_BOUND, f"{label}: detection took {seen:.2f} s"
    return found


def check_participants(
    deadlock: dict[str, Any], expected: dict[int, tuple[str, set[str]]], victim_pid: int
) -> None:
    """``expected``: pid -> (lock it waits for, locks it holds)."""
    got = {p["pid"]: (p["waits_for"], set(p["holds"])) for p in deadlock["participants"]}
    assert got == expected
    by_actor = {p["actor"]: p for p in deadlock["participants"]}
    assert by_actor[deadlock["victim"]]["pid"] == victim_pid
    youngest = max(deadlock["participants"], key=lambda p: p["waiting_since"])
    assert youngest["pid"] == victim_pid  # the victim is the youngest waiter
    assert deadlock["status"] == "active"
    assert deadlock["resolved_at"] is None


def resolved(api: Api, deadlock: dict[str, Any]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found = api.findings("deadlocks", "resolved")
        return next((d for d in found if d["id"] == deadlock["id"]), None)

    out = until(done, timeout=20)
    assert out["status"] == "resolved"
    assert out["resolved_at"] >= out["detected_at"]
    return out


def close_ring(
    api: Api, apps: list[App], locks: list[dict[str, Any]], actor: str, last_timeout: float
) -> tuple[float, int]:
    """App i holds ``locks[i]``, then waits for ``locks[i+1]`` (the last for ``locks[0]``,
    with ``last_timeout``).  Returns when the ring closed and the closing command's id."""
    for i, (app, lock) in enumerate(zip(apps, locks, strict=True)):
        app.acquire(actor, f"{actor}-hold-{i}", lock)
    closed_at, cid = 0.0, 0
    for i, app in enumerate(apps):
        last = i == len(apps) - 1
        wanted = locks[(i + 1) % len(apps)]
        cid, closed_at = app.start_acquire(
            actor, f"{actor}-want-{i}", wanted, last_timeout if last else WAIT_TIMEOUT
        )
        if not last:  # the next one waits only once the agent has seen this one wait
            until(functools.partial(api.waiting, wanted["name"], app.pid), timeout=15)
    return closed_at, cid


def ring_expectation(apps: list[App], names: list[str]) -> dict[int, tuple[str, set[str]]]:
    return {a.pid: (names[(i + 1) % len(apps)], {names[i]}) for i, a in enumerate(apps)}


# -- rings ------------------------------------------------------------------------------------


def test_ring_of_two_redis_py_locks_found_and_resolved_when_the_victim_times_out(
    fleet: Fleet, redis_url: str
) -> None:
    apps = fleet.take(2)
    stem = unique("two")
    names = [f"{stem}:a", f"{stem}:b"]
    closed_at, cid = close_ring(fleet, apps, [redis_lock(redis_url, n) for n in names], stem, 6)
    found = detected(fleet, set(names), closed_at, "ring of 2 (redis-py)")
    check_participants(found, ring_expectation(apps, names), victim_pid=apps[1].pid)
    assert found["systems"] == ["redis"]
    gave_up = apps[1].reply(cid, "timeout", timeout=30)["t"]  # the victim gives up
    done = resolved(fleet, found)
    assert done["resolution"] == "wait_ended"
    MEASURED["ring of 2: resolved after the victim's timeout"] = round(
        seconds_since(done["resolved_at"], gave_up), 3
    )


def test_ring_of_three_redislocks_resolved_when_a_participant_is_killed(
    fleet: Fleet, redis_url: str
) -> None:
    apps = fleet.take(3)
    stem = unique("three")
    names = [f"{stem}:{c}" for c in "abc"]
    locks = [redis_lock(redis_url, n, "rlock") for n in names]
    closed_at, _ = close_ring(fleet, apps, locks, stem, WAIT_TIMEOUT)
    found = detected(fleet, set(names), closed_at, "ring of 3 (lockscope RedisLock)")
    check_participants(found, ring_expectation(apps, names), victim_pid=apps[2].pid)
    killed = time.time()
    apps[0].kill()
    done = resolved(fleet, found)
    assert done["resolution"] in ("process_dead", "wait_ended")
    MEASURED["ring of 3: resolved after SIGKILL"] = round(
        seconds_since(done["resolved_at"], killed), 3
    )
    # The killed participant's lock is now an orphan: its process stopped heartbeating.
    orphan = until(
        lambda: [
            s
            for s in fleet.findings("stale-holders")
            if s["lock"] == names[0] and s["reason"] == "orphaned"
        ]
    )
    assert orphan[0]["pid"] == apps[0].pid


def test_ring_of_eight_processes(fleet: Fleet, redis_url: str) -> None:
    apps = fleet.take(8)
    stem = unique("eight")
    names = [f"{stem}:{letters(i)}" for i in range(8)]
    # redis-py locks and lockscope RedisLocks alternate around the ring
    locks = [redis_lock(redis_url, n, "redis" if i % 2 else "rlock") for i, n in enumerate(names)]
    closed_at, _ = close_ring(fleet, apps, locks, stem, WAIT_TIMEOUT)
    found = detected(fleet, set(names), closed_at, "ring of 8 (redis-py + RedisLock)")
    check_participants(found, ring_expectation(apps, names), victim_pid=apps[7].pid)
    victim = apps[7]
    victim.kill()  # kill the suggested victim, as an operator would
    assert resolved(fleet, found)["resolution"] in ("process_dead", "wait_ended")


def test_ring_across_redis_zookeeper_and_postgres(
    fleet: Fleet, redis_url: str, zookeeper_server: Any, postgres_server: Any
) -> None:
    apps = fleet.take(4)
    stem = unique("cross")
    hosts = zookeeper_server.hosts
    locks = [
        zk_lock(hosts, f"/e2e/{stem}/kazoo"),  # kazoo Lock
        redis_lock(redis_url, f"{stem}:redis"),  # redis-py Lock
        zk_lock(hosts, f"/e2e/{stem}/zk", "zk"),  # lockscope ZooKeeperLock
        {"kind": "db", "name": f"{stem}:db", "url": postgres_server.url, "ttl": 60},
    ]
    names = [lock["name"] for lock in locks]
    # The closing acquire is the kazoo lock's: kazoo can cancel it (the victim gives up).
    closed_at, cid = close_ring(fleet, apps, locks, stem, WAIT_TIMEOUT)
    found = detected(fleet, set(names), closed_at, "ring of 4 across redis/zookeeper/database")
    check_participants(found, ring_expectation(apps, names), victim_pid=apps[3].pid)
    assert found["systems"] == ["database", "redis", "zookeeper"]
    apps[3].send("cancel", key=f"{stem}-want-3")
    apps[3].reply(cid, "cancelled")
    assert resolved(fleet, found)["resolution"] == "wait_ended"


# -- self-deadlock, read-write upgrade, FIFO queue ----------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "thread"])
def test_self_deadlock(fleet: Fleet, redis_url: str, kind: str) -> None:
    """One thread asks again for a non-reentrant lock it holds (a second redis-py ``Lock``
    object for the same key, or the same ``threading.Lock``); it gives up after 3 s."""
    (app,) = fleet.take(1)
    name = unique("self") + ":x"
    lock = redis_lock(redis_url, name) if kind == "redis" else {"kind": "thread", "name": name}
    app.acquire("me", "first", lock)
    cid, closed_at = app.start_acquire("me", "second", lock, timeout=3)
    label = f"self-deadlock ({'redis-py' if kind == 'redis' else 'threading.Lock'})"
    found = detected(fleet, {name} if kind == "redis" else set(), closed_at, label)
    if kind == "thread":  # named after where the app created it
        name = found["locks"][0]
        assert name.startswith("tests/e2e_worker.py:")
    check_participants(found, {app.pid: (name, {name})}, victim_pid=app.pid)
    assert found["participants"][0]["waits_for_actors"] == [found["participants"][0]["actor"]]
    app.reply(cid, "timeout", timeout=30)
    assert resolved(fleet, found)["resolution"] == "wait_ended"
    app.release("me", "first")


def test_read_write_upgrade_deadlock(fleet: Fleet, zookeeper_server: Any) -> None:
    """Two kazoo ``ReadLock`` holders each ask for the ``WriteLock`` of the same path."""
    p1, p2 = fleet.take(2)
    path = f"/e2e/{unique('upgrade')}"
    read, write = (zk_lock(zookeeper_server.hosts, path, k) for k in ("kazoo_read", "kazoo_write"))
    p1.acquire("rw", "read", read)
    p2.acquire("rw", "read", read)
    p1.start_acquire("rw", "write", write)
    # A reader asking for the write lock it blocks itself: already a self-deadlock.
    alone = until(deadlock_of(fleet, path, {p1.pid}), timeout=15)
    cid, closed_at = p2.start_acquire("rw", "write", write)
    found = until(deadlock_of(fleet, path, {p1.pid, p2.pid}), timeout=25, interval=0.01)
    took = time.time() - closed_at
    MEASURED["read-write upgrade of 2"] = round(took, 3)
    assert took <= DETECT_BOUND
    check_participants(found, {p.pid: (path, {path}) for p in (p1, p2)}, victim_pid=p2.pid)
    assert {p["mode"] for p in found["participants"]} == {"write"}
    assert resolved(fleet, alone)["resolution"] == "superseded"
    # The victim gives up; p1 still waits for its own read lock: that deadlock remains.
    p2.send("cancel", key="write")
    p2.reply(cid, "cancelled")
    assert resolved(fleet, found)
    left = until(deadlock_of(fleet, path, {p1.pid}), timeout=15)
    assert left["id"] == alone["id"]  # the same self-deadlock, the same stable id
    p1.kill()


def deadlock_of(api: Api, path: str, pids: set[int]) -> Callable[[], dict[str, Any] | None]:
    """A poll for the active deadlock on ``path`` whose participants are ``pids``."""

    def check() -> dict[str, Any] | None:
        d = deadlock_on(api, {path})
        return d if d and {p["pid"] for p in d["participants"]} == pids else None

    return check


def test_fifo_queue_deadlock_through_a_soft_edge(fleet: Fleet, zookeeper_server: Any) -> None:
    """p1 reads L; p2 queues for L's write lock; p3 holds M and queues for a read of L
    behind p2 (compatible with p1's read: only the queue order holds it back); p1 asks for
    M.  The cycle p1 -> p3 -> p2 -> p1 exists only through the queue edge p3 -> p2."""
    p1, p2, p3 = fleet.take(3)
    stem = unique("fifo")
    hosts = zookeeper_server.hosts
    path_l, path_m = f"/e2e/{stem}/l", f"/e2e/{stem}/m"
    p3.acquire("q", "m", zk_lock(hosts, path_m))
    p1.acquire("q", "read", zk_lock(hosts, path_l, "kazoo_read"))
    p2.start_acquire("q", "write", zk_lock(hosts, path_l, "kazoo_write"))
    until(lambda: fleet.waiting(path_l, p2.pid), timeout=15)
    p3.start_acquire("q", "read", zk_lock(hosts, path_l, "kazoo_read"))
    until(lambda: fleet.waiting(path_l, p3.pid), timeout=15)
    assert deadlock_on(fleet, {path_l, path_m}) is None  # no cycle yet
    cid, closed_at = p1.start_acquire("q", "m", zk_lock(hosts, path_m))
    found = detected(fleet, {path_l, path_m}, closed_at, "FIFO queue (soft edge) of 3")
    check_participants(
        found,
        {p1.pid: (path_m, {path_l}), p2.pid: (path_l, set()), p3.pid: (path_l, {path_m})},
        victim_pid=p1.pid,
    )
    by_pid = {p["pid"]: p for p in found["participants"]}
    assert by_pid[p3.pid]["waits_for_actors"] == [by_pid[p2.pid]["actor"]]  # the soft edge
    p1.send("cancel", key="m")
    p1.reply(cid, "cancelled")
    assert resolved(fleet, found)["resolution"] == "wait_ended"


# -- no false positives -----------------------------------------------------------------------


def test_heavy_contention_in_one_order_produces_no_finding(
    fleet: Fleet, redis_url: str, zookeeper_server: Any
) -> None:
    apps = fleet.take(4)
    stem = unique("order")
    names = [f"{stem}:a", f"/e2e/{stem}/b", f"{stem}:c"]
    # Every app's threads take the same names in the same order: a redis-py lock, a kazoo
    # lock (FIFO: queue edges too), another redis-py lock.
    cids = []
    for app in apps:
        cids.append(
            app.send(
                "contend",
                actor="contend",
                kind="mixed",
                names=names,
                url=redis_url,
                hosts=zookeeper_server.hosts,
                threads=2,
                iterations=12,
                long_every=6,
                long_hold=0.25,
                ttl=30,
            )
        )
    # The agent sees real contention: reported waits behind reported holders.
    until(lambda: len((fleet.lock(names[0]) or {}).get("waiters", ())) >= 2, timeout=30)
    for app, cid in zip(apps, cids, strict=True):
        result = app.reply(cid, "done", timeout=120)
        assert result["timeouts"] == 0
    locks = set(names)
    until(lambda: all(fleet.lock(n) is None for n in names), timeout=10)  # all released
    for kind in ("deadlocks", "order-inversions", "violations", "stale-holders"):
        hits = [
            f
            for f in fleet.findings(kind)
            if locks & set(f.get("locks", [])) or f.get("lock") in locks
        ]
        assert hits == [], kind


# -- stale holders, violations, order inversions ------------------------------------------------


def test_a_holder_killed_while_holding_becomes_an_orphaned_stale_holder(
    fleet: Fleet, redis_url: str
) -> None:
    (app,) = fleet.take(1)
    name = unique("orphan") + ":x"
    app.acquire("h", "x", redis_lock(redis_url, name))
    until(lambda: fleet.holding(name, app.pid), timeout=10)
    killed = time.time()
    app.kill()
    stale = until(lambda: [s for s in fleet.findings("stale-holders") if s["lock"] == name])
    MEASURED["orphaned holder: found after SIGKILL"] = round(time.time() - killed, 3)
    assert [(s["reason"], s["pid"], s["status"]) for s in stale] == [
        ("orphaned", app.pid, "active")
    ]


def test_a_holder_paused_past_its_lease_while_another_takes_the_lock(
    fleet: Fleet, redis_url: str
) -> None:
    first, second = fleet.take(2)
    name = unique("pause") + ":x"
    client = redis.Redis.from_url(redis_url)
    first.acquire("h", "x", {**redis_lock(redis_url, name), "ttl": 1.0})
    until(lambda: fleet.holding(name, first.pid), timeout=10)
    with faults.paused(first.pid):
        until(lambda: not client.exists(name), timeout=10)  # the lease ran out
        second.acquire("h", "x", redis_lock(redis_url, name), timeout=5)
        until(lambda: fleet.holding(name, second.pid), timeout=10)
    # Resumed, ``first`` still believes it holds the lock and says so in its heartbeat.
    violation = until(lambda: [v for v in fleet.findings("violations") if v["lock"] == name])
    assert violation[0]["reason"] == "overlapping_holds"
    assert {violation[0]["pid"], violation[0]["other"]["pid"]} == {first.pid, second.pid}
    assert first.release("h", "x") == "lost"
    lost = until(
        lambda: [
            s
            for s in fleet.findings("stale-holders")
            if s["lock"] == name and s["reason"] == "lease_expired"
        ]
    )
    assert lost[0]["pid"] == first.pid
    assert second.release("h", "x") == "released"
    client.close()


def test_opposite_orders_at_different_times_become_an_order_inversion(
    fleet: Fleet, redis_url: str
) -> None:
    p, q = fleet.take(2)
    stem = unique("inv")
    a, b = redis_lock(redis_url, f"{stem}:a"), redis_lock(redis_url, f"{stem}:b")
    p.acquire("o", "a", a)
    p.acquire("o", "b", b)
    assert p.release("o", "b") == p.release("o", "a") == "released"
    q.acquire("o", "b", b)  # later, never overlapping: no deadlock is possible now
    q.acquire("o", "a", a)
    assert q.release("o", "a") == q.release("o", "b") == "released"
    inversion = until(
        lambda: [
            i
            for i in fleet.findings("order-inversions")
            if set(i["locks"]) == {a["name"], b["name"]}
        ]
    )
    assert inversion[0]["status"] == "active"
    assert deadlock_on(fleet, {a["name"], b["name"]}, "all") is None


# -- robustness ---------------------------------------------------------------------------------


def test_agent_restarted_mid_deadlock_finds_it_again_with_the_same_id(
    redis_url: str, zookeeper_server: Any
) -> None:
    """A ring across Redis and ZooKeeper; the agent is stopped (SIGTERM) and a new one
    started on the same ports: it knows nothing, then rebuilds the graph from heartbeats."""
    agent = AgentProcess().start()
    apps = started([App(agent.otlp_url, via_cli=True, service=f"svc{c}") for c in "ab"])
    try:
        stem = unique("restart")
        locks = [
            redis_lock(redis_url, f"{stem}:r"),
            zk_lock(zookeeper_server.hosts, f"/e2e/{stem}"),
        ]
        for i, (app, lock) in enumerate(zip(apps, locks, strict=True)):
            app.acquire("r", f"hold{i}", lock)
        api = Api(agent.http_url)
        apps[0].start_acquire("r", "want", locks[1])
        until(lambda: api.waiting(locks[1]["name"], apps[0].pid))
        _, closed_at = apps[1].start_acquire("r", "want", locks[0])
        names = {lock["name"] for lock in locks}
        before = detected(api, names, closed_at, "ring of 2 redis+zookeeper (lockscope agent)")
        agent.stop()
        otlp, http = (u.split("://")[1] for u in (agent.otlp_url, agent.http_url))
        agent.start(otlp, http)
        restarted = time.time()
        assert api.findings("deadlocks") == []
        after = until(lambda: deadlock_on(api, names), timeout=2 * HB + 15)
        MEASURED["found again after an agent restart"] = round(time.time() - restarted, 3)
        assert after["id"] == before["id"]
        assert {p["pid"] for p in after["participants"]} == {a.pid for a in apps}
        assert after["victim"] == before["victim"]
    finally:
        for app in apps:
            app.kill()
        agent.stop()


def test_lossy_reordered_delivery_no_false_deadlock_and_the_true_ring_found(
    redis_url: str, zookeeper_server: Any
) -> None:
    """10% of lock events dropped and every batch shuffled (and batches forwarded out of
    order) between the shims and the agent: consistent-order contention yields nothing, a
    true ring of 3 is still found within about one heartbeat of closing."""
    with InProcessAgent() as agent, FaultProxy(upstream=agent.otlp_url, seed=11) as proxy:
        proxy.drop, proxy.reorder = 0.10, True
        api = Api(agent.http_url)
        apps = started([App(proxy.endpoint, via_cli=True) for _ in range(3)])
        try:
            stem = unique("lossy")
            names = [f"{stem}:a", f"/e2e/{stem}/b", f"{stem}:c"]
            cids = [
                app.send(
                    "contend",
                    actor="contend",
                    kind="mixed",
                    names=names,
                    url=redis_url,
                    hosts=zookeeper_server.hosts,
                    threads=2,
                    iterations=10,
                    long_every=5,
                    long_hold=0.25,
                    ttl=30,
                )
                for app in apps
            ]
            ring = [unique("ring") + f":{c}" for c in "abc"]
            locks = [redis_lock(redis_url, n) for n in ring]
            for i, (app, lock) in enumerate(zip(apps, locks, strict=True)):
                app.acquire("ring", f"hold{i}", lock)
            for i, app in enumerate(apps[:2]):
                app.start_acquire("ring", "want", locks[i + 1])
            for app, cid in zip(apps, cids, strict=True):
                assert app.reply(cid, "done", timeout=120)["timeouts"] == 0
            _, closed_at = apps[2].start_acquire("ring", "want", locks[0])
            found = until(lambda: deadlock_on(api, set(ring)), timeout=HB + 15, interval=0.01)
            took = time.time() - closed_at
            MEASURED["lossy+reordered: ring of 3 found"] = round(took, 3)
            assert took <= HB + DETECT_BOUND
            assert {p["pid"] for p in found["participants"]} == {a.pid for a in apps}
            assert proxy.counts["records_dropped"] > 0
            false = [d for d in api.findings("deadlocks") if set(d["locks"]) != set(ring)]
            assert false == []
            assert api.findings("violations") == []
            assert api.findings("order-inversions") == []
        finally:
            for app in apps:
                app.kill()
