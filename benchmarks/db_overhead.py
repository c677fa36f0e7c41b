"""What the database driver targets cost an uncontended statement: bare vs instrumented.

    .venv/bin/python benchmarks/db_overhead.py [--rounds 7] [--ops 2000] [--driver psycopg]

Starts a real PostgreSQL (lockscope.testing), then, in one process, times blocks of a
``SELECT 1`` loop and of a single-row ``UPDATE`` loop (autocommit: each statement its own
transaction), alternately bare and under the shim (``instrument()``/``uninstrument()``
between blocks, the order swapped every pair).  Each instrumented block is compared with
the bare block next to it (drift on a shared machine cancels out); the table shows the
median of those ratios (wall time per statement), their spread, the ratio of the fastest
blocks and of the first quartiles (robust to a loaded machine, whose interference only
ever adds time), and the caller thread's CPU time added per statement.  The shim's agent
endpoint is unreachable (nothing is sent for a statement shorter than report_after anyway).

``--driver`` is ``psycopg`` (default), ``psycopg2`` or ``pymysql`` (then against MariaDB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
driver, dsn, ops, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from lockscope.instrumentation import LockscopeInstrumentor
shim = LockscopeInstrumentor()
if driver == "psycopg":
    import psycopg
    connect = lambda: psycopg.connect(dsn, autocommit=True)
elif driver == "psycopg2":
    import psycopg2
    def connect():
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        return conn
else:
    import pymysql
    host, port, db = dsn.split(",")
    connect = lambda: pymysql.connect(host=host, port=int(port), user="root", database=db,
                                      autocommit=True)
out = {}
for name, sql in (("SELECT 1", "SELECT 1"),
                  ("UPDATE", "UPDATE bench SET v = v + 1 WHERE id = 1")):
    per = {False: [], True: []}
    cpu = {False: [], True: []}
    for b in range(blocks):
        for inst in ((False, True) if b % 2 == 0 else (True, False)):
            if inst:
                shim.instrument()
                time.sleep(0.05)  # let the reporter thread start before timing
            conn = connect()  # after instrument(): psycopg2 instruments at connect
            cur = conn.cursor()
            for _ in range(ops // 10):
                cur.execute(sql)
            t0 = time.perf_counter_ns(); c0 = time.thread_time_ns()
            for _ in range(ops):
                cur.execute(sql)
            per[inst].append((time.perf_counter_ns() - t0) / ops / 1e3)
            cpu[inst].append((time.thread_time_ns() - c0) / ops / 1e3)
            conn.close()
            if inst:
                shim.uninstrument()
    ratios = [i / b for b, i in zip(per[False], per[True])]
    out[name] = {"bare_us": statistics.median(per[False]),
                 "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                 "best_ratio": min(per[True]) / min(per[False]),
                 "p25_ratio": (statistics.quantiles(per[True], n=4)[0]
                               / statistics.quantiles(per[False], n=4)[0]),
                 "cpu_added_us": statistics.median(cpu[True]) - statistics.median(cpu[False])}
print(json.dumps(out))
"""


def run_child(driver: str, dsn: str, ops: int, blocks: int) -> dict[str, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
    env.update(
        {
            "LOCKSCOPE_ENDPOINT": "http://127.0.0.1:9",
            "LOCKSCOPE_METRICS_EXPORT": "none",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", CHILD, driver, dsn, str(ops), str(blocks)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="block pairs")
    parser.add_argument("--ops", type=int, default=500, help="statements per block")
    parser.add_argument("--driver", default="psycopg", choices=["psycopg", "psycopg2", "pymysql"])
    args = parser.parse_args()
    if args.driver == "pymysql":
        from lockscope.testing.mariadb_server import MariaDBServer

        server: object = MariaDBServer()
    else:
        from lockscope.testing.postgres_server import PostgresServer

        server = PostgresServer()
    with server as srv:  # type: ignore[attr-defined]
        if args.driver == "pymysql":
            srv.sql(
                f"CREATE TABLE `{srv.dbname}`.bench (id int PRIMARY KEY, v int) ENGINE=InnoDB;"
                f" INSERT INTO `{srv.dbname}`.bench VALUES (1, 0);"
            )
            dsn = f"{srv.host},{srv.port},{srv.dbname}"
        else:
            srv.psql(
                "CREATE TABLE bench (id int PRIMARY KEY, v int); INSERT INTO bench VALUES (1, 0)"
            )
            dsn = srv.dsn
        got = run_child(args.driver, dsn, args.ops, args.rounds)
        print(
            f"driver {args.driver}: one process, {args.rounds} alternating bare/instrumented "
            f"blocks of {args.ops} statements each (ratio: per block pair)"
        )
        print(f"{'statement':10} {'bare us/stmt':>13} {'ratio median':>13} {'ratio range':>15} "
              f"{'best/best':>10} {'p25/p25':>8} {'caller CPU added us':>20}")  # fmt: skip
        for name, v in got.items():
            print(
                f"{name:10} {v['bare_us']:13.1f} {v['ratio']:13.3f} "
                f"{v['min']:7.3f}..{v['max']:.3f} {v['best_ratio']:10.3f} {v['p25_ratio']:8.3f} "
                f"{v['cpu_added_us']:20.2f}"
            )


if __name__ == "__main__":
    main()
