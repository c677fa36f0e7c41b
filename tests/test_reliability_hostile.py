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

from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event, ProcessInfo
from lockscope.testing.agent import InProcessAgent, encode_logs
from reliability_helpers import AgentProcess, get_json, metric_value, request, rss_bytes, until

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
