"""Where a :class:`~lockscope.locks.database.DatabaseLock` keeps its leases: database URLs
and caller-made connections turned into a dialect, a connection factory and a namespace
(the lock identity's "where", never with credentials)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["Target", "dialect_of_connection", "namespace_of_connection", "parse_url"]


class Target:
    """Where the leases live: a dialect, a way to open raw connections, and a namespace."""

    def __init__(self, dialect: str, connect: Callable[[], Any], namespace: str) -> None:
        self.dialect = dialect
        self.connect = connect
        self.namespace = namespace


_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def parse_url(url: str, connect_timeout: float, statement_timeout: float) -> Target:
    """Turn a database URL into a :class:`Target` (raises ``ValueError`` if unusable).

    ``sqlite:///relative.db`` and ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling),
    ``postgresql://user:pw@host:port/db?sslmode=require`` (any libpq URI) and
    ``mysql://user:pw@host:port/db`` (``mariadb://`` too). A ``+driver`` suffix on the
    scheme, as in SQLAlchemy URLs, is accepted and ignored.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    dialect = _SCHEMES.get(scheme.split("+", 1)[0].lower()) if sep else None
    if dialect is None:
        raise ValueError(
            f"unsupported database URL {url!r}: use sqlite:///file.db, "
            "postgresql://user@host:port/db or mysql://user:pw@host:port/db"
        )
    if dialect == "sqlite":
        return _sqlite_target(rest)
    if dialect == "postgresql":
        return _postgres_target(url, scheme, connect_timeout, statement_timeout)
    return _mysql_target(url, connect_timeout, statement_timeout)


def _sqlite_target(rest: str) -> Target:
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError("a SQLite URL needs a file: sqlite:///relative.db or sqlite:////abs.db")
    path = rest[1:].split("?", 1)[0]
    if path == ":memory:" or path.startswith("file::memory:"):
        raise ValueError("an in-memory SQLite database is private to one connection; use a file")
    path = os.path.abspath(path)

    def connect() -> sqlite3.Connection:
        # The busy timeout is set in setup(); check_same_thread is off because the pool
        # hands a connection to one thread at a time, but not always the same one.
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    return Target("sqlite", connect, f"sqlite:{path}")


def _host_port(host: str | None, port: int | None, default_port: int) -> str:
    host = host or "localhost"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port or default_port}"


def _postgres_target(
    url: str, scheme: str, connect_timeout: float, statement_timeout: float
) -> Target:
    parts = urlsplit(url)
    libpq_url = "postgresql://" + url.split("://", 1)[1] if "+" in scheme else url
    namespace = f"postgresql://{_host_port(parts.hostname, parts.port, 5432)}{parts.path or '/'}"

    def connect() -> Any:
        from lockscope.locks._database_pg import connect_postgres

        return connect_postgres(libpq_url, connect_timeout, statement_timeout)

    return Target("postgresql", connect, namespace)


def _mysql_target(url: str, connect_timeout: float, statement_timeout: float) -> Target:
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/")) or None
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
        "database": database,
        "connect_timeout": connect_timeout,
        # A server that stops answering (paused, partitioned) ends in an error here.
        "read_timeout": statement_timeout,
        "write_timeout": statement_timeout,
        "autocommit": True,
        "charset": "utf8mb4",
    }
    namespace = f"mysql://{_host_port(parts.hostname, parts.port, 3306)}/{database or ''}"

    def connect() -> Any:
        import pymysql

        return pymysql.connect(**kwargs)

    return Target("mysql", connect, namespace)


def dialect_of_connection(conn: Any) -> str:
    """Guess the dialect of a DB-API connection from its driver."""
    module = type(conn).__module__.split(".", 1)[0]
    found = {"sqlite3": "sqlite", "psycopg": "postgresql", "pymysql": "mysql"}.get(module)
    if found is None:
        raise ValueError(
            f"cannot tell the SQL dialect of a {type(conn).__module__}.{type(conn).__name__}"
            " connection: pass dialect='sqlite', 'postgresql' or 'mysql'"
        )
    return found


def namespace_of_connection(dialect: str, conn: Any) -> str:
    """Describe where a connection points, without credentials."""
    if dialect == "sqlite":
        row = conn.execute("PRAGMA database_list").fetchone()
        return f"sqlite:{row[2] if row else '?'}"
    if dialect == "postgresql":
        info = conn.info
        return f"postgresql://{_host_port(info.host, info.port, 5432)}/{info.dbname}"
    db = conn.db.decode() if isinstance(conn.db, bytes) else (conn.db or "")
    return f"mysql://{_host_port(conn.host, conn.port, 3306)}/{db}"
