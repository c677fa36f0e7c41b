"""The test harness itself: every server starts, serves, and survives the faults it offers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psycopg
import pymysql
import pytest
import redis
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from lockscope.testing import (
    MariaDBServer,
    PostgresServer,
    RedisServer,
    ServerNotInstalled,
    ZooKeeperServer,
    faults,
)
from lockscope.testing.server import ServerStartError, port_open

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


# -- ZooKeeper ------------------------------------------------------------------------


@pytest.fixture
def kazoo(zookeeper_server: ZooKeeperServer) -> Iterator[KazooClient]:
    client = KazooClient(hosts=zookeeper_server.hosts, timeout=10.0)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def _kazoo_serves(hosts: str) -> bool:
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=10)
    try:
        return client.exists("/") is not None
    finally:
        client.stop()
        client.close()


def test_zookeeper_serves(zookeeper_server: ZooKeeperServer, kazoo: KazooClient) -> None:
    path = kazoo.create("/lockscope-test/node-", b"v", makepath=True, sequence=True)
    assert kazoo.get(path)[0] == b"v"
    assert zookeeper_server.hosts == f"127.0.0.1:{zookeeper_server.port}"
    assert zookeeper_server.four_letter_word("ruok") == "imok"


def test_zookeeper_grants_one_second_sessions(zookeeper_server: ZooKeeperServer) -> None:
    client = KazooClient(hosts=zookeeper_server.hosts, timeout=1.0)
    client.start(timeout=10)
    try:
        assert client._session_timeout == 1000
    finally:
        client.stop()
        client.close()


def test_zookeeper_pause_times_out_and_resume_recovers(
    zookeeper_server: ZooKeeperServer, kazoo: KazooClient
) -> None:
    kazoo.ensure_path("/lockscope-pause")
    with faults.paused(zookeeper_server.pid, group=True), pytest.raises(KazooTimeoutError):
        kazoo.get_async("/lockscope-pause").get(timeout=1.0)
    assert _kazoo_serves(zookeeper_server.hosts)


def test_zookeeper_kill_and_start_on_same_port(zookeeper_server: ZooKeeperServer) -> None:
    port, old_pid = zookeeper_server.port, zookeeper_server.pid
    zookeeper_server.kill()
    assert not port_open("127.0.0.1", port)
    zookeeper_server.start()
    assert (zookeeper_server.port, zookeeper_server.pid != old_pid) == (port, True)
    assert _kazoo_serves(zookeeper_server.hosts)


def test_zookeeper_missing_jar_names_the_package() -> None:
    server = ZooKeeperServer(jar="/nonexistent/zookeeper.jar")
    try:
        with pytest.raises(ServerNotInstalled, match=r"apt-get install zookeeper"):
            server.start()
    finally:
        server.close()


# -- PostgreSQL -----------------------------------------------------------------------


def _pg_select_1(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_serves(postgres_server: PostgresServer) -> None:
    assert _pg_select_1(postgres_server.dsn) == 1
    assert _pg_select_1(postgres_server.url) == 1
    with psycopg.connect(postgres_server.url) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == (postgres_server.user, postgres_server.dbname) == ("postgres", "lockscope")
    assert (
        postgres_server.url == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/lockscope"
    )


def test_postgres_does_not_run_as_root(postgres_server: PostgresServer) -> None:
    uid = os.stat(f"/proc/{postgres_server.pid}").st_uid
    assert uid != 0 or os.geteuid() != 0


def test_postgres_pause_times_out_and_resume_recovers(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn) as conn:
        postgres_server.pause()
        try:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(postgres_server.dsn, connect_timeout=1)
        finally:
            postgres_server.resume()
        # The connection made before the pause works again: backends were frozen, not killed.
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_postgres_kill_and_start_on_same_port(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS harness_survives (x int)")
    # A client connected during the crash: its backend dies with the server.
    survivor = psycopg.connect(postgres_server.dsn, autocommit=True)
    port = postgres_server.port
    postgres_server.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_server.dsn, connect_timeout=1)
    postgres_server.start()
    assert postgres_server.port == port
    with pytest.raises(psycopg.OperationalError):
        survivor.execute("SELECT 1")
    survivor.close()
    with psycopg.connect(postgres_server.dsn) as conn:
        # Crash recovery kept the committed table.
        assert conn.execute("SELECT count(*) FROM harness_survives").fetchone() == (0,)
        conn.execute("DROP TABLE harness_survives")


def test_postgres_missing_binaries_name_the_package() -> None:
    server = PostgresServer(bin_dir="/nonexistent/bin")
    try:
        with pytest.raises(ServerNotInstalled, match=r"apt-get install postgresql"):
            server.start()
    finally:
        server.close()


# -- MariaDB --------------------------------------------------------------------------


def _mariadb_connect(server: MariaDBServer, timeout: int = 10) -> pymysql.Connection:
    return pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=server.dbname,
        connect_timeout=timeout,
        read_timeout=timeout,
        autocommit=True,
    )


def _mariadb_select_1(server: MariaDBServer) -> object:
    conn = _mariadb_connect(server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()
    finally:
        conn.close()


def test_mariadb_serves(mariadb_server: MariaDBServer) -> None:
    assert _mariadb_select_1(mariadb_server) == (1,)
    assert mariadb_server.url == f"mysql://root@127.0.0.1:{mariadb_server.port}/lockscope"
    conn = _mariadb_connect(mariadb_server)
    try:
        with conn.cursor() as cur:
            # Grant tables are in force: ordinary SQL, privileges and all, works.
            cur.execute("SELECT CURRENT_USER(), DATABASE()")
            assert cur.fetchone() == ("root@127.0.0.1", "lockscope")
            cur.execute("SHOW GRANTS")
            assert "ALL PRIVILEGES" in cur.fetchone()[0]
    finally:
        conn.close()


def test_mariadb_pause_times_out_and_resume_recovers(mariadb_server: MariaDBServer) -> None:
    conn = _mariadb_connect(mariadb_server, timeout=1)
    try:
        with (
            faults.paused(mariadb_server.pid, group=True),
            pytest.raises(pymysql.err.OperationalError),
            conn.cursor() as cur,
        ):
            cur.execute("SELECT 1")
    finally:
        conn.close()
    assert _mariadb_select_1(mariadb_server) == (1,)


def test_mariadb_kill_and_start_on_same_port(mariadb_server: MariaDBServer) -> None:
    conn = _mariadb_connect(mariadb_server)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS harness_survives (x INT) ENGINE=InnoDB")
        cur.execute("INSERT INTO harness_survives VALUES (7)")
    conn.close()
    port = mariadb_server.port
    mariadb_server.kill()
    with pytest.raises(pymysql.err.OperationalError):
        _mariadb_connect(mariadb_server, timeout=1)
    mariadb_server.start()
    assert mariadb_server.port == port
    conn = _mariadb_connect(mariadb_server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT x FROM harness_survives")
            assert cur.fetchall() == ((7,),)
            cur.execute("DROP TABLE harness_survives")
    finally:
        conn.close()


def test_mariadb_missing_binary_names_the_package() -> None:
    server = MariaDBServer(mariadbd="/nonexistent/mariadbd")
    try:
        with pytest.raises(ServerNotInstalled, match=r"apt-get install mariadb-server"):
            server.start()
    finally:
        server.close()


# -- fault helpers --------------------------------------------------------------------


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


def test_a_server_that_exits_reports_its_log() -> None:
    server = RedisServer(binary="/bin/false")
    try:
        with pytest.raises(ServerStartError, match="did not start"):
            server.start()
        assert not server.running
    finally:
        server.close()


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = RedisServer(port=squatter.getsockname()[1])
        try:
            with pytest.raises(ServerStartError, match="did not start"):
                server.start()
        finally:
            server.close()


def test_plugin_heals_a_server_a_test_left_broken(pytester: pytest.Pytester) -> None:
    # Run a small suite of its own: the first test kills the session server and the second
    # pauses it; each following test must find it serving again.
    pytester.makepyfile(
        """
        import redis

        def test_kill(redis_server):
            redis_server.kill()

        def test_after_kill(redis_server):
            assert redis.Redis.from_url(redis_server.url, socket_timeout=2).ping()
            redis_server.pause()

        def test_after_pause(redis_url):
            assert redis.Redis.from_url(redis_url, socket_timeout=2).ping()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


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
