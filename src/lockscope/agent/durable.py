"""The agent's small durable state: an embedded SQLite file.

Most of the agent's state rebuilds itself after a restart: every live process sends its
full set of waits and holds in each heartbeat.  What does not come back by itself is kept
here: the lock-order pairs (a shim sends each pair once per process lifetime), the holds
of processes that are dead or may die while the agent is down (nobody will report them
again: orphaned holders), and the one-shot findings (violations, lost locks).

The file holds JSON documents (the format is internal to the agent and versioned by
``SCHEMA``); :mod:`lockscope.agent.durable_sync` decides what goes in and how it is
replayed.  All SQLite work runs on one background thread, so a slow disk never stalls the
event loop; writes are one transaction each (WAL mode), so a SIGKILL leaves the last
complete snapshot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["ENV_STATE_FILE", "SCHEMA", "DurableFile", "Saved", "default_state_file"]

log = logging.getLogger("lockscope.agent")

SCHEMA: Final = 1
_TABLES: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pairs (key TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshot (kind TEXT NOT NULL, doc TEXT NOT NULL)",
)


ENV_STATE_FILE: Final = "LOCKSCOPE_AGENT_STATE_FILE"


def default_state_file(otlp_port: int) -> Path | None:
    """The state file of ``lockscope agent`` when the config names none:
    ``$LOCKSCOPE_AGENT_STATE_FILE`` if set (empty: none), else
    ``$XDG_STATE_HOME/lockscope/agent-<OTLP port>.sqlite`` (``~/.local/state/...``), one
    per agent on a host; None for an OTLP port of 0 (a port chosen at random has no
    identity to find its file again by)."""
    if ENV_STATE_FILE in os.environ:
        return Path(os.environ[ENV_STATE_FILE]) if os.environ[ENV_STATE_FILE] else None
    if not otlp_port:
        return None
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lockscope" / f"agent-{otlp_port}.sqlite"


@dataclass(slots=True)
class Saved:
    """What a previous run left."""

    saved_at_ns: int = 0
    pairs: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)


class DurableFile:
    """One SQLite file, used from one background thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "lockscope-durable")
        self._db: sqlite3.Connection | None = None
        self.errors = 0
        """Failed reads or writes (logged; the agent goes on without durability)."""

    # -- on the worker thread -------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _TABLES:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and row[0] != str(SCHEMA):
                # Another version's file: start afresh rather than misread it.
                log.warning(
                    "state file %s has schema %s, not %s: ignored", self.path, row[0], SCHEMA
                )
                with db:
                    db.execute("DELETE FROM pairs")
                    db.execute("DELETE FROM snapshot")
            with db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            self._db = db
        return self._db

    def _load(self) -> Saved:
        db = self._connect()
        saved = Saved()
        row = db.execute("SELECT value FROM meta WHERE key = 'saved_at'").fetchone()
        saved.saved_at_ns = int(row[0]) if row else 0
        saved.pairs = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM pairs")]
        for kind, doc in db.execute("SELECT kind, doc FROM snapshot"):
            (saved.processes if kind == "process" else saved.findings).append(json.loads(doc))
        return saved

    def _add_pairs(self, pairs: list[tuple[str, str]]) -> None:
        db = self._connect()
        with db:
            db.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?)", pairs)

    def _save(self, rows: list[tuple[str, str]], now_ns: int) -> None:
        db = self._connect()
        with db:
            db.execute("DELETE FROM snapshot")
            db.executemany("INSERT INTO snapshot VALUES (?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('saved_at', ?)", (str(now_ns),))

    def _guard(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self.errors += 1
            if self.errors <= 5:
                log.warning("state file %s: %s failed: %s", self.path, what, exc)
            return None

    # -- from the event loop --------------------------------------------------------------
    async def load(self) -> Saved:
        """What the last run saved (empty when the file is new or unreadable)."""
        loop = asyncio.get_running_loop()
        saved = await loop.run_in_executor(self._pool, self._guard, "load", self._load)
        return saved if isinstance(saved, Saved) else Saved()

    def add_pairs(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Keep new lock-order pairs (``(key, document)``), in the background."""
        rows = [(key, json.dumps(doc)) for key, doc in pairs]
        if rows:
            self._pool.submit(self._guard, "add pairs", self._add_pairs, rows)

    def save(
        self,
        processes: Iterable[dict[str, Any]],
        findings: Iterable[dict[str, Any]],
        now_ns: int,
    ) -> concurrent.futures.Future[Any]:
        """Replace the snapshot of processes and findings, in the background."""
        rows = [("process", json.dumps(p)) for p in processes]
        rows += [("finding", json.dumps(f)) for f in findings]
        return self._pool.submit(self._guard, "save", self._save, rows, now_ns)

    async def close(self) -> None:
        """Finish pending writes and close the file."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
