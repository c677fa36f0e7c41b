"""What the agent keeps across a restart (in :class:`~lockscope.agent.durable.DurableFile`),
and how it comes back.

Kept:

* every lock-order pair (the shims send each once per process lifetime);
* the holds of every process that has any (at most ``MAX_SAVED_HOLDS``: dead processes'
  first, then the oldest), with the process's liveness: a dead process will never report
  its holds again, and a live one may die while the agent is down;
* the active one-shot findings (violations, lost locks) with their expiry.

Waits are not kept: a waiting process is alive, and its next heartbeat reports them.

Restored at start-up, before the agent reports ready, by replaying what was kept through
the store's own handlers: each pair as its ``lockscope.order.pair`` event (so the same
inversions are found again, under the same ids), each process's holds as a heartbeat, then
the processes that were dead are marked gone again (their orphaned-holder findings come
back at once, and a lease that ended meanwhile ends them), and the one-shot findings are put
back as they were.  A process that was alive and has died meanwhile is presumed dead after
its usual liveness timeout, as if the agent had never stopped.

Saving runs every ``interval`` seconds when something changed; the SQLite work happens on
the file's background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Final

from lockscope import events as ev
from lockscope.agent.background import BackgroundTask
from lockscope.agent.durable import DurableFile, Saved
from lockscope.agent.findings import Finding
from lockscope.agent.graph import Hold, Process
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.store_changes import (
    HoldAdded,
    HoldDropped,
    ProcessDied,
    ProcessForgotten,
    ProcessRevived,
)

if TYPE_CHECKING:
    from lockscope.agent.state import AgentState

__all__ = ["MAX_SAVED_HOLDS", "DurableSync"]

log = logging.getLogger("lockscope.agent")

MAX_SAVED_HOLDS: Final = 20_000
"""Holds kept per snapshot (bounds the cost of a save under a flood of holds)."""


def _hold_entry(h: Hold) -> dict[str, Any]:
    lock = h.lock
    entry: dict[str, Any] = {
        ev.ATTR_ACTOR_ID: h.actor.actor_id,
        ev.ATTR_SINCE: h.since_ns,
        ev.ATTR_LOCK_SYSTEM: lock.system,
        ev.ATTR_LOCK_NAMESPACE: lock.namespace,
        ev.ATTR_LOCK_NAME: lock.name,
        ev.ATTR_LOCK_TEMPLATE: lock.template,
        ev.ATTR_LOCK_MODE: h.mode,
    }
    if h.actor.name:
        entry[ev.ATTR_ACTOR_NAME] = h.actor.name
    optional = {
        ev.ATTR_LOCK_FIFO: lock.fifo or None,
        ev.ATTR_LOCK_REENTRANT: lock.reentrant or None,
        ev.ATTR_LOCK_MAX_LEASES: lock.max_leases,
        ev.ATTR_LOCK_PROCESS_BOUND: lock.process_bound or None,
        ev.ATTR_LOCK_EXPIRES_AT: h.expires_at_ns,
        ev.ATTR_LOCK_TOKEN: h.token,
        ev.ATTR_LOCK_OWNER: h.owner,
        ev.ATTR_LOCK_SESSION_TIMEOUT: (
            h.actor.process.session_ns / 1e9
            if h.actor.process.session_ns and lock.system == "zookeeper"
            else None
        ),
    }
    entry.update({k: v for k, v in optional.items() if v is not None})
    return entry


def _process_doc(proc: Process, holds: list[Hold]) -> dict[str, Any]:
    info = proc.info
    return {
        "service": info.service,
        "host": info.host,
        "pid": info.pid,
        "instance": info.instance,
        "alive": proc.alive,
        "interval": proc.interval,
        "last_seen_ns": proc.last_seen_ns,
        "asserted_ns": max(h.asserted_ns for h in holds),
        "holds": [_hold_entry(h) for h in holds],
    }


def _finding_doc(f: Finding) -> dict[str, Any]:
    return dataclasses.asdict(f)


def _finding(doc: dict[str, Any]) -> Finding:
    for key in ("templates", "systems", "services"):
        doc[key] = tuple(doc.get(key) or ())
    return Finding(**doc)


class DurableSync:
    """Saves the state's durable part periodically and restores it at start-up."""

    def __init__(self, state: AgentState, file: DurableFile, interval: float = 1.0) -> None:
        self.state = state
        self.file = file
        self.interval = interval
        self._dirty = True
        self._pairs_saved = 0
        self._saver = BackgroundTask("lockscope-durable")
        for kind in (HoldAdded, HoldDropped, ProcessDied, ProcessRevived, ProcessForgotten):
            state.subscribe(kind, self._changed)
        state.subscribe_findings(self._finding_changed)
        self.restored: dict[str, int] = {}
        """What the last :meth:`restore` brought back (pairs, processes, holds, findings)."""

    def _changed(self, _change: object) -> None:
        self._dirty = True

    def _finding_changed(self, f: Finding) -> None:
        if f.expires_at_ns is not None:
            self._dirty = True

    # -- restore ------------------------------------------------------------------------
    async def restore(self) -> None:
        """Replay what the previous run kept (call before serving)."""
        saved = await self.file.load()
        try:
            self._replay(saved)
        except Exception:
            # A bad file must not keep the agent from starting: it rebuilds from reports.
            log.exception("could not restore the agent state from %s", self.file.path)

    def _replay(self, saved: Saved) -> None:
        state = self.state
        now = state.now_ns = state._clock()
        for doc in saved.pairs:
            info = ProcessInfo(doc["service"], doc.get("host", ""), doc["pid"], doc["instance"])
            with contextlib.suppress(ValueError):
                state.apply(Event(ev.EVENT_ORDER_PAIR, doc["seen_at_ns"], info, doc["attrs"]), now)
        self._pairs_saved = len(state.order.graph.pairs)
        gone: list[tuple[Process, int]] = []
        holds = 0
        for doc in saved.processes:
            info = ProcessInfo(doc["service"], doc["host"], doc["pid"], doc["instance"])
            attrs = {
                ev.ATTR_HOLDS: doc["holds"],
                ev.ATTR_WAITS: [],
                ev.ATTR_HEARTBEAT_INTERVAL: doc.get("interval") or 1.0,
            }
            with contextlib.suppress(ValueError):
                state.apply(Event(ev.EVENT_HEARTBEAT, doc["asserted_ns"], info, attrs), now)
            proc = state.procs.get(info.instance)
            if proc is None:
                continue
            holds += len(doc["holds"])
            if not doc["alive"]:
                gone.append((proc, int(doc["last_seen_ns"])))
        for proc, last_seen in gone:
            proc.last_seen_ns = last_seen  # session leases run from the holder's last word
            state.process_gone(proc)
        restored_findings = 0
        for doc in saved.findings:
            f = _finding(doc)
            if f.expires_at_ns is not None and f.expires_at_ns <= now:
                continue
            if state.finding_store.add(f) and f.expires_at_ns is not None:
                state.finding_store.expire_later(f.id, f.expires_at_ns)
                restored_findings += 1
        state.tick(now)
        self.restored = {
            "pairs": len(saved.pairs),
            "processes": len(saved.processes),
            "holds": holds,
            "findings": restored_findings,
        }
        if any(self.restored.values()):
            log.info("lockscope agent: restored %s from %s", self.restored, self.file.path)

    # -- save ---------------------------------------------------------------------------
    def save_now(self) -> Any:
        """Write the current durable part (returns the write's future)."""
        state = self.state
        pairs = list(state.order.graph.pairs.values())
        new_pairs = pairs[self._pairs_saved :]
        self._pairs_saved = len(pairs)
        self.file.add_pairs(
            (
                repr((p.first, p.first_mode, p.second, p.second_mode)),
                {
                    "service": p.service,
                    "pid": p.pid,
                    "instance": p.instance,
                    "seen_at_ns": p.seen_at_ns,
                    "attrs": {
                        ev.ATTR_ORDER_FIRST: p.first[1],
                        ev.ATTR_ORDER_SECOND: p.second[1],
                        ev.ATTR_ORDER_FIRST_MODE: p.first_mode,
                        ev.ATTR_ORDER_SECOND_MODE: p.second_mode,
                        ev.ATTR_ORDER_SYSTEM_FIRST: p.first[0],
                        ev.ATTR_ORDER_SYSTEM_SECOND: p.second[0],
                        **({ev.ATTR_ACTOR_ID: p.actor} if p.actor else {}),
                    },
                },
            )
            for p in new_pairs
        )
        in_process = state.config.in_process_systems
        candidates: list[tuple[bool, int, Process, Hold]] = []
        for proc in state.procs:
            for actor in proc.actors.values():
                for h in actor.holds.values():
                    if h.source is None and h.lock.system not in in_process:
                        candidates.append((proc.alive, h.since_ns, proc, h))
        if len(candidates) > MAX_SAVED_HOLDS:
            candidates.sort(key=lambda c: (c[0], c[1]))
            del candidates[MAX_SAVED_HOLDS:]
        by_proc: dict[Process, list[Hold]] = {}
        for _alive, _since, proc, h in candidates:
            by_proc.setdefault(proc, []).append(h)
        findings = [
            _finding_doc(f) for f in state.findings(active_only=True) if f.expires_at_ns is not None
        ]
        self._dirty = False
        return self.file.save(
            (_process_doc(p, hs) for p, hs in by_proc.items()), findings, state.now_ns
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._dirty or len(self.state.order.graph.pairs) != self._pairs_saved:
                try:
                    self.save_now()
                except Exception:
                    log.exception("saving the agent state failed")

    def start(self) -> None:
        """Save periodically from now on (inside the event loop)."""
        self._saver.start(self._loop)

    async def stop(self) -> None:
        """A last save, then close the file."""
        await self._saver.stop()
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(self.save_now())
        await self.file.close()
