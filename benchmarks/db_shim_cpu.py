"""What the shim's statement wrapper costs by itself, without the statement's round trip.

    .venv/bin/python benchmarks/db_shim_cpu.py [--blocks 20] [--calls 20000]

Starts a real PostgreSQL (lockscope.testing) and opens a real psycopg 3 cursor under the
shim, then wraps a no-op in place of ``Cursor.execute`` exactly as the psycopg target
wraps the real one, so what is timed is the wrapper's own work: the suppression check,
the session binding's update and the driver's transaction-status read.  Prints the
caller thread's CPU time per call, bare no-op vs wrapped no-op (alternating blocks,
medians: a loaded machine only adds time, and CPU time leaves out waiting for a core),
and the function calls per statement counted by cProfile (independent of the load).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=20, help="block pairs")
    parser.add_argument("--calls", type=int, default=20000, help="calls per block")
    args = parser.parse_args()
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
        os.environ[name] = "none"
    os.environ.update(LOCKSCOPE_ENDPOINT="http://127.0.0.1:9", LOCKSCOPE_METRICS_EXPORT="none")

    import psycopg

    from lockscope.instrumentation import LockscopeInstrumentor, db_psycopg
    from lockscope.testing.postgres_server import PostgresServer

    with PostgresServer() as srv:
        shim = LockscopeInstrumentor()
        shim.instrument()
        try:
            conn = psycopg.connect(srv.dsn, autocommit=True)
            cur = conn.cursor()

            def noop(self: Any, *a: Any, **k: Any) -> Any:
                return self

            wrapped = db_psycopg._sync_execute(noop)
            cpu: dict[str, list[float]] = {"bare": [], "wrapped": []}
            for _ in range(args.blocks):
                for label, fn in (("bare", noop), ("wrapped", wrapped)):
                    c0 = time.thread_time_ns()
                    for _ in range(args.calls):
                        fn(cur, "SELECT 1")
                    cpu[label].append((time.thread_time_ns() - c0) / args.calls)
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(1000):
                wrapped(cur, "SELECT 1")
            profile.disable()
            # pstats keeps {(file, line, name): (calls, primitive calls, ...)} undeclared.
            counted: dict[tuple[str, int, str], tuple[Any, ...]] = vars(pstats.Stats(profile))[
                "stats"
            ]
            calls = sum(v[1] for v in counted.values()) / 1000
            frames = sum(v[1] for k, v in counted.items() if not k[0].startswith("~")) / 1000
            conn.close()
        finally:
            shim.uninstrument()
    bare, inst = statistics.median(cpu["bare"]), statistics.median(cpu["wrapped"])
    added = inst - bare
    print(f"caller CPU per call: bare {bare:.0f} ns, wrapped {inst:.0f} ns, added {added:.0f} ns")
    print(f"calls per statement (cProfile): {calls:.0f}, of them Python frames {frames:.0f}")
    print("(the frames include the no-op standing for the statement)")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
