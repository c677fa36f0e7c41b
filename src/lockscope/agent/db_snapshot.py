"""What one poll of a watched database found: sessions, the locks they wait for and hold.

Both dialects (:mod:`.db_postgres`, :mod:`.db_mysql`) turn their rows into a
:class:`Snapshot`; :mod:`.db_watch` turns the snapshot into one heartbeat of the database's
synthetic process (the full truth about what the database reports, so an ended wait heals
on the next poll).  Only locks somebody waits for are listed: a lock nobody waits for
cannot be part of a deadlock, and listing every held row lock would cost the database more
per poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from lockscope import events as ev

__all__ = [
    "ATTR_DB_APPLICATION",
    "ATTR_DB_CLIENT",
    "ATTR_DB_LINGERING",
    "ATTR_DB_SESSION",
    "SESSION_PREFIX",
    "DbLock",
    "Session",
    "SinceMemo",
    "Snapshot",
]

SESSION_PREFIX: Final = "session:"
"""Actor id of a database session no instrumented process owns (``session:<id>``), and the
name of the binding lock an instrumented connection's actor holds while it uses the
session (see docs/databases.md)."""
ATTR_DB_SESSION: Final = "lockscope.db.session"
"""The session's backend id (PostgreSQL backend pid, MySQL connection id)."""
ATTR_DB_APPLICATION: Final = "lockscope.db.application"
ATTR_DB_CLIENT: Final = "lockscope.db.client"
ATTR_DB_LINGERING: Final = "lockscope.db.lingering"
"""On an entry of an ended wait listed once more: applied only to a bound actor."""


@dataclass(frozen=True, slots=True)
class DbLock:
    """One lock a session waits for or holds."""

    name: str
    """``advisory:42``, ``row:public.accounts@(0,1)``, ``user_lock:jobs``..."""
    mode: str
    """An agent mode: ``exclusive`` or ``read`` (shared)."""
    since_ns: int
    db_mode: str = ""
    """The database's own mode name (``ExclusiveLock``, ``X``...), for people."""
    lingering: bool = False
    """Ended at the last poll, listed once more (see ``db_watch``)."""


@dataclass(slots=True)
class Session:
    """A database session involved in a wait (as waiter or as blocker)."""

    session_id: int
    application: str = ""
    client: str = ""
    user: str = ""
    state: str = ""
    wait: DbLock | None = None
    holds: dict[str, DbLock] = field(default_factory=dict)

    @property
    def actor_id(self) -> str:
        return f"{SESSION_PREFIX}{self.session_id}"

    @property
    def service(self) -> str:
        """``application_name``/program name, else the client address, else ``session``."""
        return self.application or self.client or "session"


@dataclass(slots=True)
class Snapshot:
    """The sessions of one poll (by session id) and the database's time of the poll."""

    sessions: dict[int, Session] = field(default_factory=dict)
    server_time_ns: int = 0

    def session(self, sid: int) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            s = self.sessions[sid] = Session(sid)
        return s

    def add_wait(self, sid: int, lock: DbLock) -> None:
        self.session(sid).wait = lock

    def add_hold(self, sid: int, lock: DbLock) -> None:
        s = self.session(sid)
        if lock.name not in s.holds:
            s.holds[lock.name] = lock

    def entries(
        self, system: str, namespace: str, min_wait_ns: int = 0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(holds, waits) as heartbeat entries of the database's synthetic process.

        Waits younger than ``min_wait_ns`` (by the server's clock) are left out, with the
        holds only they wait for: like the shims' ``report_after``, a short wait cannot be
        part of a lasting deadlock, and by then an instrumented app has reported which of
        its actors uses the session (so the session is that actor from the start).
        """
        holds: list[dict[str, Any]] = []
        waits: list[dict[str, Any]] = []
        cutoff = self.server_time_ns - min_wait_ns
        waited = {
            s.wait.name
            for s in self.sessions.values()
            if s.wait is not None and (min_wait_ns <= 0 or s.wait.since_ns <= cutoff)
        }
        for s in self.sessions.values():
            base = {
                ev.ATTR_ACTOR_ID: s.actor_id,
                ev.ATTR_ACTOR_NAME: f"{s.actor_id} ({s.service})",
                ATTR_DB_SESSION: s.session_id,
                ev.ATTR_LOCK_SYSTEM: system,
                ev.ATTR_LOCK_NAMESPACE: namespace,
                ev.ATTR_LOCK_FIFO: True,
            }
            if s.application:
                base[ATTR_DB_APPLICATION] = s.application
            if s.client:
                base[ATTR_DB_CLIENT] = s.client
            for lock in s.holds.values():
                if lock.name not in waited:
                    continue
                since = lock.since_ns
                if s.wait is not None:
                    # A session blocked in a wait acquired nothing since it began.
                    since = min(since, s.wait.since_ns - 1)
                entry = {
                    **base,
                    ev.ATTR_LOCK_NAME: lock.name,
                    ev.ATTR_LOCK_MODE: lock.mode,
                    ev.ATTR_SINCE: since,
                }
                if lock.lingering:
                    entry[ATTR_DB_LINGERING] = True
                holds.append(entry)
            if (
                s.wait is not None
                and s.wait.name in waited
                and (min_wait_ns <= 0 or s.wait.since_ns <= cutoff)
            ):
                entry = {
                    **base,
                    ev.ATTR_LOCK_NAME: s.wait.name,
                    ev.ATTR_LOCK_MODE: s.wait.mode,
                    ev.ATTR_SINCE: s.wait.since_ns,
                }
                if s.wait.lingering:
                    entry[ATTR_DB_LINGERING] = True
                waits.append(entry)
        return holds, waits


class SinceMemo:
    """First-seen times, for what the database does not timestamp (when a lock was granted).

    Keyed by (session, lock name, role); entries not seen in a poll are forgotten, so a
    lock taken again later gets a new ``since`` (a new hold, not the old one revived).
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[int, str, str], int] = {}
        self._now: dict[tuple[int, str, str], int] = {}

    def since(self, sid: int, name: str, role: str, now_ns: int) -> int:
        key = (sid, name, role)
        t = self._seen.get(key, now_ns)
        self._now[key] = t
        return t

    def end_poll(self) -> None:
        """Forget what this poll did not see."""
        self._seen, self._now = self._now, {}
