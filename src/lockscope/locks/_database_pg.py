"""PostgreSQL connections for the database lock, with a client-side bound on every wait.

PostgreSQL's own ``statement_timeout`` ends a slow statement, but not one whose server has
stopped answering altogether (a paused or frozen process, a dropped network path: the
kernel keeps acknowledging, nothing comes back). psycopg 3 waits on the socket without an
overall deadline, so the connection class here gives every wait one: the statement timeout
plus a small margin for the server's own error to arrive first. When it expires psycopg
raises ``OperationalError`` and the pool throws the connection away.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg.abc import PQGen
from psycopg.rows import TupleRow

__all__ = ["connect_postgres"]

# Let the server's statement_timeout answer first: its error leaves the connection usable.
_MARGIN = 1.0


class _PgConnection(psycopg.Connection[TupleRow]):
    lockscope_wait_timeout: float | None = None

    def wait(self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = self.lockscope_wait_timeout
        return super().wait(gen, interval=interval, timeout=timeout)


def connect_postgres(url: str, connect_timeout: float, statement_timeout: float) -> Any:
    """Open an autocommit connection whose every wait ends within the timeouts."""
    conn = _PgConnection.connect(
        url,
        autocommit=True,
        # libpq counts whole seconds, at least 2.
        connect_timeout=max(2, math.ceil(connect_timeout)),
        application_name="lockscope",
    )
    conn.lockscope_wait_timeout = statement_timeout + _MARGIN
    return conn
