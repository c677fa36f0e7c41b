"""The test harness itself: every server starts, serves, and survives the faults it offers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import redis

from lockscope.testing import RedisServer, ServerNotInstalled, faults
from lockscope.testing.server import port_open

# -- Redis ----------------------------------------------------------------------------


def test_redis_server_serves(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    assert client.set("lockscope:test", "1")
    assert client.get("lockscope:test") == b"1"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_redis_url_is_flushed(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("left-behind", "x")  # the next test using redis_url must not see it


def test_redis_url_is_flushed_again(redis_url: str) -> None:
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_redis_servers_are_three_independent_servers(redis_servers: list[RedisServer]) -> None:
    assert len(redis_servers) == 3
    assert len({s.port for s in redis_servers}) == 3
    clients = [redis.Redis.from_url(s.url) for s in redis_servers]
    for c in clients:
        c.flushall()
    clients[0].set("only-here", "1")
    assert [c.exists("only-here") for c in clients] == [1, 0, 0]


def test_redis_pause_times_out_and_resume_recovers(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.3)
    client.set("k", "v")
    redis_server.pause()
    try:
        assert redis_server.paused
        with pytest.raises(redis.TimeoutError):
            client.get("k")
    finally:
        redis_server.resume()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    assert client.get("k") == b"v"


def test_redis_kill_and_start_on_same_port(redis_server: RedisServer) -> None:
    port, old_pid = redis_server.port, redis_server.pid
    redis_server.kill()
    assert not redis_server.running
    assert not port_open("127.0.0.1", port)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_server.url, socket_connect_timeout=1).ping()
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.pid != old_pid
    assert redis.Redis.from_url(redis_server.url).ping()


def test_redis_stop_and_start(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert not redis_server.running
    redis_server.start()
    assert redis.Redis.from_url(redis_server.url).ping()


def test_redis_appendonly_keeps_data_across_kill() -> None:
    with RedisServer(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("durable", "yes")
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).get("durable") == b"yes"


def test_faults_on_a_server_pid(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.3)
    with faults.paused(redis_server.pid), pytest.raises(redis.TimeoutError):
        client.ping()
    assert redis.Redis.from_url(redis_server.url, socket_timeout=2).ping()


def test_faults_kill_any_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        faults.pause(child.pid)
        faults.resume(child.pid)
        faults.kill(child.pid)
        assert child.wait(timeout=5) == -9
    finally:
        child.kill()
        child.wait()


def test_faults_reject_non_positive_pids() -> None:
    with pytest.raises(ValueError, match="positive"):
        faults.pause(0)
    with pytest.raises(ValueError, match="positive"):
        faults.kill(-1)


def test_missing_binary_names_the_package() -> None:
    server = RedisServer(binary="/nonexistent/redis-server")
    try:
        with pytest.raises(ServerNotInstalled, match=r"apt-get install redis-server"):
            server.start()
    finally:
        server.close()


def test_servers_are_stopped_at_interpreter_exit() -> None:
    # A script that starts a server and exits without stopping it: nothing may survive.
    script = textwrap.dedent(
        """
        from lockscope.testing import RedisServer
        s = RedisServer().start()
        print(s.pid, s.port, s.base_dir, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    pid, port, base_dir = int(out[0]), int(out[1]), out[2]
    faults.wait_exited(pid, timeout=10)
    assert not port_open("127.0.0.1", port)
    assert not os.path.exists(base_dir)
