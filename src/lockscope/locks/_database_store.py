"""The lease table as seen from one process: a small pool of connections and the four operations.

Every :class:`~lockscope.locks.database.DatabaseLock` for the same database shares one
:class:`LeaseStore` (and so a few connections), because applications create lock objects
freely (``DatabaseLock(f"order:{id}", url)`` per request) and a connection per object would
exhaust the server. A connection is handed to one thread at a time; each statement runs in
its own autocommit transaction, so nothing is ever held open between operations.

Driver errors become :class:`~lockscope.errors.BackendUnavailable` and the connection that
raised them is thrown away. After ``fork()`` the child opens its own connections and
leaves the parent's alone: closing an inherited PostgreSQL connection would end the
parent's session.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from lockscope.errors import BackendUnavailable
from lockscope.locks._database_dialects import DIALECTS, Dialect, HolderRow, validate_table
from lockscope.locks._database_urls import (
    Target,
    dialect_of_connection,
    namespace_of_connection,
    parse_url,
)

__all__ = ["LeaseStore", "store_for"]

T = TypeVar("T")

_MAX_IDLE = 4
# Connections inherited across fork(): referenced here so that no finalizer closes them.
_inherited: list[Any] = []


class _Contention(Exception):
    """The database rolled back our statement because another session raced for the row."""


class LeaseStore:
    """Connections to one database and lease table, shared by every lock object on it."""

    def __init__(
        self,
        target: Target | None,
        *,
        connect: Callable[[], Any] | None = None,
        dialect: str | None = None,
        namespace: str | None = None,
        table: str,
        statement_timeout: float,
    ) -> None:
        if target is not None:
            connect, dialect, namespace = target.connect, target.dialect, target.namespace
        assert connect is not None
        self._connect = connect
        self._table = table
        self._statement_timeout = statement_timeout
        self._dialect: Dialect | None = None
        if dialect is not None:
            self._dialect = _make_dialect(dialect, table, statement_timeout)
        self._namespace = namespace
        self._idle: list[Any] = []
        self._mutex = threading.Lock()
        self._pid = os.getpid()

    @property
    def dialect(self) -> Dialect | None:
        """The dialect, once known (a connection factory reveals it on first connect)."""
        return self._dialect

    @property
    def namespace(self) -> str:
        """Where the table lives, without credentials (may connect once to find out)."""
        if self._namespace is None:
            self._run(lambda dialect, cur: None)
        assert self._namespace is not None
        return self._namespace

    def acquire(self, name: str, owner: str, ttl: float) -> int | None:
        """Run the acquire statement; the new fencing token, or ``None`` if busy."""
        try:
            return self._run(lambda d, cur: d.acquire(cur, name, owner, ttl), contention=True)
        except _Contention:
            return None

    def release(self, name: str, owner: str, fence: int) -> bool:
        """Run the token-checked release; ``False`` if the lease was no longer ours."""
        return self._run(lambda d, cur: d.release(cur, name, owner, fence))

    def extend(self, name: str, owner: str, fence: int, ttl: float) -> bool:
        """Run the token-checked extend; ``False`` if the lease was no longer ours."""
        return self._run(lambda d, cur: d.extend(cur, name, owner, fence, ttl))

    def holder(self, name: str) -> HolderRow | None:
        """The unexpired holder of ``name`` by the database's clock, or ``None``."""
        return self._run(lambda d, cur: d.holder(cur, name))

    def check_name(self, name: str) -> None:
        """Raise ``ValueError`` if the dialect (when known) cannot store ``name``."""
        if self._dialect is not None:
            self._dialect.check_name(name)

    def _run(self, op: Callable[[Dialect, Any], T], *, contention: bool = False) -> T:
        conn = self._borrow()
        dialect = self._dialect
        assert dialect is not None
        healthy = False
        try:
            cur = conn.cursor()
            try:
                result = op(dialect, cur)
            finally:
                cur.close()
            healthy = True
            return result
        except dialect.driver_errors() as exc:
            if contention and dialect.is_contention(exc):
                healthy = True
                raise _Contention from exc
            # The server may have gone away: the other idle connections are suspect too.
            self._discard_idle()
            raise BackendUnavailable(f"{self._where()}: {exc}") from exc
        finally:
            self._give_back(conn, healthy)

    def _where(self) -> str:
        return self._namespace or "database"

    def _borrow(self) -> Any:
        while True:
            with self._mutex:
                if self._pid != os.getpid():
                    _inherited.extend(self._idle)
                    self._idle = []
                    self._pid = os.getpid()
                if not self._idle:
                    break
                conn = self._idle.pop()
            if self._dialect is not None and self._dialect.is_stale(conn):
                _close_quietly(conn)
                continue
            return conn
        return self._open()

    def _open(self) -> Any:
        try:
            conn = self._connect()
        except Exception as exc:
            # Any failure to connect, whatever the driver calls it, is "unavailable".
            raise BackendUnavailable(f"cannot connect to {self._where()}: {exc}") from exc
        try:
            dialect = self._dialect or _make_dialect(
                dialect_of_connection(conn), self._table, self._statement_timeout
            )
        except BaseException:
            _close_quietly(conn)
            raise
        try:
            if self._namespace is None:
                self._namespace = namespace_of_connection(dialect.name, conn)
            dialect.setup(conn)
        except dialect.driver_errors() as exc:
            _close_quietly(conn)
            raise BackendUnavailable(f"cannot set up {self._where()}: {exc}") from exc
        except BaseException:
            _close_quietly(conn)
            raise
        self._dialect = dialect
        return conn

    def _give_back(self, conn: Any, healthy: bool) -> None:
        with self._mutex:
            if healthy and self._pid == os.getpid() and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        if self._pid == os.getpid():
            _close_quietly(conn)
        else:
            _inherited.append(conn)

    def __del__(self) -> None:
        # A factory's store goes when its last lock does; so do its idle connections.
        with contextlib.suppress(Exception):
            self._discard_idle()

    def _discard_idle(self) -> None:
        with self._mutex:
            if self._pid != os.getpid():
                return
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _make_dialect(name: str, table: str, statement_timeout: float) -> Dialect:
    try:
        cls = DIALECTS[name]
    except KeyError:
        raise ValueError(
            f"unknown dialect {name!r}: use one of {', '.join(sorted(DIALECTS))}"
        ) from None
    return cls(table, statement_timeout)


def _close_quietly(conn: Any) -> None:
    # Closing a broken connection may fail too; it is gone either way.
    with contextlib.suppress(Exception):
        conn.close()


# One store per URL and settings, for the life of the process (there are few URLs, and
# lock objects made per request must not reconnect). Stores for connection factories
# live only as long as some lock uses them: a factory made per lock object (a lambda in
# a request handler) must not pile up pools.
_url_stores: dict[tuple[Any, ...], LeaseStore] = {}
_factory_stores: weakref.WeakValueDictionary[tuple[Any, ...], LeaseStore] = (
    weakref.WeakValueDictionary()
)
_stores_mutex = threading.Lock()


def store_for(
    url: str | None,
    *,
    connect: Callable[[], Any] | None,
    dialect: str | None,
    namespace: str | None,
    table: str,
    connect_timeout: float,
    statement_timeout: float,
) -> LeaseStore:
    """The process-wide store for these settings, created on first use."""
    validate_table(table)
    key: tuple[Any, ...]
    with _stores_mutex:
        if url is not None:
            key = (url, namespace, table, connect_timeout, statement_timeout)
            store = _url_stores.get(key)
            if store is None:
                target = parse_url(url, connect_timeout, statement_timeout)
                if namespace is not None:
                    target.namespace = namespace
                store = LeaseStore(target, table=table, statement_timeout=statement_timeout)
                _url_stores[key] = store
            return store
        key = (connect, dialect, namespace, table, statement_timeout)
        store = _factory_stores.get(key)
        if store is None:
            store = LeaseStore(
                None,
                connect=connect,
                dialect=dialect,
                namespace=namespace,
                table=table,
                statement_timeout=statement_timeout,
            )
            _factory_stores[key] = store
        return store
