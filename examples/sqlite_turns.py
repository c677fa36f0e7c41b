"""Two processes take turns on one lock kept in a SQLite file (no server needed).

    python examples/sqlite_turns.py [--rounds 4] [--db PATH]

Each worker process repeatedly acquires the DatabaseLock "turns", says that it holds it and
with which fencing token, works for a moment, and releases it. The tokens go up by one
at every hand-over, whichever process takes the lock: that is what a protected resource
would check to refuse a write from a holder whose lease has run out. Needs only the core
install (``pip install lockscope``): SQLite ships with Python.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import tempfile
import time
from pathlib import Path

from lockscope.locks import DatabaseLock


def worker(who: str, url: str, rounds: int) -> None:
    lock = DatabaseLock("turns", url, ttl=10)
    for _ in range(rounds):
        asked = time.monotonic()
        with lock:
            waited = time.monotonic() - asked
            print(
                f"{who:>5} (pid {os.getpid()}) holds {lock.name!r}"
                f" with fencing token {lock.fencing_token} after waiting {waited:.2f}s",
                flush=True,
            )
            time.sleep(0.3)  # the work the lock protects
        # Step back for a moment so that the other process gets its turn.
        time.sleep(random.uniform(0.05, 0.15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="turns per process (default 4)")
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = (args.db or Path(tmp) / "locks.db").resolve()
        url = f"sqlite:///{path}"  # three slashes and an absolute path
        print(f"lock 'turns' in {DatabaseLock('turns', url).namespace}", flush=True)
        workers = [
            multiprocessing.Process(target=worker, args=(who, url, args.rounds))
            for who in ("alice", "bob")
        ]
        for process in workers:
            process.start()
        for process in workers:
            process.join()
        if any(process.exitcode for process in workers):
            raise SystemExit("a worker failed")


if __name__ == "__main__":
    main()
