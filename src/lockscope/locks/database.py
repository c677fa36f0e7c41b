"""Lease locks in a SQL table: SQLite (embedded, no server), PostgreSQL, MariaDB/MySQL.

>>> from lockscope.locks import DatabaseLock
>>> lock = DatabaseLock("nightly-report", "sqlite:///locks.db", ttl=30)   # doctest: +SKIP
>>> with lock:                                                            # doctest: +SKIP
...     write_report(fence=lock.fencing_token)

A lock is a row in a lease table (``lockscope_locks``, created on first use). Acquire,
release and extend are each one atomic SQL statement, and the lease's end is computed and
judged by the database's clock only: a client with a wrong clock cannot take a lease that
is still held or grant itself a longer one. Every acquisition gets a fencing token one
higher than the last for that name, and the counter survives release, so tokens strictly
increase per name for the life of the table.

Drivers are the plain DB-API ones (``sqlite3`` from the standard library, psycopg 3 with
``lockscope[postgres]``, PyMySQL with ``lockscope[mysql]``); see docs/locks.md for why
not SQLAlchemy, the statements of each dialect, and the failure behaviour.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict, Unpack

from lockscope.errors import LockLost, LockNotOwned
from lockscope.locks._database_store import LeaseStore, store_for
from lockscope.locks._threaded import Forward, SyncTwin, acquire_cancel_safe
from lockscope.locks.base import AsyncLock, Lock, validate_ttl

__all__ = ["AsyncDatabaseLock", "DatabaseLock", "LeaseHolder"]

DEFAULT_TABLE = "lockscope_locks"
_HOST = socket.gethostname()[:64] or "localhost"


def _new_owner() -> str:
    # Fresh for every attempt: it names the holder (host and pid help whoever reads the
    # table) and, being unique, lets the MySQL upsert recognise its own take-over.
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(8)}"


class LeaseHolder(NamedTuple):
    """Who holds a database lock right now, by the database's clock.

    The same fields as the Redis locks' ``LockHolder``, so callers can treat them alike.
    """

    owner: str
    """The holder's token, ``"host:pid:random"`` (a :attr:`DatabaseLock.owner` value)."""
    fencing_token: int
    """The fencing token of the holder's acquisition."""
    ttl: float
    """Seconds left on the lease unless it is extended (measured by the database)."""


class DatabaseOptions(TypedDict, total=False):
    """:class:`DatabaseLock`'s keyword arguments, for the asyncio flavour."""

    connect: Callable[[], Any] | None
    dialect: str | None
    namespace: str | None
    ttl: float
    table: str
    connect_timeout: float
    statement_timeout: float
    blocking_timeout: float | None
    retry_interval: float


class DatabaseLock(Lock):
    """An exclusive lease lock kept in a SQL table, with fencing tokens.

    :param name: the lock's name (any non-empty string up to 1024 characters; MySQL also
        caps it at 3072 UTF-8 bytes).
    :param url: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``,
        ``postgresql://user:pw@host:5432/db`` (any libpq URI) or
        ``mysql://user:pw@host:3306/db`` (``mariadb://`` too). Lock objects with the same
        URL and settings share a small pool of connections per process.
    :param connect: instead of ``url``, a zero-argument callable returning a new DB-API
        connection (sqlite3, psycopg 3 or PyMySQL). lockscope switches it to autocommit
        and owns it from then on.
    :param dialect: ``"sqlite"``, ``"postgresql"`` or ``"mysql"``; with ``connect`` only,
        guessed from the driver when omitted.
    :param namespace: where the lock lives, for lock identity in events; derived from the
        URL or connection when omitted (never contains a password).
    :param ttl: lease length in seconds for each acquisition (default 30).
    :param table: the lease table's name, created if missing.
    :param connect_timeout: seconds to wait for a new connection (PostgreSQL rounds up to
        whole seconds, at least 2).
    :param statement_timeout: seconds one statement may take, including waits for row
        locks and, for SQLite, for the file's write lock; past it (plus a 1 s margin for
        PostgreSQL's own error to arrive) the call raises ``BackendUnavailable``.
    :param blocking_timeout: default wait of the context manager (``None`` = forever).
    :param retry_interval: mean pause between attempts while waiting (jittered).

    The object remembers its own acquisition, so use one object per thread or task (they
    are cheap: connections are pooled per process).
    """

    system = "database"
    mode = "exclusive"

    def __init__(
        self,
        name: str,
        url: str | None = None,
        *,
        connect: Callable[[], Any] | None = None,
        dialect: str | None = None,
        namespace: str | None = None,
        ttl: float = 30.0,
        table: str = DEFAULT_TABLE,
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
        blocking_timeout: float | None = None,
        retry_interval: float = 0.05,
    ) -> None:
        super().__init__(
            name,
            ttl=validate_ttl(ttl),
            blocking_timeout=blocking_timeout,
            retry_interval=retry_interval,
        )
        if (url is None) == (connect is None):
            raise TypeError("pass exactly one of url and connect")
        if connect is not None and not callable(connect):
            raise TypeError("connect must be a callable returning a DB-API connection")
        if dialect is not None and url is not None:
            raise TypeError("dialect is taken from the URL; pass it only with connect")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        self._store: LeaseStore = store_for(
            url,
            connect=connect,
            dialect=dialect,
            namespace=namespace,
            table=table,
            connect_timeout=validate_ttl(connect_timeout, "connect_timeout"),
            statement_timeout=validate_ttl(statement_timeout, "statement_timeout"),
        )
        self._store.check_name(self.name)
        self._held: tuple[str, int] | None = None

    @property
    def namespace(self) -> str:
        """``sqlite:/abs/path.db``, ``postgresql://host:port/db`` or ``mysql://host:port/db``."""
        return self._store.namespace

    @property
    def owner(self) -> str | None:
        """This object's holder token while it believes it holds the lock, else ``None``."""
        return None if self._held is None else self._held[0]

    @property
    def _lease_ttl(self) -> float:
        assert self.ttl is not None  # always set: __init__ validates it
        return self.ttl

    def _try_acquire(self) -> bool:
        self._store.check_name(self.name)  # a connect= store learns its dialect late
        owner = _new_owner()
        fence = self._store.acquire(self.name, owner, self._lease_ttl)
        if fence is None:
            return False
        self._held = (owner, fence)
        self.fencing_token = fence
        return True

    def release(self) -> None:
        """Free the lock.

        Raises :class:`~lockscope.errors.LockNotOwned` if this object does not hold it, and
        :class:`~lockscope.errors.LockLost` if its lease had expired (whether or not
        someone else has taken the lock since).
        """
        owner, fence = self._require_held("release")
        released = self._store.release(self.name, owner, fence)
        self._held = None
        if not released:
            raise LockLost(self._lost_message(fence))

    def extend(self, seconds: float) -> None:
        """Make the lease end ``seconds`` from now by the database's clock.

        Raises :class:`~lockscope.errors.LockLost` if the lease had already expired.
        """
        seconds = validate_ttl(seconds, "seconds")
        owner, fence = self._require_held("extend")
        if not self._store.extend(self.name, owner, fence, seconds):
            self._held = None
            raise LockLost(self._lost_message(fence))

    def holder(self) -> LeaseHolder | None:
        """Who holds the lock now (one primary-key read), or ``None`` if it is free."""
        row = self._store.holder(self.name)
        return None if row is None else LeaseHolder(*row)

    def locked(self) -> bool:
        """Whether anyone holds an unexpired lease on the lock."""
        return self.holder() is not None

    def owned(self) -> bool:
        """Whether this object's lease is the current, unexpired one (asks the database)."""
        held = self._held
        current = self.holder()
        return (
            held is not None
            and current is not None
            and (current.owner, current.fencing_token) == held
        )

    def _require_held(self, what: str) -> tuple[str, int]:
        if self._held is None:
            raise LockNotOwned(f"cannot {what} {self.name!r}: this lock object does not hold it")
        return self._held

    def _lost_message(self, fence: int) -> str:
        return (
            f"lease on {self.name!r} (fencing token {fence}) had expired"
            f" at {self.namespace}; the lock may have been taken by another holder"
        )


class AsyncDatabaseLock(SyncTwin[DatabaseLock], AsyncLock):
    """The asyncio flavour of :class:`DatabaseLock`: same arguments, coroutine methods.

    Each statement runs in a worker thread (``asyncio.to_thread``) over the sync
    implementation (:attr:`sync`): every operation is one short statement, waiting for a
    busy lock is an ``asyncio.sleep`` between attempts (no thread is held while waiting),
    and one implementation then serves all three drivers, of which only psycopg has an
    asyncio API. If the awaiting task is cancelled while an acquire statement is running,
    it waits up to a second for the statement and releases a lease it took before the
    cancellation propagates; past that second the release runs when the statement ends.
    """

    system = "database"
    mode = "exclusive"

    def __init__(
        self, name: str, url: str | None = None, **options: Unpack[DatabaseOptions]
    ) -> None:
        self.sync = DatabaseLock(name, url, **options)
        super().__init__(
            name,
            ttl=self.sync.ttl,
            blocking_timeout=self.sync.blocking_timeout,
            retry_interval=self.sync.retry_interval,
        )

    @property
    def namespace(self) -> str:
        """See :attr:`DatabaseLock.namespace`."""
        return self.sync.namespace

    owner = Forward[str | None]("See :attr:`DatabaseLock.owner`.")

    async def _try_acquire(self) -> bool:
        taken = await acquire_cancel_safe(
            asyncio.ensure_future(self._in_thread(self.sync._try_acquire)), self.sync.release
        )
        self.fencing_token = self.sync.fencing_token
        return taken

    async def release(self) -> None:
        """See :meth:`DatabaseLock.release`."""
        await self._in_thread(self.sync.release)

    async def extend(self, seconds: float) -> None:
        """See :meth:`DatabaseLock.extend`."""
        validate_ttl(seconds, "seconds")
        await self._in_thread(self.sync.extend, seconds)

    async def holder(self) -> LeaseHolder | None:
        """See :meth:`DatabaseLock.holder`."""
        return await self._in_thread(self.sync.holder)

    async def locked(self) -> bool:
        """See :meth:`DatabaseLock.locked`."""
        return await self._in_thread(self.sync.locked)

    async def owned(self) -> bool:
        """See :meth:`DatabaseLock.owned`."""
        return await self._in_thread(self.sync.owned)
