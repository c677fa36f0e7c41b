"""Which databases the agent watches: DSNs, their redaction and the ``[[databases]]`` tables.

A watched database is named by a URL DSN (``postgresql://``, ``postgres://``, ``mysql://``,
``mariadb://``).  Its password may come from the URL or from a ``password_file``; it is
never shown: :attr:`DatabaseTarget.display` (logs, ``/readyz``, metric labels) carries the
URL with the password replaced by ``***``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "MYSQL",
    "POSTGRESQL",
    "DatabaseTarget",
    "DsnError",
    "parse_dsn",
    "redact",
    "targets_from_settings",
]

POSTGRESQL: Final = "postgresql"
MYSQL: Final = "mysql"
_SCHEMES: Final = {
    "postgresql": POSTGRESQL,
    "postgres": POSTGRESQL,
    "mysql": MYSQL,
    "mariadb": MYSQL,
}
_DEFAULT_PORTS: Final = {POSTGRESQL: 5432, MYSQL: 3306}
DEFAULT_POLL_INTERVAL: Final = 0.1
"""Seconds between polls: with the shims' 0.2 s ``report_after`` a cycle that crosses an
application lock and a database lock is complete in the agent about 0.3 s after it closes."""
DEFAULT_MIN_WAIT: Final = 0.4
"""A database wait is reported once it has lasted this long (twice the shims' 0.2 s
``report_after``: their reporting delay included), so a session an instrumented actor uses
is reported as that actor from the first time it appears."""
DEFAULT_STATEMENT_TIMEOUT: Final = 2.0
"""A poll that takes longer is cancelled by the server (and retried with backoff)."""


class DsnError(ValueError):
    """A DSN or ``[[databases]]`` entry is malformed (the message never holds a password)."""


_URL_USERINFO: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#\s]*:)[^@\s]*@")
_BARE_USERINFO: Final = re.compile(r"^([^:/@?#\s]*:)[^@\s]*@")
_PASSWORD_PARAM: Final = re.compile(r"(?i)\b(password\s*=\s*)('[^']*'|[^&\s]*)")


def redact(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``: the ``user:password@`` part of a URL
    (or of anything shaped like one) and ``password=`` parameters (URL query or libpq
    ``key=value``)."""
    text = str(dsn)
    userinfo = _URL_USERINFO if "://" in text else _BARE_USERINFO
    out = userinfo.sub(r"\1***@", text, count=1)
    return _PASSWORD_PARAM.sub(r"\1***", out)


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """One watched database."""

    kind: str
    """:data:`POSTGRESQL` or :data:`MYSQL` (MariaDB included)."""
    host: str
    port: int
    dbname: str
    user: str | None
    password: str | None = field(repr=False)
    name: str
    """What ``/readyz`` and ``lockscope_agent_database_up{database}`` call it."""
    display: str
    """The DSN without its password."""
    poll_interval: float = DEFAULT_POLL_INTERVAL
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    min_wait: float = DEFAULT_MIN_WAIT
    """Database waits are reported once they have lasted this long (server clock)."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Other query parameters of the DSN (``sslmode=...``), passed to the driver."""

    @property
    def namespace(self) -> str:
        """``host:port/db``: the namespace of this database's locks."""
        return f"{self.host}:{self.port}/{self.dbname}"

    @property
    def system(self) -> str:
        """The lock system of this database's locks (``postgresql`` or ``mysql``)."""
        return self.kind

    def __repr__(self) -> str:
        return f"DatabaseTarget({self.display!r}, name={self.name!r})"


def _interval(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DsnError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0.01 or value > 3600:
        raise DsnError(f"{what} must be between 0.01 and 3600 seconds, got {value!r}")
    return float(value)


def parse_dsn(
    dsn: str,
    *,
    name: str | None = None,
    poll_interval: float | None = None,
    password_file: str | None = None,
) -> DatabaseTarget:
    """A :class:`DatabaseTarget` from a URL DSN; raises :class:`DsnError` (redacted)."""
    if not isinstance(dsn, str) or "://" not in dsn:
        raise DsnError(
            f"database DSN must be a URL such as postgresql://user@host:5432/db, "
            f"got {redact(str(dsn))!r}"
        )
    shown = redact(dsn)
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise DsnError(f"database DSN {shown!r}: {exc}") from None
    kind = _SCHEMES.get(parts.scheme.lower())
    if kind is None:
        raise DsnError(
            f"database DSN {shown!r}: scheme must be one of postgresql://, postgres://, "
            f"mysql:// or mariadb://"
        )
    host = parts.hostname or "localhost"
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise DsnError(f"database DSN {shown!r} names no database (…/dbname)")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    password = unquote(parts.password) if parts.password is not None else None
    password = options.pop("password", password)
    if password_file is not None:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            raise DsnError(
                f"database {shown!r}: cannot read password_file {password_file}: "
                f"{exc.strerror or exc}"
            ) from None
    interval = DEFAULT_POLL_INTERVAL
    if poll_interval is not None:
        interval = _interval(poll_interval, f"database {shown!r}: poll_interval")
    namespace = f"{host}:{port or _DEFAULT_PORTS[kind]}/{dbname}"
    return DatabaseTarget(
        kind=kind,
        host=host,
        port=port or _DEFAULT_PORTS[kind],
        dbname=dbname,
        user=unquote(parts.username) if parts.username else None,
        password=password,
        name=name or namespace,
        display=shown,
        poll_interval=interval,
        options=options,
    )


_TABLE_KEYS: Final = frozenset({"dsn", "name", "poll_interval", "password_file"})


def _from_table(i: int, table: object) -> DatabaseTarget:
    if not isinstance(table, Mapping):
        raise DsnError(f"[[databases]] entry {i} must be a table with a dsn")
    extra = set(table) - _TABLE_KEYS
    if extra:
        raise DsnError(
            f"[[databases]] entry {i}: unknown key(s) {sorted(extra)} "
            f"(known: {', '.join(sorted(_TABLE_KEYS))})"
        )
    dsn = table.get("dsn")
    if not isinstance(dsn, str):
        raise DsnError(f"[[databases]] entry {i}: dsn must be a string")
    name = table.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise DsnError(f"[[databases]] entry {i}: name must be a non-empty string")
    password_file = table.get("password_file")
    if password_file is not None and not isinstance(password_file, str):
        raise DsnError(f"[[databases]] entry {i}: password_file must be a path")
    return parse_dsn(
        dsn, name=name, poll_interval=table.get("poll_interval"), password_file=password_file
    )


def targets_from_settings(
    flags: Iterable[str] = (), env_value: str | None = None, tables: Any = None
) -> tuple[DatabaseTarget, ...]:
    """The watched databases by precedence: ``--watch-database`` flags, else
    ``LOCKSCOPE_WATCH_DATABASES`` (comma-separated), else the file's ``[[databases]]``."""
    flag_list = [f for f in flags if f]
    if flag_list:
        found = [parse_dsn(d.strip()) for d in flag_list]
    elif env_value and env_value.strip():
        found = [parse_dsn(d.strip()) for d in env_value.split(",") if d.strip()]
    elif tables:
        if not isinstance(tables, list | tuple):
            raise DsnError("databases must be an array of tables ([[databases]])")
        found = [_from_table(i, t) for i, t in enumerate(tables)]
    else:
        return ()
    names = [t.name for t in found]
    for n in names:
        if names.count(n) > 1:
            raise DsnError(f"two watched databases are both named {n!r}: give one a name")
    return tuple(found)
