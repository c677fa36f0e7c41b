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

__all__ = ["kill", "pause", "paused", "resume", "wait_exited", "wait_stopped"]


def _signal(pid: int, sig: int, group: bool) -> None:
    if pid <= 0:
        # os.kill(0, ...) and negative pids address whole groups: never what a caller meant.
        raise ValueError(f"pid must be a positive process id, got {pid!r}")
    if group:
        os.killpg(pid, sig)
    else:
        os.kill(pid, sig)


def pause(pid: int, *, group: bool = False, wait: float | None = 5.0) -> None:
    """Freeze process ``pid`` with SIGSTOP, as a long GC pause or a VM stall would.

    SIGSTOP takes effect asynchronously: until the kernel has stopped every thread, one
    of them may still answer a request. So, with ``wait`` (seconds), return only once
    every thread of the process (or of the group) is stopped; :class:`TimeoutError` if
    that takes longer. Raises :class:`ProcessLookupError` when there is no such process.
    """
    _signal(pid, signal.SIGSTOP, group)
    if wait is not None:
        wait_stopped(pid, group=group, timeout=wait)


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
        wait_exited(pid, group=group, timeout=wait)


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


def _stat_fields(path: str) -> list[str] | None:
    """Fields of a /proc stat file after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            # The command name is parenthesised and may itself contain spaces or ')'.
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _group_members(pgrp: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(f"/proc/{entry}/stat")
            if fields is not None and int(fields[2]) == pgrp:
                members.append(int(entry))
    return members


def _all_threads_stopped(pids: list[int]) -> bool:
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # exited meanwhile
        for tid in tids:
            fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            # T: stopped, t: stopped while traced, Z/X: dead.
            if fields is not None and fields[0] not in ("T", "t", "Z", "X"):
                return False
    return True


def wait_stopped(pid: int, *, group: bool = False, timeout: float = 5.0) -> None:
    """Block until every thread of ``pid`` (or of its process group) is stopped.

    Needs Linux's /proc; elsewhere it returns at once.
    """
    if not os.path.isdir("/proc/self/task"):
        return
    deadline = time.monotonic() + timeout
    while not _all_threads_stopped(_group_members(pid) if group else [pid]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} not stopped after {timeout} s")
        time.sleep(0.001)


def _exited(pid: int) -> bool:
    if os.path.isdir("/proc/self"):
        fields = _stat_fields(f"/proc/{pid}/stat")
        # A zombie has exited; only its parent's wait() is missing.
        return fields is None or fields[0] in ("Z", "X")
    try:  # no /proc (not Linux): probe with signal 0, which cannot tell zombies apart
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


def wait_exited(pid: int, *, group: bool = False, timeout: float = 10.0) -> None:
    """Block until process ``pid`` (or every process of its group) has exited.

    Raises :class:`TimeoutError` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout

    def done() -> bool:
        if group and os.path.isdir("/proc/self"):
            return all(_exited(member) for member in _group_members(pid))
        return _exited(pid)

    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {timeout} s")
        time.sleep(0.01)
