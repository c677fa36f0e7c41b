"""The database watcher: what a poll costs the agent and the database, and how soon a
cross-layer deadlock is found.

    .venv/bin/python benchmarks/db_watch.py [--polls 200] [--waiters 0 10 50] [--rounds 5]

Starts a real PostgreSQL and MariaDB (lockscope.testing) and, for each number of waiting
sessions (``--waiters``: sessions blocked on one row held by another), times ``--polls``
polls of the watcher's dialect as the agent runs them (least-privilege role):

* round trip per poll (wall), and the agent's CPU per poll (the polling thread's CPU time:
  driver, JSON decoding, snapshot building and heartbeat entries);
* the database's CPU per poll: PostgreSQL, the watcher's backend process
  (``/proc/<pid>/stat``); MariaDB, the whole ``mariadbd`` process while nothing else runs.

Then ``--rounds`` times a cross-layer deadlock on PostgreSQL (thread A holds a redis-py
lock and blocks in an ``UPDATE``; thread B holds the row in an open transaction and waits
for the Redis lock) in this process under the shim, with an in-process agent watching the
database (default cadence), and reports the time from the closing acquire to the first API
answer listing the deadlock.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from typing import Any


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def block_row(connect: Any, n: int, update: str, begin: str) -> list[Any]:
    """A holder of the row and ``n`` sessions waiting for it (threads); returns them."""
    holder = connect()
    holder.cursor().execute(begin)
    holder.cursor().execute(update)
    conns = [holder]
    for _ in range(n):
        c = connect()
        conns.append(c)
        threading.Thread(target=_quiet, args=(c, update), daemon=True).start()
    return conns


def _quiet(conn: Any, sql: str) -> None:
    with contextlib.suppress(Exception):  # the connection is closed under it at the end
        conn.cursor().execute(sql)


def poll_costs(dialect: Any, conn: Any, polls: int, server_cpu: Any) -> tuple[float, float, float]:
    for _ in range(10):
        dialect.poll(conn)
    c0, s0, t0 = time.thread_time(), server_cpu(), time.perf_counter()
    for _ in range(polls):
        dialect.poll(conn)
    wall = (time.perf_counter() - t0) / polls
    return wall * 1e3, (time.thread_time() - c0) / polls * 1e3, (server_cpu() - s0) / polls * 1e3


def bench_polls(args: argparse.Namespace) -> None:
    from lockscope.agent.db_dsn import parse_dsn
    from lockscope.agent.db_mysql import MysqlDialect
    from lockscope.agent.db_postgres_conn import PostgresDialect
    from lockscope.testing.mariadb_server import MariaDBServer
    from lockscope.testing.postgres_server import PostgresServer

    print("poll cost (ms per poll; shared machine, labelled figures only)")
    print(f"{'database':10} {'waiters':>7} {'round trip':>11} {'agent CPU':>10} {'db CPU':>8}")
    with PostgresServer() as pg:
        import psycopg

        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        target = parse_dsn(pg.create_monitor_role(), name="pg")
        for n in args.waiters:
            conns = block_row(
                lambda: psycopg.connect(pg.dsn, autocommit=True), n,
                "UPDATE t SET v = v + 1 WHERE id = 1", "BEGIN",
            )  # fmt: skip
            time.sleep(0.5 + n * 0.01)
            dialect = PostgresDialect()
            conn = dialect.connect(target)
            pid = conn.info.backend_pid
            dialect.poll(conn)
            wall, agent, db = poll_costs(dialect, conn, args.polls, lambda pid=pid: proc_cpu_s(pid))
            print(f"{'postgresql':10} {n:7d} {wall:11.3f} {agent:10.3f} {db:8.3f}")
            dialect.close(conn)
            for c in conns:
                c.close()
    with MariaDBServer() as my:
        import pymysql

        target = parse_dsn(my.create_monitor_user(), name="maria")
        my.sql(
            f"CREATE TABLE `{my.dbname}`.t (id int PRIMARY KEY, v int) ENGINE=InnoDB;"
            f" INSERT INTO `{my.dbname}`.t VALUES (1, 0);"
        )

        def connect() -> Any:
            return pymysql.connect(
                host=my.host, port=my.port, user="root", database=my.dbname, autocommit=True
            )

        for n in args.waiters:
            conns = block_row(connect, n, "UPDATE t SET v = v + 1 WHERE id = 1", "BEGIN")
            time.sleep(0.5 + n * 0.01)
            maria = MysqlDialect()
            my_conn = maria.connect(target)
            wall, agent, db = poll_costs(maria, my_conn, args.polls, lambda: proc_cpu_s(my.pid))
            print(f"{'mariadb':10} {n:7d} {wall:11.3f} {agent:10.3f} {db:8.3f}")
            maria.close(my_conn)
            for c in conns:
                c.close()


def bench_latency(args: argparse.Namespace) -> None:
    os.environ.update(
        {
            "LOCKSCOPE_HEARTBEAT": "1.0",
            "LOCKSCOPE_METRICS_EXPORT": "none",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
    )
    from lockscope.agent.db_dsn import parse_dsn
    from lockscope.agent.db_watch import setup_database_watchers
    from lockscope.testing.agent import InProcessAgent
    from lockscope.testing.postgres_server import PostgresServer
    from lockscope.testing.redis_server import RedisServer

    with PostgresServer() as pg, RedisServer() as rs:
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        target = parse_dsn(pg.create_monitor_role(), name="pg")
        with InProcessAgent(http_setup=[setup_database_watchers([target])]) as agent:
            os.environ["LOCKSCOPE_ENDPOINT"] = agent.otlp_url
            from lockscope.instrumentation import LockscopeInstrumentor

            LockscopeInstrumentor().instrument()
            times = [one_round(agent, pg, rs, r) for r in range(args.rounds)]
            print(
                f"cross-layer deadlock (redis-py + PostgreSQL row), detection after the cycle "
                f"closed: median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
                f"max {max(times):.3f} s over {len(times)} rounds"
            )


def one_round(agent: Any, pg: Any, rs: Any, r: int) -> float:
    """One cross-layer deadlock; returns the seconds from its closing to the finding."""
    import psycopg
    import redis

    name = f"bench-xl-{r}"
    a_db = psycopg.connect(pg.dsn, autocommit=True)
    b_db = psycopg.connect(pg.dsn, autocommit=True)
    a_lock = redis.Redis.from_url(rs.url).lock(name, timeout=30)
    b_lock = redis.Redis.from_url(rs.url).lock(name, timeout=30)
    b_ready, a_ready = threading.Event(), threading.Event()
    closed: list[float] = []

    def a() -> None:
        a_lock.acquire()
        a_ready.set()
        b_ready.wait()
        with contextlib.suppress(Exception):  # cancelled below, to end the round
            a_db.execute("UPDATE t SET v = v - 1 WHERE id = 1")
        a_lock.release()

    def b() -> None:
        b_db.execute("BEGIN")
        b_db.execute("UPDATE t SET v = v + 1 WHERE id = 1")
        b_ready.set()
        a_ready.wait()
        time.sleep(0.05)  # A is in its UPDATE: B's acquire closes the cycle
        closed.append(time.monotonic())
        b_lock.acquire(blocking_timeout=10)
        b_db.execute("ROLLBACK")

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start()
    tb.start()
    while not agent.get("/api/v1/deadlocks?status=active")["deadlocks"]:
        time.sleep(0.005)
    took = time.monotonic() - closed[0]
    # Break it the way the server's lock timeout would: cancel A's UPDATE.
    pg.psql(f"SELECT pg_cancel_backend({a_db.info.backend_pid})")
    ta.join()
    tb.join()
    a_db.close()
    b_db.close()
    while agent.get("/api/v1/deadlocks?status=active")["deadlocks"]:
        time.sleep(0.01)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--waiters", type=int, nargs="*", default=[0, 10, 50])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-polls", action="store_true")
    args = parser.parse_args()
    if not args.skip_polls:
        bench_polls(args)
    if args.rounds:
        bench_latency(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
