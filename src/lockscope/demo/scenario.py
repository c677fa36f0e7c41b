"""The demo's story: a ring of three workers deadlocks, then a lock holder crashes.

Both problems are real (real processes, real locks on a real backend) and both are found
by the agent from what the workers' shims report; the demo only reads the agent's JSON
API, as ``lockscope status`` or the web view would.
"""

from __future__ import annotations

import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lockscope.demo.agent_link import AgentLink
from lockscope.demo.console import Console, deadlock_table, stale_table
from lockscope.demo.processes import Message, Worker, WorkerPool

__all__ = ["DemoFailed", "Round", "RoundResult"]

T = TypeVar("T")

RING = (
    ("transfer-1", "account:alice"),
    ("transfer-2", "account:bob"),
    ("transfer-3", "account:carol"),
)
STALE_LOCK = "report:daily"
STALE_LEASE = 4.0
"""Seconds of the crashed holder's lease: after it, the lock is free again."""
START_TIMEOUT = 30.0
"""Worker start-up (the interpreter, the shim, OpenTelemetry) on a loaded machine."""
FIND_TIMEOUT = 15.0
"""How long the demo waits for the agent to report a finding before it gives up."""


class DemoFailed(Exception):
    """Something the demo waited for did not happen; the message says what."""


@dataclass
class RoundResult:
    """What one round showed."""

    deadlock: dict[str, Any] | None = None
    deadlock_latency: float | None = None
    deadlock_resolved: bool = False
    stale: dict[str, Any] | None = None
    stale_latency: float | None = None
    stale_resolved: bool = False

    @property
    def ok(self) -> bool:
        """Both findings were seen and both resolved."""
        return (
            self.deadlock is not None
            and self.stale is not None
            and self.deadlock_resolved
            and self.stale_resolved
        )


class Round:
    """One run of both scenarios against ``agent`` with workers from ``pool``."""

    def __init__(
        self,
        agent: AgentLink,
        pool: WorkerPool,
        console: Console,
        *,
        backend: str,
        url: str,
        number: int = 1,
        find_timeout: float = FIND_TIMEOUT,
        linger: float = 0.0,
    ) -> None:
        self.agent = agent
        self.pool = pool
        self.console = console
        self.backend = backend
        self.url = url
        self.suffix = "" if number == 1 else f"#{number}"
        self.find_timeout = find_timeout
        self.linger = linger
        self.lease = max(STALE_LEASE, linger)
        self.result = RoundResult()

    # -- plumbing --------------------------------------------------------------------------
    def _argv(self, role: str, first: str, *extra: str) -> list[str]:
        return [role, "--backend", self.backend, "--url", self.url, "--first", first, *extra]

    def _show(self, message: Message) -> None:
        w, f = message.worker, message.fields
        text = {
            "holding": f"{w.name} (pid {w.pid}) holds {f.get('lock')}"
            f" (fencing token {f.get('token')})",
            "waiting": f"{w.name} waits for {f.get('lock')}",
            "acquired": f"{w.name} acquired {f.get('lock')} (fencing token {f.get('token')})",
            "gave-up": f"{w.name} gave up waiting for {f.get('lock')}",
            "released": f"{w.name} released {f.get('lock')}",
            "timed-out": f"{w.name} timed out waiting for {f.get('lock')}",
        }.get(message.event)
        if text is not None:
            self.console.step(text)

    def pump(self, timeout: float) -> None:
        """Show worker messages arriving within ``timeout`` seconds (at least one wait)."""
        message = self.pool.next_message(timeout)
        while message is not None:
            self._show(message)
            message = self.pool.next_message(0)

    def until(
        self, check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
    ) -> T:
        """Poll ``check`` (showing worker messages meanwhile) until it returns a value."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump(0)
            result = check()
            if result is not None and result is not False:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoFailed(f"{what}: not seen within {timeout:.0f} s")
            self.pump(min(interval, remaining))

    def _finding(
        self, check: Callable[[], dict[str, Any] | None], kind: str, since: float
    ) -> tuple[dict[str, Any], float]:
        """The agent's ``kind`` finding once ``check`` sees it, and the seconds from
        ``since`` (the moment the fault was made) until then."""
        found = self.until(check, self.find_timeout, f"the agent's {kind} finding")
        return found, time.monotonic() - since

    def event(self, worker: Worker, event: str, timeout: float) -> Message:
        """Wait for ``worker`` to report ``event``; fail early if it exits first."""

        def check() -> Message | None:
            found = worker.seen(event)
            if found is None and worker.seen("exit") is not None:
                tail = worker.stderr_tail()
                raise DemoFailed(
                    f"worker {worker.name} exited (code {worker.proc.poll()}) before {event!r}"
                    + (f"; its stderr ends with:\n{tail}" if tail else "")
                )
            return found

        return self.until(check, timeout, f"{worker.name}: {event}")

    # -- scenario 1: a deadlock ------------------------------------------------------------
    def deadlock(self) -> None:
        """Three workers each hold one account and want the next one's: a ring."""
        c = self.console
        c.heading("1. A deadlock: three transfers, each holding one account and wanting the next")
        workers = []
        for i, (service, lock) in enumerate(RING):
            wanted = RING[(i + 1) % len(RING)][1]
            workers.append(
                self.pool.start(
                    service + self.suffix,
                    self._argv("ring", lock, "--second", wanted, "--ttl", "60"),
                )
            )
        for w in workers:
            self.event(w, "holding", START_TIMEOUT)
        c.step("all three hold their first account; each now asks for the next one")
        closed = time.monotonic()
        for w in workers:
            w.send("go")
        pids = {w.pid for w in workers}
        found, latency = self._finding(
            lambda: self._deadlock_of(pids, active=True), "deadlock", closed
        )
        self.result.deadlock, self.result.deadlock_latency = found, latency
        c.step(
            f"DEADLOCK {found.get('id')} found by the agent, {latency:.2f} s after the ring"
            f" closed: locks {', '.join(map(str, found.get('locks') or []))}"
        )
        c.block(deadlock_table(found))
        victim = found.get("victim")
        c.step(f"suggested victim: {victim} (the youngest waiter, as PostgreSQL and InnoDB pick)")
        target = self._victim_worker(found, workers)
        self._linger("the deadlock stays in place")
        c.step(
            f"resolving: {target.name} gives up its acquire (SIGTERM), as a database aborts"
            " the victim's transaction"
        )
        target.signal(signal.SIGTERM)
        self.event(target, "gave-up", START_TIMEOUT)
        resolved = self.until(
            lambda: self._resolved(found, "/api/v1/deadlocks", "deadlocks"),
            self.find_timeout,
            f"deadlock {found.get('id')} resolved",
        )
        self.result.deadlock_resolved = True
        c.step(f"deadlock {found.get('id')} resolved ({resolved.get('resolution') or 'ended'})")
        for w in workers:
            self.event(w, "exit", START_TIMEOUT)
        c.step("the other two transfers completed")

    def _linger(self, what: str) -> None:
        """Leave the problem in place for ``linger`` seconds (Enter on a terminal ends it
        early), so it can be seen in the web view, ``lockscope status`` and Grafana."""
        if self.linger <= 0:
            return
        interactive = sys.stdin.isatty()
        hint = "; press Enter to go on" if interactive else ""
        self.console.step(f"{what} for {self.linger:g} s: see it at {self.agent.http_url}/{hint}")
        deadline = time.monotonic() + self.linger
        while (remaining := deadline - time.monotonic()) > 0:
            if interactive:
                ready, _, _ = select.select([sys.stdin], [], [], min(0.1, remaining))
                if ready:
                    sys.stdin.readline()
                    return
            self.pump(0 if interactive else min(0.1, remaining))

    def _deadlock_of(self, pids: set[int], *, active: bool) -> dict[str, Any] | None:
        items = self.agent.findings("/api/v1/deadlocks", "deadlocks", "active" if active else "all")
        for item in items:
            members = {p.get("pid") for p in item.get("participants") or []}
            if members and members <= pids:
                return item
        return None

    def _victim_worker(self, deadlock: dict[str, Any], workers: list[Worker]) -> Worker:
        victim = deadlock.get("victim")
        by_pid = {w.pid: w for w in workers}
        for p in deadlock.get("participants") or []:
            if p.get("actor") == victim and p.get("pid") in by_pid:
                return by_pid[p["pid"]]
        raise DemoFailed(f"the deadlock's victim {victim!r} is not one of the demo's workers")

    def _resolved(self, finding: dict[str, Any], path: str, key: str) -> dict[str, Any] | None:
        for item in self.agent.findings(path, key):
            if item.get("id") == finding.get("id") and item.get("status") == "resolved":
                return item
        return None

    # -- scenario 2: a stale holder --------------------------------------------------------
    def stale_holder(self) -> None:
        """A worker crashes while holding a lease; another waits until the lease runs out."""
        c = self.console
        c.heading("2. A stale holder: the report job crashes while it holds the report lock")
        holder = self.pool.start(
            "nightly-report" + self.suffix,
            self._argv("hold", STALE_LOCK, "--ttl", str(self.lease)),
        )
        self.event(holder, "holding", START_TIMEOUT)
        retry = self.pool.start(
            "report-retry" + self.suffix, self._argv("take", STALE_LOCK, "--timeout", "60")
        )
        self.event(retry, "waiting", START_TIMEOUT)
        self.until(
            lambda: self._agent_sees_hold(holder),
            self.find_timeout,
            f"the agent hearing {holder.name}'s heartbeat and its hold of {STALE_LOCK}",
        )
        c.step(f"crashing {holder.name} (SIGKILL) while it holds {STALE_LOCK}")
        holder.signal(signal.SIGKILL)
        crashed = time.monotonic()
        found, latency = self._finding(lambda: self._stale_of(holder), "stale-holder", crashed)
        self.result.stale, self.result.stale_latency = found, latency
        c.step(
            f"STALE HOLDER found by the agent, {latency:.2f} s after the crash"
            " (its heartbeats stopped while it held the lock)"
        )
        c.block(stale_table([found]))
        c.step(
            f"{retry.name} keeps waiting: the lease of the dead holder ends"
            f" {self.lease:.0f} s after it was taken"
        )
        self.event(retry, "acquired", START_TIMEOUT)
        resolved = self.until(
            lambda: self._resolved(found, "/api/v1/stale-holders", "stale_holders"),
            self.find_timeout,
            "the stale holder resolved",
        )
        self.result.stale_resolved = True
        c.step(f"stale holder resolved ({resolved.get('resolution') or 'ended'})")
        self.event(retry, "exit", START_TIMEOUT)

    def _agent_sees_hold(self, holder: Worker) -> bool:
        # The hold, and a heartbeat: only a process known to heartbeat can be declared
        # dead quickly (one never heard from gets the long silent-process timeout).
        for proc in self.agent.get("/api/v1/processes").get("processes") or []:
            if proc.get("pid") == holder.pid and proc.get("service") == holder.name:
                return bool(proc.get("last_heartbeat")) and (proc.get("holds") or 0) > 0
        return False

    def _stale_of(self, holder: Worker) -> dict[str, Any] | None:
        # Any status: on a slow machine the lease may run out, and the finding resolve,
        # between two polls; it was found all the same.
        items = self.agent.findings("/api/v1/stale-holders", "stale_holders")
        return next(
            (i for i in items if i.get("pid") == holder.pid and i.get("service") == holder.name),
            None,
        )

    # -- both ------------------------------------------------------------------------------
    def run(self) -> RoundResult:
        """Play both scenarios; raises :class:`DemoFailed` on the first thing not seen."""
        self.deadlock()
        self.stale_holder()
        return self.result
