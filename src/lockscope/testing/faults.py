"""Fault injection for any process: pause (SIGSTOP), resume (SIGCONT), kill (SIGKILL).

These work on any pid: a lock server started by :mod:`lockscope.testing`, or a worker
process of your own that holds a lock (the "holder paused past its lease" scenario)::

    from lockscope.testing import faults

    with faults.paused(worker.pid):
        ...  # the worker is frozen: its lease runs out, another process takes the lock
    # the worker runs again and must discover that it lost the lock

With ``group=True`` the signal goes to the whole process group whose leader is ``pid``
(servers started by :mod:`lockscope.testing` lead their own group), so that a server's
worker processes (PostgreSQL backends, for instance) are frozen or killed with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["kill", "pause", "paused", "resume", "wait_exited"]


def _signal(pid: int, sig: int, group: bool) -> None:
    if pid <= 0:
        # os.kill(0, ...) and negative pids address whole groups: never what a caller meant.
        raise ValueError(f"pid must be a positive process id, got {pid!r}")
    if group:
        os.killpg(pid, sig)
    else:
        os.kill(pid, sig)


def pause(pid: int, *, group: bool = False) -> None:
    """Freeze process ``pid`` with SIGSTOP, as a long GC pause or a VM stall would.

    Raises :class:`ProcessLookupError` when there is no such process.
    """
    _signal(pid, signal.SIGSTOP, group)


def resume(pid: int, *, group: bool = False) -> None:
    """Let a process frozen by :func:`pause` run again (SIGCONT)."""
    _signal(pid, signal.SIGCONT, group)


def kill(pid: int, *, group: bool = False, wait: float | None = 10.0) -> None:
    """Kill process ``pid`` with SIGKILL, as a crash or an OOM kill would.

    With ``wait`` (seconds), block until the process has exited (or is a zombie
    awaiting its parent), raising :class:`TimeoutError` if it has not by then.
    ``wait=None`` returns at once.
    """
    _signal(pid, signal.SIGKILL, group)
    if wait is not None:
        wait_exited(pid, timeout=wait)


@contextmanager
def paused(pid: int, *, group: bool = False) -> Iterator[None]:
    """Context manager: the process is frozen inside the block and resumed on exit.

    The process is resumed even when the block raises.
    """
    pause(pid, group=group)
    try:
        yield
    finally:
        # Killed while paused: nothing left to resume.
        with contextlib.suppress(ProcessLookupError):
            resume(pid, group=group)


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # The state field follows the parenthesised command name, which may hold spaces.
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    except OSError:
        # No /proc (not Linux): fall back to probing with signal 0.
        try:
            os.kill(pid, 0)
        except OSError as exc:
            return exc.errno == errno.ESRCH
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return state in ("Z", "X")


def wait_exited(pid: int, timeout: float = 10.0) -> None:
    """Block until process ``pid`` has exited; :class:`TimeoutError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {timeout} s")
        time.sleep(0.01)
