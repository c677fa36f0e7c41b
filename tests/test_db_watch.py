"""The agent's database watcher against real PostgreSQL and MariaDB, with real instrumented
app processes (tests/db_worker.py) and a watcher role that has only the least privilege
(``pg_monitor``; ``PROCESS``), never a superuser.

Every assertion goes through the agent's JSON API.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import polling
from lockscope.agent.db_dsn import parse_dsn
from lockscope.agent.db_watch import setup_database_watchers
from lockscope.client import AgentError
from lockscope.testing.agent import InProcessAgent

WORKER = str(Path(__file__).with_name("db_worker.py"))
wait_until = functools.partial(polling.wait_until, timeout=20.0)


class Worker:
    """One instrumented app process (db_worker.py)."""

    def __init__(self, driver: str, dsn: str, endpoint: str, service: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
        env.update(
            {
                "LOCKSCOPE_ENDPOINT": endpoint,
                "LOCKSCOPE_HEARTBEAT": "0.5",
                "LOCKSCOPE_METRICS_EXPORT": "none",
                "OTEL_SERVICE_NAME": service,
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, driver, dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.read() == "ready"
        self.pid = int(self.cmd("pid"))

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "worker exited"
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def cmd(self, line: str) -> str:
        self.send(line)
        answer = self.read()
        assert answer.startswith("ok "), answer
        return answer[3:]

    def bg(self, line: str) -> None:
        """Send a command that blocks; its answer is read later (:meth:`read`)."""
        self.send(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close()


def deadlocks(agent: InProcessAgent) -> list[dict[str, Any]]:
    return list(agent.get("/api/v1/deadlocks?status=active")["deadlocks"])


def found_deadlock(agent: InProcessAgent, timeout: float = 20.0) -> dict[str, Any]:
    """The first active deadlock whose participants are all the apps' actors (the graph
    and locks in the failure message if none).

    A session whose app has not yet reported using it (its report comes ``report_after``
    after the statement began; the watcher holds a wait back ``min_wait``) is briefly an
    actor of its own: on a loaded machine a first finding can name it, and is replaced
    when the app's report arrives.
    """

    def apps_only() -> list[dict[str, Any]]:
        return [
            d
            for d in deadlocks(agent)
            if all(p["service"] not in ("postgresql", "mysql") for p in d["participants"])
        ]

    try:
        polling.wait_until(apps_only, timeout=timeout)
    except AssertionError:
        graph = agent.get("/api/v1/graph")
        locks = agent.get("/api/v1/locks")
        raise AssertionError(f"no deadlock; graph={graph} locks={locks}") from None
    return apps_only()[0]


@pytest.fixture(scope="module")
def pg_watch_dsn(postgres_server: Any) -> str:
    dsn = postgres_server.create_monitor_role("lockscope_watch", "s3cret-watch")
    postgres_server.psql(
        "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int);"
        "INSERT INTO accounts VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING;"
    )
    return str(dsn)


@pytest.fixture
def pg_agent(pg_watch_dsn: str) -> Iterator[InProcessAgent]:
    setup = setup_database_watchers([parse_dsn(pg_watch_dsn, name="pg")])
    with InProcessAgent(http_setup=[setup]) as agent:
        wait_until(lambda: agent.get("/readyz")["databases"]["pg"]["up"])
        yield agent


def app_dsn(server: Any, deadlock_timeout: str = "30s") -> str:
    """The apps' libpq DSN; PostgreSQL's own deadlock check waits ``deadlock_timeout``."""
    return (
        f"host={server.host} port={server.port} user={server.user} dbname={server.dbname} "
        f"options='-c deadlock_timeout={deadlock_timeout}'"
    )


def test_cross_layer_deadlock_postgres(
    pg_agent: InProcessAgent, postgres_server: Any, redis_server: Any, workers: list[Worker]
) -> None:
    name = f"xl-{uuid.uuid4().hex[:8]}"
    a = Worker("psycopg", app_dsn(postgres_server), pg_agent.otlp_url, "svc-a")
    b = Worker("psycopg", app_dsn(postgres_server), pg_agent.otlp_url, "svc-b")
    workers += [a, b]
    for w in (a, b):
        w.cmd(f"redis_lock {redis_server.url} {name}")
    b.cmd("begin")
    b.cmd("sql UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    assert a.cmd("redis_acquire 5") == "True"
    a.bg("sql UPDATE accounts SET balance = balance - 1 WHERE id = 1")
    b.bg("redis_acquire 30")
    d = found_deadlock(pg_agent)
    services = sorted(p["service"] for p in d["participants"])
    assert services == ["svc-a", "svc-b"], d
    assert name in d["locks"], d
    assert any(lock.startswith("row:public.accounts@") for lock in d["locks"]), d
    assert d["victim"], d
    by_service = {p["service"]: p for p in d["participants"]}
    assert by_service["svc-a"]["waits_for"].startswith("row:public.accounts@"), d
    assert name in by_service["svc-a"]["holds"], d
    assert by_service["svc-b"]["waits_for"] == name, d
    assert f"session:{a.pid}" in by_service["svc-a"]["holds"], d
    assert f"session:{b.pid}" in by_service["svc-b"]["holds"], d


def ring(agent: InProcessAgent, members: list[Worker], lock_sql: str) -> dict[str, Any]:
    """Each member takes lock i, then asks for lock i+1: a ring; returns the deadlock."""
    for i, w in enumerate(members):
        w.cmd("sql " + lock_sql.format(key=i))
    for i, w in enumerate(members):
        w.bg("sql " + lock_sql.format(key=(i + 1) % len(members)))
    return found_deadlock(agent)


ADVISORY = "SELECT pg_advisory_lock(7700, {key})"


@pytest.mark.parametrize(
    ("drivers", "size"),
    [
        (["psycopg", "psycopg"], 2),
        (["psycopg2", "psycopg", "psycopg2"], 3),
        (["asyncpg", "psycopg_async"], 2),
    ],
    ids=["psycopg-2", "psycopg2-3", "async-2"],
)
def test_advisory_ring_found_before_postgres_detector(
    pg_agent: InProcessAgent,
    postgres_server: Any,
    workers: list[Worker],
    drivers: list[str],
    size: int,
) -> None:
    """PostgreSQL's own check waits deadlock_timeout (30 s here): lockscope reports first,
    with the app's actors; the server has not broken the ring when the finding is there."""
    dsn = app_dsn(postgres_server)
    url = (
        f"postgresql://{postgres_server.user}@{postgres_server.host}:{postgres_server.port}"
        f"/{postgres_server.dbname}?options=-c%20deadlock_timeout%3D30s"
    )
    members = [
        Worker(d, url if d == "asyncpg" else dsn, pg_agent.otlp_url, f"ring-{i}")
        for i, d in enumerate(drivers)
    ]
    workers += members
    d = ring(pg_agent, members, ADVISORY)
    assert sorted(p["service"] for p in d["participants"]) == [f"ring-{i}" for i in range(size)]
    assert sorted(d["locks"]) == sorted(f"advisory:7700,{i}" for i in range(size)), d
    for p in d["participants"]:
        assert p["waits_for"].startswith("advisory:7700,"), d
        assert any(h.startswith("advisory:7700,") for h in p["holds"]), d
    assert d["victim"] in {p["actor"] for p in d["participants"]}
    # Still stuck on the server: nobody was chosen as PostgreSQL's victim yet.
    waiting = postgres_server.psql(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory'"
    )
    assert int(waiting) == size
    # Ending one wait (the server's victim, here a cancel) resolves the finding.
    postgres_server.psql(f"SELECT pg_cancel_backend({members[0].pid})")
    polling.wait_until(lambda: not deadlocks(pg_agent), timeout=20.0)
    resolved = pg_agent.get("/api/v1/deadlocks")["deadlocks"]
    assert any(x["id"] == d["id"] and x["status"] == "resolved" for x in resolved)


def test_external_session_is_the_holder(
    pg_agent: InProcessAgent, postgres_server: Any, workers: list[Worker]
) -> None:
    """A psql-like session no instrumented process owns holds the row an app waits for."""
    import psycopg

    external = psycopg.connect(app_dsn(postgres_server), application_name="nightly-migration")
    try:
        external.execute("UPDATE accounts SET balance = balance WHERE id = 2")
        app = Worker("psycopg", app_dsn(postgres_server), pg_agent.otlp_url, "svc-app")
        workers.append(app)
        app.bg("sql UPDATE accounts SET balance = balance + 1 WHERE id = 2")
        sid = external.info.backend_pid

        def app_waits() -> dict[str, Any] | None:
            """The detail of the row lock svc-app alone waits for, if the agent has it.

            Not simply the first row lock with a waiter: a previous test's killed worker
            may still have a backend queued on another row until PostgreSQL notices, and
            the locks list's order may put either first."""
            for lock in pg_agent.get("/api/v1/locks")["locks"]:
                if lock["name"].startswith("row:public.accounts@") and lock["waiter_count"]:
                    try:
                        detail = pg_agent.get(
                            "/api/v1/locks/" + urllib.parse.quote(lock["name"], safe="")
                        )
                    except AgentError as exc:  # gone since the list was read
                        if exc.status == 404:
                            continue
                        raise
                    if [w["service"] for w in detail["waiters"]] == ["svc-app"]:
                        return dict(detail)
            return None

        # (A session is its own actor until its app's report of using it arrives.)
        # The assertions read the very detail the poll saw, not a second fetch.
        seen: list[dict[str, Any]] = []

        def settled() -> bool:
            found = app_waits()
            if found is not None:
                seen.append(found)
            return found is not None

        polling.wait_until(settled, timeout=20.0, what="svc-app's wait for the row")
        detail = seen[-1]
        holders = detail["holders"]
        assert [h["actor_id"] for h in holders] == [f"session:{sid}"], detail
        assert holders[0]["service"] == "postgresql"
        assert "nightly-migration" in (holders[0].get("actor") or ""), detail
        assert [w["service"] for w in detail["waiters"]] == ["svc-app"], detail
        assert not deadlocks(pg_agent)
        # The database lock is a lock of the metrics too (by template).
        with urllib.request.urlopen(f"{pg_agent.http_url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'lockscope_lock_waiters{lock="row:public.accounts@(' in metrics
    finally:
        external.rollback()
        external.close()
    polling.wait_until(lambda: app_waits() is None, timeout=20.0)


def test_no_finding_for_waits_that_end_and_idle_transactions(
    pg_agent: InProcessAgent, postgres_server: Any, workers: list[Worker]
) -> None:
    """Ordinary row waits that end, consistent-order contention and a long transaction
    that blocks nobody: no deadlock, and the graph empties."""
    members = [
        Worker("psycopg", app_dsn(postgres_server), pg_agent.otlp_url, f"calm-{i}")
        for i in range(3)
    ]
    workers += members
    idle = members[2]
    idle.cmd("begin")
    idle.cmd("sql SELECT balance FROM accounts WHERE id = 2 FOR SHARE")
    a, b = members[0], members[1]
    for _ in range(3):
        a.cmd("begin")
        a.cmd("sql UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        b.bg("sql UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        polling.wait_until(lambda: row_waiters(pg_agent) == 1, timeout=20.0)
        a.cmd("commit")
        assert b.read().startswith("ok")
    for w in (a, b):
        w.cmd("sql SELECT pg_advisory_lock(7800, 1)")
        w.cmd("sql SELECT pg_advisory_lock(7800, 2)")
        w.cmd("sql SELECT pg_advisory_unlock_all()")
    polling.wait_until(lambda: row_waiters(pg_agent) == 0, timeout=20.0)
    assert not pg_agent.get("/api/v1/deadlocks")["deadlocks"]
    idle.cmd("commit")


def row_waiters(agent: InProcessAgent) -> int:
    return sum(
        lock["waiter_count"]
        for lock in agent.get("/api/v1/locks")["locks"]
        if lock["system"] == "postgresql" and not lock["name"].startswith("session:")
    )


# -- MariaDB ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_watch_dsn(mariadb_server: Any) -> str:
    dsn = mariadb_server.create_monitor_user("lockscope_watch", "s3cret-watch")
    mariadb_server.sql(
        f"CREATE TABLE IF NOT EXISTS `{mariadb_server.dbname}`.accounts"
        " (id int PRIMARY KEY, balance int) ENGINE=InnoDB;"
        f" INSERT IGNORE INTO `{mariadb_server.dbname}`.accounts VALUES (1, 0), (2, 0);"
    )
    return str(dsn)


@pytest.fixture
def my_agent(my_watch_dsn: str) -> Iterator[InProcessAgent]:
    setup = setup_database_watchers([parse_dsn(my_watch_dsn, name="maria")])
    with InProcessAgent(http_setup=[setup]) as agent:
        wait_until(lambda: agent.get("/readyz")["databases"]["maria"]["up"])
        yield agent


def test_cross_layer_deadlock_mariadb(
    my_agent: InProcessAgent, mariadb_server: Any, redis_server: Any, workers: list[Worker]
) -> None:
    name = f"xlm-{uuid.uuid4().hex[:8]}"
    url = str(mariadb_server.url)
    a = Worker("pymysql", url, my_agent.otlp_url, "svc-a")
    b = Worker("pymysql", url, my_agent.otlp_url, "svc-b")
    workers += [a, b]
    for w in (a, b):
        w.cmd(f"redis_lock {redis_server.url} {name}")
    b.cmd("begin")
    b.cmd("sql UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    assert a.cmd("redis_acquire 5") == "True"
    a.bg("sql UPDATE accounts SET balance = balance - 1 WHERE id = 1")
    b.bg("redis_acquire 30")
    d = found_deadlock(my_agent)
    by_service = {p["service"]: p for p in d["participants"]}
    assert sorted(by_service) == ["svc-a", "svc-b"], d
    assert by_service["svc-a"]["waits_for"].startswith("row:lockscope.accounts@PRIMARY("), d
    assert name in by_service["svc-a"]["holds"], d
    assert by_service["svc-b"]["waits_for"] == name, d
    assert f"session:{a.pid}" in by_service["svc-a"]["holds"], d
    assert f"session:{b.pid}" in by_service["svc-b"]["holds"], d


def test_get_lock_wait_and_holder_mariadb(
    my_agent: InProcessAgent, mariadb_server: Any, workers: list[Worker]
) -> None:
    """GET_LOCK names are locks of the graph: the holder (from METADATA_LOCK_INFO) and the
    waiter (a session in state "User lock") are both the apps' actors."""
    lock = f"jobs-{uuid.uuid4().hex[:6]}"
    url = str(mariadb_server.url)
    a = Worker("pymysql", url, my_agent.otlp_url, "holder")
    b = Worker("pymysql", url, my_agent.otlp_url, "waiter")
    workers += [a, b]
    a.cmd(f"sql SELECT GET_LOCK('{lock}', 5)")
    # The holder's binding is its open use of the session: keep a transaction open.
    a.cmd("begin")
    b.bg(f"sql SELECT GET_LOCK('{lock}', 30)")

    def detail() -> dict[str, Any] | None:
        path = "/api/v1/locks/" + urllib.parse.quote(f"user_lock:{lock}", safe="")
        try:
            found = dict(my_agent.get(path))
        except AgentError as exc:  # not (or no longer) a lock of the graph
            if exc.status == 404:
                return None
            raise
        return found if found.get("holders") and found.get("waiters") else None

    def services() -> tuple[list[str], list[str]] | None:
        found = detail()
        if found is None:
            return None
        return [h["service"] for h in found["holders"]], [w["service"] for w in found["waiters"]]

    # (A session is its own actor until its app's report of using it arrives.)
    polling.wait_until(lambda: services() == (["holder"], ["waiter"]), timeout=20.0)
    a.cmd(f"sql SELECT RELEASE_LOCK('{lock}')")
    assert b.read().startswith("ok")
    polling.wait_until(lambda: detail() is None, timeout=20.0)


# -- watcher faults -------------------------------------------------------------------------------


def status(agent: InProcessAgent, name: str) -> dict[str, Any]:
    return dict(agent.get("/readyz")["databases"][name])


def up_metric(agent: InProcessAgent, name: str) -> str | None:
    with urllib.request.urlopen(f"{agent.http_url}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'lockscope_agent_database_up{{database="{name}"}}'):
            return line.rsplit(" ", 1)[1]
    return None


def test_wrong_password_missing_privilege_and_unreachable(
    postgres_server: Any, pg_watch_dsn: str, mariadb_server: Any, caplog: Any
) -> None:
    """Each fault is logged once (password redacted), shown in /readyz and as
    lockscope_agent_database_up 0; the agent keeps serving; no password anywhere."""
    postgres_server.psql(
        "DO $$ BEGIN CREATE ROLE lockscope_nopriv LOGIN PASSWORD 'n0priv-pw';"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    )
    mariadb_server.sql(
        f"CREATE USER IF NOT EXISTS 'lockscope_nopriv'@'{mariadb_server.host}'"
        " IDENTIFIED BY 'n0priv-pw';"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    wrong = pg_watch_dsn.replace("s3cret-watch", "Wr0ng-pass-word")
    host = f"{postgres_server.host}:{postgres_server.port}"
    targets = [
        parse_dsn(wrong, name="wrong"),
        parse_dsn(f"postgresql://lockscope_nopriv:n0priv-pw@{host}/lockscope", name="nopriv"),
        parse_dsn(
            f"mysql://lockscope_nopriv:n0priv-pw@{mariadb_server.host}:{mariadb_server.port}"
            "/lockscope",
            name="mynopriv",
        ),
        parse_dsn(f"postgresql://x:Unre4chable-pw@127.0.0.1:{free_port}/db", name="down"),
    ]
    caplog.set_level(logging.DEBUG, logger="lockscope")
    with InProcessAgent(http_setup=[setup_database_watchers(targets)]) as agent:
        for t in targets:

            def failed_twice(name: str = t.name) -> bool:
                return bool(status(agent, name)["failures"] >= 2)

            wait_until(failed_twice)
        assert "password authentication failed" in status(agent, "wrong")["error"]
        assert "pg_monitor" in status(agent, "nopriv")["error"]
        assert "PROCESS" in status(agent, "mynopriv")["error"]
        assert status(agent, "down")["error"]
        for t in targets:
            assert status(agent, t.name)["up"] is False
            assert up_metric(agent, t.name) == "0.0"
        assert agent.get("/healthz")["status"] == "ok"
        readyz = json.dumps(agent.get("/readyz"))
        with urllib.request.urlopen(f"{agent.http_url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("Wr0ng-pass-word", "n0priv-pw", "Unre4chable-pw", "s3cret-watch"):
        assert secret not in logs
        assert secret not in readyz
        assert secret not in metrics
    # Logged once per distinct error, not once per retry.
    wrong_logs = [r for r in caplog.records if "database wrong " in r.getMessage()]
    assert len(wrong_logs) == 1, wrong_logs


def test_database_down_restarted_and_slow(pg_watch_dsn: str) -> None:
    """A watched server that stops is shown down (its locks gone from the graph), is
    watched again when it is back, and a poll blocked behind a lock on pg_class is cut by
    the watcher's timeouts without holding up the agent."""
    from lockscope.testing.postgres_server import PostgresServer

    with PostgresServer() as pg:
        dsn = pg.create_monitor_role("lockscope_watch", "own-pw")
        target = parse_dsn(dsn, name="own")
        with InProcessAgent(http_setup=[setup_database_watchers([target])]) as agent:
            wait_until(lambda: status(agent, "own")["up"])
            pg.stop()
            wait_until(lambda: not status(agent, "own")["up"])
            assert up_metric(agent, "own") == "0.0"
            pg.start()
            wait_until(lambda: status(agent, "own")["up"], timeout=60.0)
            assert up_metric(agent, "own") == "1.0"
            import psycopg

            blocker = psycopg.connect(pg.dsn)
            try:
                blocker.execute("LOCK TABLE pg_class IN ACCESS EXCLUSIVE MODE")
                wait_until(lambda: not status(agent, "own")["up"])
                assert "timeout" in status(agent, "own")["error"].lower()
                assert agent.get("/healthz")["status"] == "ok"
            finally:
                blocker.rollback()
                blocker.close()
            wait_until(lambda: status(agent, "own")["up"], timeout=60.0)


def test_deadlock_the_server_breaks_resolves_with_that_reason(
    pg_agent: InProcessAgent, postgres_server: Any, workers: list[Worker]
) -> None:
    """With PostgreSQL's deadlock_timeout (2 s) above report_after, lockscope reports the
    ring first; then the server aborts a victim and the finding resolves as such."""
    dsn = app_dsn(postgres_server, deadlock_timeout="2s")
    members = [Worker("psycopg", dsn, pg_agent.otlp_url, f"victim-{i}") for i in range(2)]
    workers += members
    for i, w in enumerate(members):
        w.cmd("begin")
        w.cmd(f"sql SELECT pg_advisory_xact_lock(7900, {i})")
    for i, w in enumerate(members):
        w.bg(f"sql SELECT pg_advisory_xact_lock(7900, {(i + 1) % 2})")
    d = found_deadlock(pg_agent)
    answers = [w.read() for w in members]  # the server broke it: one error, one success
    assert sum("DeadlockDetected" in a for a in answers) == 1, answers

    def resolution() -> str | None:
        for x in pg_agent.get("/api/v1/deadlocks")["deadlocks"]:
            if x["id"] == d["id"] and x["status"] == "resolved":
                return str(x.get("resolution"))
        return None

    polling.wait_until(lambda: resolution() is not None, timeout=20.0)
    assert resolution() == "deadlock_victim"
    for w in members:
        w.cmd("commit")


def test_get_lock_ring_broken_by_mariadb_leaves_no_finding(
    my_agent: InProcessAgent, mariadb_server: Any, workers: list[Worker]
) -> None:
    """MariaDB's metadata-lock detector fails the GET_LOCK that closes a ring at once
    (error 1213), before any poll; what remains is an ordinary wait, which the agent shows
    (waiter and holder) and does not report as a deadlock."""
    url = str(mariadb_server.url)
    a = Worker("pymysql", url, my_agent.otlp_url, "ring-a")
    b = Worker("pymysql", url, my_agent.otlp_url, "ring-b")
    workers += [a, b]
    names = [f"ring-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    a.cmd(f"sql SELECT GET_LOCK('{names[0]}', 5)")
    b.cmd(f"sql SELECT GET_LOCK('{names[1]}', 5)")
    a.bg(f"sql SELECT GET_LOCK('{names[1]}', 30)")
    path = "/api/v1/locks/" + urllib.parse.quote(f"user_lock:{names[1]}", safe="")

    def waited() -> bool:
        try:
            return bool(my_agent.get(path)["waiters"])
        except AgentError as exc:
            if exc.status == 404:
                return False
            raise

    polling.wait_until(waited, timeout=20.0)
    b.send(f"sql SELECT GET_LOCK('{names[0]}', 30)")
    answer = b.read()
    assert "1213" in answer or "Deadlock" in answer, answer
    # a still waits for b's lock; b holds it and waits for nothing: no cycle.
    polling.wait_until(waited, timeout=20.0)
    assert not my_agent.get("/api/v1/deadlocks")["deadlocks"]
    b.cmd(f"sql SELECT RELEASE_LOCK('{names[1]}')")
    assert a.read().startswith("ok")


def test_long_transaction_is_no_stale_holder_and_dies_with_its_process(
    pg_watch_dsn: str, postgres_server: Any, workers: list[Worker]
) -> None:
    """A session binding is not a lock: a transaction open past max_hold is no stale
    holder, and the process's death orphans nothing (the database ends the session)."""
    from lockscope.agent.config import AgentConfig

    setup = setup_database_watchers([parse_dsn(pg_watch_dsn, name="pg")])
    config = AgentConfig(max_hold=0.5, heartbeat_timeout_floor=1.0)
    with InProcessAgent(config, http_setup=[setup]) as agent:
        app = Worker("psycopg", app_dsn(postgres_server), agent.otlp_url, "long-tx")
        workers.append(app)
        app.cmd("begin")
        app.cmd("sql SELECT 1")

        def bound() -> bool:
            return any(
                lock["name"] == f"session:{app.pid}" for lock in agent.get("/api/v1/locks")["locks"]
            )

        polling.wait_until(bound, timeout=20.0)
        # Well past max_hold, the binding is still reported by heartbeats: no finding.
        deadline = time.monotonic() + 1.5
        polling.wait_until(lambda: time.monotonic() > deadline, timeout=5.0)
        assert bound()
        assert not agent.get("/api/v1/stale-holders")["stale-holders"]
        app.close()
        polling.wait_until(lambda: not bound(), timeout=20.0)
        assert not agent.get("/api/v1/stale-holders")["stale-holders"]


def driver_dsn(driver: str, server: Any) -> str:
    """The DSN a worker of ``driver`` connects with (asyncpg takes URLs only)."""
    if not driver.startswith("asyncpg"):
        return app_dsn(server)
    return (
        f"postgresql://{server.user}@{server.host}:{server.port}/{server.dbname}"
        f"?options=-c%20deadlock_timeout%3D30s"
    )


ROW_HOLD = "UPDATE accounts SET balance = balance + 1 WHERE id = 1"
ADVISORY_HOLD = "SELECT pg_advisory_xact_lock(7601, 1)"


@pytest.mark.parametrize(
    ("driver", "hold_sql", "wait_sql", "lock_prefix"),
    [
        ("psycopg_named", ADVISORY_HOLD, "SELECT pg_advisory_lock(7601, 1)", "advisory:7601,1"),
        (
            "psycopg_async_named",
            ADVISORY_HOLD,
            "SELECT pg_advisory_lock(7601, 1)",
            "advisory:7601,1",
        ),
        ("psycopg2_named", ADVISORY_HOLD, "SELECT pg_advisory_lock(7601, 1)", "advisory:7601,1"),
        ("psycopg2_dict", ROW_HOLD, ROW_HOLD, "row:public.accounts@"),
        ("psycopg2_custom", ROW_HOLD, ROW_HOLD, "row:public.accounts@"),
        ("asyncpg_prepared", ROW_HOLD, ROW_HOLD, "row:public.accounts@"),
        ("asyncpg_prepared", ADVISORY_HOLD, "SELECT pg_advisory_lock(7601, 1)", "advisory:7601,1"),
        (
            "asyncpg_cursor",
            ROW_HOLD,
            "SELECT balance FROM accounts WHERE id = 1 FOR UPDATE",
            "row:public.accounts@",
        ),
    ],
    ids=[
        "psycopg-server-cursor",
        "psycopg-async-server-cursor",
        "psycopg2-named-cursor",
        "psycopg2-DictConnection",
        "psycopg2-own-connection-class",
        "asyncpg-prepared-executemany",
        "asyncpg-prepared-fetchval",
        "asyncpg-cursor",
    ],
)
def test_cross_layer_deadlock_through_other_statement_paths(
    pg_agent: InProcessAgent,
    postgres_server: Any,
    redis_server: Any,
    workers: list[Worker],
    driver: str,
    hold_sql: str,
    wait_sql: str,
    lock_prefix: str,
) -> None:
    """Process A (``driver``'s other way to run a statement) holds a redis-py lock and
    blocks in that statement; B holds the database lock in an open transaction and waits
    for the Redis lock: A's statement is a wait of A's actor, joined with the watcher's
    edge into the cycle."""
    name = f"xp-{uuid.uuid4().hex[:8]}"
    a = Worker(driver, driver_dsn(driver, postgres_server), pg_agent.otlp_url, "path-a")
    b = Worker("psycopg", app_dsn(postgres_server), pg_agent.otlp_url, "path-b")
    workers += [a, b]
    for w in (a, b):
        w.cmd(f"redis_lock {redis_server.url} {name}")
    b.cmd("begin")
    b.cmd("sql " + hold_sql)
    assert a.cmd("redis_acquire 5") == "True"
    a.bg("sql " + wait_sql)
    b.bg("redis_acquire 30")
    d = found_deadlock(pg_agent)
    by_service = {p["service"]: p for p in d["participants"]}
    assert sorted(by_service) == ["path-a", "path-b"], d
    assert by_service["path-a"]["waits_for"].startswith(lock_prefix), d
    assert name in by_service["path-a"]["holds"], d
    assert f"session:{a.pid}" in by_service["path-a"]["holds"], d
    assert by_service["path-b"]["waits_for"] == name, d
    assert any(h.startswith(lock_prefix) for h in by_service["path-b"]["holds"]), d


@pytest.mark.parametrize(
    ("driver", "row_class"),
    [("psycopg2_dict", "DictRow"), ("psycopg2_custom", "RealDictRow")],
)
def test_app_connection_classes_keep_their_rows_and_see_an_external_holder(
    pg_agent: InProcessAgent,
    postgres_server: Any,
    workers: list[Worker],
    driver: str,
    row_class: str,
) -> None:
    """Under the shim the app's own connection class still picks its cursor class (the
    rows are its rows), and its statement waiting behind a psql-like session is that
    actor's wait with the external session as the holder."""
    import psycopg

    app = Worker(driver, app_dsn(postgres_server), pg_agent.otlp_url, "own-class")
    workers.append(app)
    assert app.cmd("rowtype") == repr(row_class)
    external = psycopg.connect(app_dsn(postgres_server), application_name="adhoc-console")
    try:
        external.execute("UPDATE accounts SET balance = balance WHERE id = 2")
        app.bg("sql UPDATE accounts SET balance = balance + 1 WHERE id = 2")
        sid = external.info.backend_pid

        def waiter_and_holder() -> tuple[list[str], list[str]] | None:
            for lock in pg_agent.get("/api/v1/locks")["locks"]:
                if lock["name"].startswith("row:public.accounts@") and lock["waiter_count"]:
                    try:
                        detail = pg_agent.get(
                            "/api/v1/locks/" + urllib.parse.quote(lock["name"], safe="")
                        )
                    except AgentError as exc:
                        if exc.status == 404:
                            return None
                        raise
                    return (
                        [w["actor_id"] for w in detail["waiters"] if w["service"] == "own-class"],
                        [h["actor_id"] for h in detail["holders"]],
                    )
            return None

        polling.wait_until(
            lambda: (found := waiter_and_holder()) is not None and found[0] != [], timeout=20.0
        )
        found = waiter_and_holder()
        assert found is not None
        assert found[1] == [f"session:{sid}"], found
        assert not deadlocks(pg_agent)
    finally:
        external.rollback()
        external.close()
    assert app.read().startswith("ok")


def test_slow_poll_is_cut_by_the_statement_timeout(caplog: Any) -> None:
    """A poll that does not finish within the watcher's statement timeout is cancelled by
    the server (not left to run): here the poll is slow because another session holds
    pg_class in ACCESS EXCLUSIVE mode and the target's statement timeout (0.2 s) is below
    the watcher's lock_timeout (0.5 s), so it is the statement timeout that cuts it.  The
    fault is logged once however often it recurs, the database is shown down in /readyz
    and lockscope_agent_database_up, and the agent's event loop keeps serving."""
    from dataclasses import replace

    import psycopg

    from lockscope.testing.postgres_server import PostgresServer

    caplog.set_level(logging.WARNING, logger="lockscope")
    with PostgresServer() as pg:
        target = replace(
            parse_dsn(pg.create_monitor_role("lockscope_watch", "slow-pw"), name="slow"),
            statement_timeout=0.2,
        )
        with InProcessAgent(http_setup=[setup_database_watchers([target])]) as agent:
            wait_until(lambda: status(agent, "slow")["up"])
            blocker = psycopg.connect(pg.dsn)
            try:
                blocker.execute("LOCK TABLE pg_class IN ACCESS EXCLUSIVE MODE")
                wait_until(lambda: status(agent, "slow")["failures"] >= 3, timeout=60.0)
                st = status(agent, "slow")
                assert not st["up"], st
                assert "statement timeout" in st["error"], st
                assert up_metric(agent, "slow") == "0.0"
                # The loop answers while the watcher thread is stuck or backing off.
                assert agent.get("/healthz")["status"] == "ok"
                assert "locks" in agent.get("/api/v1/locks")
                cut = [r for r in caplog.records if "statement timeout" in r.getMessage()]
                assert len(cut) == 1, [r.getMessage() for r in cut]
                assert "slow-pw" not in cut[0].getMessage()
            finally:
                blocker.rollback()
                blocker.close()
            wait_until(lambda: status(agent, "slow")["up"], timeout=60.0)
            assert up_metric(agent, "slow") == "1.0"


def test_mariadb_watcher_session_has_a_statement_timeout(my_watch_dsn: str) -> None:
    """The MariaDB watcher's session runs under max_statement_time: a statement slower
    than it on that session is interrupted by the server (error 1969).  (No way was found
    to make MariaDB's information_schema poll itself slow on demand; this checks the
    session the poll runs on, with a slow statement of the test's own.)"""
    from dataclasses import replace

    import pymysql

    from lockscope.agent.db_mysql import MysqlDialect

    dialect = MysqlDialect()
    target = replace(parse_dsn(my_watch_dsn, name="my"), statement_timeout=0.3)
    conn = dialect.connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@max_statement_time")
            row = cur.fetchone()
            assert row is not None
            assert float(row[0]) == pytest.approx(0.3)
            with pytest.raises(pymysql.err.OperationalError) as failed:
                cur.execute("SELECT SLEEP(5) FROM information_schema.PROCESSLIST LIMIT 1")
            assert failed.value.args[0] == 1969, failed.value
            assert dialect.cut_by_timeout(conn, failed.value)
        assert dialect.poll(conn) is not None  # the session still polls afterwards
    finally:
        dialect.close(conn)
