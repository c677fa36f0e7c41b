"""The PostgreSQL watcher connection (psycopg 3): connect with a statement timeout, poll."""

from __future__ import annotations

from typing import Any

from lockscope.agent.db_dsn import DatabaseTarget
from lockscope.agent.db_postgres import POLL_QUERY, SETUP_STATEMENTS, build_snapshot
from lockscope.agent.db_snapshot import SinceMemo, Snapshot

__all__ = ["PostgresDialect"]


class PostgresDialect:
    """psycopg 3, autocommit, ``statement_timeout`` from the target, one query per poll."""

    def __init__(self) -> None:
        self._memo = SinceMemo()
        self._own_pid: int | None = None

    def connect(self, target: DatabaseTarget) -> Any:
        import psycopg

        timeout_ms = int(target.statement_timeout * 1000)
        extra: dict[str, Any] = dict(target.options)
        conn = psycopg.connect(
            host=target.host,
            port=target.port,
            dbname=target.dbname,
            user=target.user,
            password=target.password,
            connect_timeout=max(1, int(target.statement_timeout + 0.999)),
            application_name="lockscope-agent",
            options=f"-c statement_timeout={timeout_ms}",
            autocommit=True,
            **extra,
        )
        try:
            for statement in SETUP_STATEMENTS:
                conn.execute(statement)
            # The poll needs no privilege beyond pg_monitor; check it now so a missing
            # grant is one clear error, not rows silently hidden by pg_stat_activity.
            row = conn.execute("SELECT pg_has_role(current_user, 'pg_monitor', 'USAGE')").fetchone()
            if not row or not row[0]:
                raise PermissionError(
                    f"role {target.user or '(default)'} lacks pg_monitor "
                    f"(GRANT pg_monitor TO {target.user or '<role>'})"
                )
        except BaseException:
            conn.close()
            raise
        self._own_pid = conn.info.backend_pid
        return conn

    def poll(self, conn: Any) -> Snapshot:
        row = conn.execute(POLL_QUERY, prepare=True).fetchone()
        return build_snapshot(row, self._memo, self._own_pid)

    def cut_by_timeout(self, conn: Any, exc: BaseException) -> bool:
        """SQLSTATE 57014 (query_canceled) from our own statement timeout, on a session
        that is still open."""
        return (
            getattr(exc, "sqlstate", None) == "57014"
            and "statement timeout" in str(exc)
            and not conn.closed
        )

    def close(self, conn: Any) -> None:
        conn.close()
