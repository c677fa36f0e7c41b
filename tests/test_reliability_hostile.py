"""Hostile clients against a real agent (issue 14): each test is the attack as it was
reported, scaled to CI where noted, and asserts the promise it broke."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_helpers import World
from lockscope.agent.config import AgentConfig, Limits
from lockscope.agent.model import Event, ProcessInfo, RejectedEvent
from lockscope.testing.agent import InProcessAgent, encode_logs
from reliability_helpers import (
    AgentProcess,
    Worker,
    findings,
    get_json,
    metric_value,
    request,
    rss_bytes,
    until,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def heartbeat(instance: str, t_ns: int | None = None, **attrs: object) -> Event:
    return Event(
        "lockscope.heartbeat",
        time.time_ns() if t_ns is None else t_ns,
        ProcessInfo("svc", "host", 7, instance),
        {
            "lockscope.holds": [],
            "lockscope.waits": [],
            "lockscope.heartbeat.interval": 1.0,
            **attrs,
        },
    )


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://")[1].partition(":")
    return host, int(port)


def is_closed(sock: socket.socket) -> bool:
    """Whether the peer closed (or reset) ``sock``; never blocks."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# -- slow clients (item 5) --------------------------------------------------------------------
@pytest.fixture
def fd_starved_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A real agent with 256 descriptors (the report: 1,024) and a 2 s header timeout."""
    config = tmp_path / "agent.toml"
    config.write_text("header_timeout = 2\n")
    agent = AgentProcess("--config", str(config), nofile=256).start()
    try:
        yield agent
    finally:
        agent.stop()


def test_slowloris_never_stalls_probes_or_ingest(fd_starved_agent: AgentProcess) -> None:
    """Issue 14 item 5, the attack scaled to the descriptor limit: more slow connections
    than the agent has descriptors (the report: 1,100 against 1,024; here 300 against 256),
    each sending its headers a byte at a time.  /healthz and ingest must keep answering,
    the agent never runs out of descriptors (no EMFILE), and slow connections are closed."""
    agent = fd_starved_agent
    slow: list[socket.socket] = []
    stop = threading.Event()
    for url in (agent.otlp_url, agent.http_url):
        for _ in range(150):
            s = socket.create_connection(host_port(url), timeout=5)
            s.sendall(b"POST /v1/logs HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)

    def trickle() -> None:
        while not stop.wait(0.3):
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(b"X")

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # Probes and ingest get through while every slow connection is still trying.
        for _ in range(5):
            assert request(agent.http_url + "/healthz", timeout=5)[0] == 200
            status, _, _ = request(
                agent.otlp_url + "/v1/logs",
                data=encode_logs([heartbeat("inst-real")]),
                headers=PROTOBUF,
                timeout=5,
            )
            assert status == 200
        until(lambda: all(is_closed(s) for s in slow), timeout=30)
    finally:
        stop.set()
        for s in slow:
            s.close()
    text = request(agent.http_url + "/metrics", timeout=5)[2].decode()
    closed = metric_value(text, "lockscope_agent_connections_closed_total", {"reason": "limit"})
    timed_out = metric_value(
        text, "lockscope_agent_connections_closed_total", {"reason": "header_timeout"}
    )
    assert closed > 0  # 300 slow connections cannot all fit in 256 - 128 descriptors
    assert closed + timed_out >= 300
    log = "".join(agent.stderr)
    assert "EMFILE" not in log
    assert "Too many open files" not in log


def test_a_body_sent_slowly_is_408_and_counted() -> None:
    """A body that trickles past ``body_timeout`` gets 408 and its connection is closed."""
    with InProcessAgent(AgentConfig(body_timeout=0.5)) as agent:
        with socket.create_connection(host_port(agent.otlp_url), timeout=10) as s:
            s.sendall(
                b"POST /v1/logs HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123"
            )
            reply = s.recv(4096)
            assert reply.split(b" ", 2)[1] == b"408"
            until(lambda: is_closed(s), timeout=10)
        assert agent.runner.stats.rejected["body_timeout"] == 1


def test_an_idle_connection_is_closed_after_the_header_timeout() -> None:
    with InProcessAgent(AgentConfig(header_timeout=0.5)) as agent:
        with socket.create_connection(host_port(agent.http_url), timeout=10) as s:
            until(lambda: is_closed(s), timeout=10)
        assert agent.runner.stats.connections_closed["header_timeout"] >= 1
        # ...while a client that sends its request at once is served.
        assert request(agent.http_url + "/healthz")[0] == 200


# -- oversized strings (item 3) ----------------------------------------------------------------
def hold_event(instance: str, name: str, owner: str = "me", service: str = "svc") -> Event:
    return Event(
        "lockscope.hold.start",
        time.time_ns(),
        ProcessInfo(service, "host", 8, instance),
        {
            "lockscope.lock.system": "redis",
            "lockscope.lock.namespace": "ns",
            "lockscope.lock.name": name,
            "lockscope.lock.owner": owner,
            "lockscope.actor.id": "thread:1",
            "lockscope.since": time.time_ns(),
            "code.file.path": "/app/" + "x" * 5000,
        },
    )


def test_huge_names_cost_their_cap_not_their_size() -> None:
    """Issue 14 item 3, the attack: 40 holds with 12 MB lock names, one request each (took
    an agent from 54 to 582 MiB; /api/v1/locks answered 120 MB).  Every string is cut to
    limits.max_string_length (1,024), the cuts are counted, 40 names stay 40 locks."""
    agent = AgentProcess().start()
    try:
        assert agent.proc is not None
        until(lambda: request(agent.http_url + "/healthz")[0] == 200)
        before = rss_bytes(agent.proc.pid)
        big = "n" * 12_000_000
        for i in range(40):
            body = encode_logs(
                [hold_event(f"inst-big-{i % 4}", f"{i}:{big}", owner="o" * 2_000_000)]
            )
            status, _, _ = request(
                agent.otlp_url + "/v1/logs", data=body, headers=PROTOBUF, timeout=60
            )
            assert status == 200
        locks = get_json(agent.http_url + "/api/v1/locks")["locks"]
        assert len(locks) == 40
        assert all(len(lock["name"]) == 1024 for lock in locks)
        status, _, doc = request(agent.http_url + "/api/v1/locks")
        assert len(doc) < 200_000
        text = request(agent.http_url + "/metrics")[2].decode()
        for field in ("lock_name", "owner", "code"):
            labels = {"field": field}
            assert metric_value(text, "lockscope_agent_strings_truncated_total", labels) == 40
        growth = rss_bytes(agent.proc.pid) - before
        # The bodies themselves pass through (16 MiB each, one at a time): what is kept
        # must not grow with them.  Before the fix: +528 MiB.
        print(f"agent RSS {before / 2**20:.1f} MiB -> +{growth / 2**20:.1f} MiB")
        assert growth < 64 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB"
    finally:
        agent.stop()


def test_cut_names_stay_distinct_and_consistent() -> None:
    """Two long names sharing a 2,000-character prefix are two locks; the same long name
    from two processes is one lock (so a deadlock through it is still found)."""
    prefix = "p" * 2000
    with InProcessAgent() as agent:
        agent.post_events(
            [
                hold_event("inst-a", prefix + "A", service="s" * 3000),
                hold_event("inst-b", prefix + "B"),
                hold_event("inst-c", prefix + "A"),
            ]
        )
        locks = agent.get("/api/v1/locks")["locks"]
        assert len(locks) == 2
        holders = sorted(lock["holder_count"] for lock in locks)
        assert holders == [1, 2]
        processes = agent.get("/api/v1/processes")["processes"]
        assert max(len(p["service"]) for p in processes) == 1024
        assert agent.runner.stats.truncated["service"] == 1
        assert agent.runner.stats.truncated["lock_name"] == 3


# -- clocks and forged heartbeats (item 1) ---------------------------------------------------
def active_deadlocks(http_url: str, locks: set[str]) -> list[dict[str, object]]:
    return [
        d
        for d in findings(http_url, "deadlocks")
        if d["status"] == "active" and set(d["locks"]) == locks
    ]


def test_a_clock_stepped_back_does_not_hide_a_real_deadlock(redis_url: str) -> None:
    """Issue 14 item 1, the attack: one participant's clock runs 120 s ahead, then NTP
    steps it back (here 1 s after the start, before the deadlock forms); the deadlock went
    unreported for the whole test (20 s).  Then a forger sends each victim's heartbeat
    dated an hour ahead, listing nothing: the deadlock must stay found, with its holds and
    waits."""
    agent = AgentProcess().start()
    cfg = {"url": redis_url, "first": "clk:a", "second": "clk:b"}
    first = Worker("deadlock", {**cfg, "clock_ahead": 120, "step_after": 1.0}, agent.otlp_url)
    second = Worker("deadlock", {**cfg, "first": "clk:b", "second": "clk:a"}, agent.otlp_url)
    try:
        first.expect("holding")
        second.expect("holding")
        first.expect("stepped")
        first.send("go")
        second.send("go")
        until(lambda: active_deadlocks(agent.http_url, {"clk:a", "clk:b"}), timeout=15)
        victims = [
            p
            for p in get_json(agent.http_url + "/api/v1/processes")["processes"]
            if p["pid"] in (first.pid, second.pid)
        ]
        assert len(victims) == 2
        future = time.time_ns() + 3600 * 10**9
        forged = [
            heartbeat(p["instance"], future, **extra)
            for p in victims
            for extra in ({}, {"lockscope.seq": 1}, {"lockscope.seq": 2**62})
        ]
        forged = [
            Event(
                e.name,
                e.time_ns,
                ProcessInfo(p["service"], p["host"], p["pid"], e.process.instance),
                e.attrs,
            )
            for e, p in zip(forged, [p for p in victims for _ in range(3)], strict=True)
        ]
        status, _, _ = request(
            agent.otlp_url + "/v1/logs", data=encode_logs(forged), headers=PROTOBUF
        )
        assert status == 200
        # Two heartbeats later: still found, and the agent still sees both stuck.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert active_deadlocks(agent.http_url, {"clk:a", "clk:b"})
        procs = {p["pid"]: p for p in get_json(agent.http_url + "/api/v1/processes")["processes"]}
        for w in (first, second):
            assert (procs[w.pid]["holds"], procs[w.pid]["waits"]) == (1, 1)
    finally:
        first.kill()
        second.kill()
        agent.stop()


# -- a flood of processes (item 4) -------------------------------------------------------------
def lock_event(name: str, instance: str, lock: str, seq: int, since: int) -> Event:
    return Event(
        name,
        time.time_ns(),
        ProcessInfo("real", "host", 9, instance),
        {
            "lockscope.lock.system": "redis",
            "lockscope.lock.namespace": "ns",
            "lockscope.lock.name": lock,
            "lockscope.actor.id": "thread:1",
            "lockscope.since": since,
            "lockscope.seq": seq,
        },
    )


def flood(agent: InProcessAgent, start: int, count: int) -> None:
    for first in range(start, start + count, 500):
        fake = [heartbeat(f"flood-{i}") for i in range(first, min(first + 500, start + count))]
        agent.post_events(fake)


def test_a_flood_of_fake_processes_does_not_blind_the_agent() -> None:
    """Issue 14 item 4, the attack: 10,000 fake processes (one heartbeat each) from one
    client filled the process table; a real deadlock started afterwards went unnoticed
    (126 limit hits in 30 s).  Processes with waits and holds must win: the deadlock is
    found, stays found while the flood goes on, and the flood is counted."""
    with InProcessAgent(AgentConfig(evidence_timeout=0)) as agent:
        flood(agent, 0, 10_000)
        t0 = time.time_ns()
        agent.post_events(
            [
                lock_event("lockscope.hold.start", "real-1", "fl:a", 1, t0),
                lock_event("lockscope.hold.start", "real-2", "fl:b", 1, t0),
                lock_event("lockscope.wait.start", "real-1", "fl:b", 2, t0 + 1),
                lock_event("lockscope.wait.start", "real-2", "fl:a", 2, t0 + 1),
            ]
        )
        until(
            lambda: any(
                d["status"] == "active" for d in agent.get("/api/v1/deadlocks")["deadlocks"]
            )
        )
        flood(agent, 10_000, 10_000)  # the flood goes on: every fake evicts an older fake
        deadlocks = agent.get("/api/v1/deadlocks")["deadlocks"]
        assert [d["status"] for d in deadlocks] == ["active"]
        counters = agent.state.counters
        assert counters.processes_evicted >= 10_000
        assert "max_processes" not in counters.limits_hit
        processes = agent.get("/api/v1/processes")["processes"]
        assert len(processes) <= agent.state.config.limits.max_processes
        assert {p["instance"] for p in processes if p["service"] == "real"} == {"real-1", "real-2"}


def test_at_the_process_limit_busy_processes_are_kept_and_a_newcomer_refused() -> None:
    w = World(AgentConfig(evidence_timeout=0, limits=Limits(max_processes=3)))
    w.hold("1.1", "A")
    w.hold("2.1", "B")
    w.heartbeat(3)  # reports nothing: evicted first
    w.hold("4.1", "C")
    assert w.state.counters.processes_evicted == 1
    with pytest.raises(RejectedEvent):
        w.hold("5.1", "D")
    assert w.state.counters.limits_hit["max_processes"] == 1
    assert {a.process.info.instance for a in w.state.actors()} == {"inst-1", "inst-2", "inst-4"}
