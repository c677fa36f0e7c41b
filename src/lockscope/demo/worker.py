"""One demo worker process: an ordinary app that takes lockscope locks, instrumented by the shim.

The demo starts several of these (``python -m lockscope.demo.worker ...``).  Each one
instruments itself the way any application would, before it creates a lock::

    from lockscope.instrumentation import LockscopeInstrumentor
    LockscopeInstrumentor().instrument()

and the shim reads its configuration (``LOCKSCOPE_ENDPOINT``, ``LOCKSCOPE_REPORT_AFTER``,
``LOCKSCOPE_HEARTBEAT``, ``OTEL_SERVICE_NAME``) from the environment the demo gives it.

The worker talks to the demo over its standard streams: it prints one JSON object per
line on stdout (``{"event": "holding", "lock": ..., "token": ...}``) and reads commands
from stdin (``go``: the barrier opened; ``release``: let go of what you hold).  SIGTERM
makes a blocked acquire give up, as a database aborts the transaction it chose as a
deadlock victim: the acquire raises, the locks held are released, the worker exits 3.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from lockscope.locks.base import Lock

__all__ = ["EXIT_GAVE_UP", "EXIT_TIMED_OUT", "GiveUp", "main"]

EXIT_GAVE_UP = 3
EXIT_TIMED_OUT = 4


class GiveUp(Exception):
    """Raised in the worker's main thread by SIGTERM: abandon the current acquire."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise GiveUp


def emit(event: str, **fields: Any) -> None:
    """One progress line for the demo (flushed at once: the demo reacts to it)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def make_lock(backend: str, url: str, name: str, ttl: float) -> Lock:
    """The lock the worker uses: ``DatabaseLock`` (SQLite) or ``RedisLock``."""
    if backend == "redis":
        from lockscope.locks.redis import RedisLock

        return RedisLock(name, url, ttl=ttl)
    from lockscope.locks.database import DatabaseLock

    return DatabaseLock(name, url, ttl=ttl)


def _wait_for_line(expected: str) -> bool:
    """Block until the demo writes ``expected`` on stdin; False if stdin closed first."""
    return any(line.strip() == expected for line in sys.stdin)


def _acquire(lock: Lock, timeout: float, announce: bool = True) -> bool:
    if announce:
        emit("waiting", lock=lock.name)
    if not lock.acquire(timeout=timeout):
        emit("timed-out", lock=lock.name)
        return False
    if announce:
        emit("acquired", lock=lock.name, token=lock.fencing_token)
    return True


def ring(args: argparse.Namespace) -> int:
    """Hold ``first``; when the barrier opens, want ``second`` too (the ring's next lock)."""
    first = make_lock(args.backend, args.url, args.first, args.ttl)
    second = make_lock(args.backend, args.url, args.second, args.ttl)
    if not _acquire(first, args.timeout, announce=False):
        return EXIT_TIMED_OUT
    try:
        emit("holding", lock=first.name, token=first.fencing_token)
        if not _wait_for_line("go"):
            return 0
        try:
            if not _acquire(second, args.timeout):
                return EXIT_TIMED_OUT
        except GiveUp:
            emit("gave-up", lock=second.name, releasing=first.name)
            return EXIT_GAVE_UP
        try:
            time.sleep(args.work)  # the work that needed both accounts
        finally:
            second.release()
        return 0
    finally:
        first.release()
        emit("released", lock=first.name)


def hold(args: argparse.Namespace) -> int:
    """Take ``first`` and keep it (renewing nothing) until told to release or killed."""
    lock = make_lock(args.backend, args.url, args.first, args.ttl)
    if not _acquire(lock, args.timeout, announce=False):
        return EXIT_TIMED_OUT
    emit("holding", lock=lock.name, token=lock.fencing_token, ttl=args.ttl)
    try:
        _wait_for_line("release")
    finally:
        lock.release()
        emit("released", lock=lock.name)
    return 0


def take(args: argparse.Namespace) -> int:
    """Wait for ``first``, then hold it for ``work`` seconds."""
    lock = make_lock(args.backend, args.url, args.first, args.ttl)
    try:
        if not _acquire(lock, args.timeout):
            return EXIT_TIMED_OUT
    except GiveUp:
        emit("gave-up", lock=lock.name)
        return EXIT_GAVE_UP
    time.sleep(args.work)
    lock.release()
    emit("released", lock=lock.name)
    return 0


ROLES = {"ring": ring, "hold": hold, "take": take}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lockscope.demo.worker")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--url", required=True, help="database or Redis URL")
    parser.add_argument("--first", required=True, help="the lock to take first")
    parser.add_argument("--second", help="ring: the lock wanted next")
    parser.add_argument("--ttl", type=float, default=30.0, help="lease length in seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="longest acquire wait")
    parser.add_argument("--work", type=float, default=0.2, help="seconds of work under lock")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Instrument this process, then play the role named on the command line."""
    args = _parser().parse_args(argv)
    if args.role == "ring" and not args.second:
        raise SystemExit("ring needs --second")
    # Exactly what an application does to be seen by lockscope (docs/instrumentation.md).
    from lockscope.instrumentation import LockscopeInstrumentor

    LockscopeInstrumentor().instrument()
    signal.signal(signal.SIGTERM, _on_sigterm)
    emit("started")
    try:
        code: int = ROLES[args.role](args)
    except GiveUp:
        code = EXIT_GAVE_UP
    emit("exiting", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
