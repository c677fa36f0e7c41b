"""The agent's database watcher against real PostgreSQL and MariaDB, with real instrumented
app processes (tests/db_worker.py) and a watcher role that has only the least privilege
(``pg_monitor``; ``PROCESS``), never a superuser.

Every assertion goes through the agent's JSON API.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import polling
from lockscope.agent.db_dsn import parse_dsn
from lockscope.agent.db_watch import setup_database_watchers
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
    """The first active deadlock (the graph and locks in the failure message if none)."""
    try:
        polling.wait_until(lambda: deadlocks(agent), timeout=timeout)
    except AssertionError:
        graph = agent.get("/api/v1/graph")
        locks = agent.get("/api/v1/locks")
        raise AssertionError(f"no deadlock; graph={graph} locks={locks}") from None
    return deadlocks(agent)[0]


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
