"""The database watcher: polls each watched database's own locks, off the event loop.

One thread per database connects (psycopg 3 or PyMySQL, a statement timeout set on the
session), runs the dialect's single poll query every ``poll_interval`` and hands the
:class:`~lockscope.agent.db_snapshot.Snapshot` to the event loop as one heartbeat of the
database's synthetic process (``service`` = ``postgresql``/``mysql``, instance
``lockscope-db:<name>``).  The heartbeat is the full truth for what the database reports:
a wait that ended is gone on the next poll.

Faults (unreachable, wrong credentials, missing privileges, a poll over the statement
timeout) are logged once per distinct error, without the password, retried with
exponential backoff (0.5 s to 30 s), and shown per database in ``/readyz`` and as
``lockscope_agent_database_up{database}``.  While a database is down its heartbeats are
empty, so nothing it reported lingers.  The event loop never waits for a database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from lockscope import events as ev
from lockscope.agent.db_dsn import MYSQL, POSTGRESQL, DatabaseTarget
from lockscope.agent.db_snapshot import Snapshot
from lockscope.agent.model import Event, ProcessInfo

__all__ = ["DATABASES_KEY", "DatabaseWatcher", "DatabaseWatchers", "setup_database_watchers"]

log = logging.getLogger("lockscope.agent.databases")

BACKOFF_MIN: Final = 0.5
BACKOFF_MAX: Final = 30.0
DOWN_HEARTBEAT: Final = 60.0
"""Heartbeat interval announced while a database is down (the empty snapshots keep its
synthetic process alive without a poll)."""


class Dialect(Protocol):
    """One database family: connect, then poll (one round trip) into a snapshot."""

    def connect(self, target: DatabaseTarget) -> Any: ...

    def poll(self, conn: Any) -> Snapshot: ...

    def cut_by_timeout(self, conn: Any, exc: BaseException) -> bool:
        """Whether ``exc`` is the server cancelling a poll for the statement timeout,
        which leaves ``conn`` usable (polling goes on with it after the backoff)."""
        ...

    def close(self, conn: Any) -> None: ...


def _dialect(target: DatabaseTarget) -> Dialect:
    if target.kind == POSTGRESQL:
        from lockscope.agent.db_postgres_conn import PostgresDialect

        return PostgresDialect()
    if target.kind == MYSQL:
        from lockscope.agent.db_mysql import MysqlDialect

        return MysqlDialect()
    raise ValueError(f"unknown database kind {target.kind!r}")  # pragma: no cover


@dataclass(slots=True)
class WatchStatus:
    """What ``/readyz`` shows about one database."""

    up: bool = False
    error: str | None = None
    since: float = 0.0
    polls: int = 0
    failures: int = 0
    last_poll_seconds: float = 0.0
    sessions: int = 0


class DatabaseWatcher:
    """Polls one database on its own thread and delivers snapshots through ``deliver``."""

    def __init__(
        self,
        target: DatabaseTarget,
        deliver: Callable[[Event], None],
        dialect: Dialect | None = None,
    ) -> None:
        self.target = target
        self._deliver = deliver
        self._dialect = dialect or _dialect(target)
        self.status = WatchStatus(since=time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: str | None = None
        self._previous = Snapshot()
        self._lingered: set[int] = set()
        """Sessions whose ended wait the last heartbeat listed once more (not again)."""
        self._lingering: set[int] = set()
        self.process = ProcessInfo(
            service=target.kind,
            host=target.host,
            pid=0,
            instance=f"lockscope-db:{target.name}",
        )

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"lockscope-db-{self.target.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------------
    def _redact(self, message: str) -> str:
        password = self.target.password
        if password:
            message = message.replace(password, "***")
        return " ".join(message.split())

    def _failed(self, exc: BaseException) -> None:
        text = self._redact(f"{type(exc).__name__}: {exc}")
        self.status.failures += 1
        if self.status.up or self.status.error is None:
            self.status.since = time.time()
        self.status.up = False
        self.status.error = text
        if text != self._logged:
            self._logged = text
            log.warning(
                "lockscope agent: database %s (%s) cannot be watched, retrying with backoff: %s",
                self.target.name,
                self.target.display,
                text,
            )
        self._heartbeat(Snapshot(), DOWN_HEARTBEAT)

    def _linger(self, snap: Snapshot) -> Snapshot:
        """Keep a wait that just ended for one more poll.

        When the database aborts a deadlock's victim, the victim's app says so (its
        binding ends with ``deadlock_victim``) within the shim's reporting tick; listing
        the ended wait once more lets that report, rather than this poll, end the wait, so
        the finding resolves with the server's reason.  A grant or timeout is then seen
        one poll later (0.1 s), which changes no finding's truth.  The lingering entries
        are marked: the state applies them only to an actor that still binds the session
        (an unbound session's ended wait must not come back as an actor of its own).
        """
        previous, self._previous = self._previous, snap
        for sid, old in previous.sessions.items():
            if old.wait is None or sid in self._lingered:
                continue
            now = snap.sessions.get(sid)
            if now is not None and now.wait is not None:
                continue
            kept = snap.session(sid)
            kept.wait = replace(old.wait, lingering=True)
            kept.application, kept.client, kept.user = old.application, old.client, old.user
            for name, hold in old.holds.items():
                kept.holds.setdefault(name, replace(hold, lingering=True))
            for other in previous.sessions.values():  # the holders it waited for
                if other.session_id != sid and old.wait.name in other.holds:
                    snap.session(other.session_id).holds.setdefault(
                        old.wait.name, replace(other.holds[old.wait.name], lingering=True)
                    )
            self._lingering.add(sid)
        self._lingered, self._lingering = self._lingering, set()
        return snap

    def _heartbeat(self, snap: Snapshot, interval: float) -> None:
        holds, waits = snap.entries(
            self.target.system, self.target.namespace, int(self.target.min_wait * 1e9)
        )
        self.status.sessions = len(snap.sessions)
        event = Event(
            ev.EVENT_HEARTBEAT,
            time.time_ns(),
            self.process,
            {
                ev.ATTR_HEARTBEAT_INTERVAL: interval,
                ev.ATTR_HOLDS: holds,
                ev.ATTR_WAITS: waits,
            },
        )
        try:
            self._deliver(event)
        except RuntimeError:  # the event loop is closed: the agent is stopping
            self._stop.set()

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        interval = self.target.poll_interval
        while not self._stop.is_set():
            try:
                conn = self._dialect.connect(self.target)
            except Exception as exc:
                self._failed(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                while not self._stop.is_set():
                    started = time.perf_counter()
                    try:
                        snap = self._dialect.poll(conn)
                    except Exception as exc:
                        if not self._dialect.cut_by_timeout(conn, exc):
                            raise
                        # Keep the session: a new one would cost a backend start, which
                        # may itself block on what made the poll slow (locked catalogs).
                        self._failed(exc)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    took = time.perf_counter() - started
                    st = self.status
                    if not st.up:
                        st.since = time.time()
                        if self._logged is not None:
                            log.warning(
                                "lockscope agent: database %s (%s) is watched again",
                                self.target.name,
                                self.target.display,
                            )
                        self._logged = None
                    st.up, st.error = True, None
                    st.polls += 1
                    st.last_poll_seconds = took
                    backoff = BACKOFF_MIN
                    self._heartbeat(self._linger(snap), max(interval, 0.5))
                    self._stop.wait(max(0.0, interval - took))
            except Exception as exc:
                self._failed(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                try:
                    self._dialect.close(conn)
                except Exception:
                    log.debug("closing the watcher connection failed", exc_info=True)


class DatabaseWatchers:
    """All watchers of one agent: started and stopped with the HTTP app."""

    def __init__(self, targets: Iterable[DatabaseTarget]) -> None:
        self.targets = tuple(targets)
        self.watchers: list[DatabaseWatcher] = []

    def start(self, deliver: Callable[[Event], None]) -> None:
        for target in self.targets:
            w = DatabaseWatcher(target, deliver)
            self.watchers.append(w)
            w.start()

    def stop(self) -> None:
        for w in self.watchers:
            w._stop.set()
        for w in self.watchers:
            w.stop()

    def readiness(self) -> dict[str, Any]:
        """Per database: up, the last error (redacted), polls and the last poll's time."""
        out: dict[str, Any] = {}
        for w in self.watchers:
            st = w.status
            out[w.target.name] = {
                "dsn": w.target.display,
                "up": st.up,
                "error": st.error,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.since)),
                "polls": st.polls,
                "failures": st.failures,
                "last_poll_seconds": round(st.last_poll_seconds, 6),
                "sessions": st.sessions,
            }
        return out

    def metrics(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "lockscope_agent_database_up",
            "1 while the agent's watcher can poll this database's locks, else 0.",
            labels=["database"],
        )
        polls = GaugeMetricFamily(
            "lockscope_agent_database_poll_seconds",
            "How long the watcher's last poll of this database took.",
            labels=["database"],
        )
        for w in self.watchers:
            up.add_metric([w.target.name], 1.0 if w.status.up else 0.0)
            polls.add_metric([w.target.name], w.status.last_poll_seconds)
        yield up
        yield polls


DATABASES_KEY: Final = web.AppKey("lockscope.databases", DatabaseWatchers)


def setup_database_watchers(targets: Iterable[DatabaseTarget]) -> Callable[[web.Application], None]:
    """An HTTP-app setup (``AgentRunner(http_setup=...)``) that runs the watchers while the
    app runs, feeding the app's state on its event loop."""
    watchers = DatabaseWatchers(targets)

    def setup(app: web.Application) -> None:
        from lockscope.agent.app_keys import STATE_KEY
        from lockscope.agent.state import RejectedEvent
        from lockscope.agent.web_metrics import collector_of

        app[DATABASES_KEY] = watchers

        async def start(app: web.Application) -> None:
            loop = asyncio.get_running_loop()
            state = app[STATE_KEY]

            def apply(event: Event) -> None:
                try:
                    state.apply(event)
                except RejectedEvent as exc:
                    log.warning("lockscope agent: database snapshot rejected: %s", exc)

            def deliver(event: Event) -> None:
                loop.call_soon_threadsafe(apply, event)

            watchers.start(deliver)
            collector = collector_of(app)
            if collector is not None:
                collector.extra.append(watchers.metrics)

        async def stop(app: web.Application) -> None:
            await asyncio.get_running_loop().run_in_executor(None, watchers.stop)

        app.on_startup.append(start)
        app.on_cleanup.append(stop)

    return setup
