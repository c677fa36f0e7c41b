"""Pure parts of the database watcher: DSNs and their redaction, the settings precedence
(``--watch-database`` > ``LOCKSCOPE_WATCH_DATABASES`` > ``[[databases]]``), lock naming,
and the snapshot builders fed with the rows each dialect's poll returns (MySQL 8 has no
server here: its rows are built as performance_schema returns them)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from lockscope.agent import cli as agent_cli
from lockscope.agent.db_dsn import DsnError, parse_dsn, redact, targets_from_settings
from lockscope.agent.db_mysql import build_snapshot as mysql_snapshot
from lockscope.agent.db_mysql import user_lock_from_statement
from lockscope.agent.db_postgres import build_snapshot as pg_snapshot
from lockscope.agent.db_postgres import lock_name
from lockscope.agent.db_snapshot import SinceMemo


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_dsn_parsing_and_redaction() -> None:
    t = parse_dsn("postgres://watch:p%40ss@db.example:6432/app?sslmode=require")
    assert (t.kind, t.host, t.port, t.dbname, t.user) == (
        "postgresql", "db.example", 6432, "app", "watch",
    )  # fmt: skip
    assert t.password == "p@ss"
    assert t.namespace == "db.example:6432/app"
    assert t.name == "db.example:6432/app"
    assert t.options == {"sslmode": "require"}
    assert "p%40ss" not in t.display
    assert "p@ss" not in t.display
    assert t.display == "postgres://watch:***@db.example:6432/app?sslmode=require"
    assert "p@ss" not in repr(t)
    m = parse_dsn("mariadb://root@127.0.0.1/shop", poll_interval=0.25, name="shop")
    assert (m.kind, m.port, m.poll_interval, m.name, m.password) == (
        "mysql",
        3306,
        0.25,
        "shop",
        None,
    )
    assert redact("mysql://u:secret@h/db?password=other") == "mysql://u:***@h/db?password=***"


@pytest.mark.parametrize(
    "dsn",
    [
        "sqlite:///x.db",
        "postgresql://u:secret@h:5432/",
        "u:secret@h/db",
        "postgresql://u:secret@h:99999/db",
    ],
)
def test_bad_dsns_are_rejected_without_the_password(dsn: str) -> None:
    with pytest.raises(DsnError) as info:
        parse_dsn(dsn)
    assert "secret" not in str(info.value)


def test_password_file_and_tables(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    tables = [
        {"dsn": "postgresql://w@h/db", "name": "main", "poll_interval": 0.5,
         "password_file": str(secret)},
        {"dsn": "mysql://w@h2/db"},
    ]  # fmt: skip
    main, other = targets_from_settings((), None, tables)
    assert (main.name, main.poll_interval, main.password) == ("main", 0.5, "from-file")
    assert other.kind == "mysql"
    with pytest.raises(DsnError, match="unknown key"):
        targets_from_settings((), None, [{"dsn": "postgresql://h/db", "interval": 1}])
    with pytest.raises(DsnError, match="both named"):
        targets_from_settings(("postgresql://h/db", "postgres://h/db"))
    with pytest.raises(DsnError, match="password_file"):
        targets_from_settings((), None, [{"dsn": "postgresql://h/db", "password_file": "/nope"}])


def test_cli_precedence_flag_env_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[[databases]]\ndsn = "postgresql://file@h/db"\nname = "f"\n')
    env = {"LOCKSCOPE_WATCH_DATABASES": "postgresql://e1@h/db1, mysql://e2@h/db2"}
    flags = parse("--config", str(config), "--watch-database", "postgresql://flag@h/db")
    assert [t.user for t in agent_cli.resolve(flags, environ=env).databases] == ["flag"]
    no_flag = parse("--config", str(config))
    assert [t.user for t in agent_cli.resolve(no_flag, environ=env).databases] == ["e1", "e2"]
    assert [t.name for t in agent_cli.resolve(no_flag, environ={}).databases] == ["f"]
    assert agent_cli.resolve(parse(), environ={}).databases == ()


def test_cli_bad_dsn_exits_2_naming_it_without_the_password() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lockscope", "agent", "--watch-database", "redis://u:hunter2@h/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "redis://u:***@h/0" in result.stderr
    assert "hunter2" not in result.stderr


def test_postgres_lock_names() -> None:
    assert (
        lock_name({"locktype": "advisory", "classid": 0, "objid": 42, "objsubid": 1})
        == "advisory:42"
    )
    # pg_advisory_lock(-1): the bigint key is split into two oids.
    assert (
        lock_name(
            {"locktype": "advisory", "classid": 0xFFFFFFFF, "objid": 0xFFFFFFFF, "objsubid": 1}
        )
        == "advisory:-1"
    )
    assert (
        lock_name({"locktype": "advisory", "classid": 1, "objid": 0xFFFFFFFE, "objsubid": 2})
        == "advisory:1,-2"
    )
    assert (
        lock_name({"locktype": "relation", "relname": "public.accounts"}) == "table:public.accounts"
    )
    row = {"locktype": "tuple", "relname": "public.accounts", "page": 0, "tuple": 3}
    assert lock_name(row) == "row:public.accounts@(0,3)"
    xid = {"locktype": "transactionid", "xid": "731", "pid": 5}
    assert lock_name(xid) == "transaction:731"
    assert lock_name(xid, {5: "row:public.accounts@(0,3)"}) == "row:public.accounts@(0,3)"


def test_postgres_snapshot_soft_edges_and_clamped_holds() -> None:
    """W1 waits for H's transaction while holding the row's tuple lock; W2 waits for the
    tuple lock: both wait for one row, W1 is queued ahead of W2 (not its holder), H holds."""
    waiting = [
        {"pid": 11, "locktype": "transactionid", "mode": "ShareLock", "xid": "9",
         "blockers": [10], "waitstart_us": 1_000_000},
        {"pid": 12, "locktype": "tuple", "mode": "ExclusiveLock", "relname": "public.t",
         "page": 0, "tuple": 1, "blockers": [11], "waitstart_us": 1_100_000},
    ]  # fmt: skip
    granted = [
        {"pid": 11, "locktype": "tuple", "mode": "ExclusiveLock", "relname": "public.t",
         "page": 0, "tuple": 1},
        {"pid": 10, "locktype": "transactionid", "mode": "ExclusiveLock", "xid": "9"},
    ]  # fmt: skip
    sessions = [
        {"pid": p, "application_name": f"app{p}", "client": "10.0.0.1:5"} for p in (10, 11, 12)
    ]
    snap = pg_snapshot((2_000_000, waiting, granted, sessions), SinceMemo())
    assert snap.sessions[11].wait is not None
    assert snap.sessions[11].wait.name == "row:public.t@(0,1)"
    assert snap.sessions[12].wait is not None
    assert snap.sessions[12].wait.name == "row:public.t@(0,1)"
    assert list(snap.sessions[10].holds) == ["row:public.t@(0,1)"]
    assert not snap.sessions[11].holds  # queued ahead, not a holder
    assert snap.sessions[10].service == "app10"
    holds, waits = snap.entries("postgresql", "h:5432/db", min_wait_ns=0)
    assert len(holds) == 1
    assert len(waits) == 2
    # A wait younger than min_wait is held back, with the holds only it waits for.
    holds, waits = snap.entries("postgresql", "h:5432/db", min_wait_ns=int(0.95e9))
    assert [w["lockscope.db.session"] for w in waits] == [11]


def test_mysql_user_lock_from_statement() -> None:
    assert user_lock_from_statement("SELECT GET_LOCK('jobs', 10)") == "jobs"
    assert user_lock_from_statement('select get_lock("a\\"b", 1)') == 'a"b'
    assert user_lock_from_statement("SELECT GET_LOCK('it''s', 1)") == "it's"
    assert user_lock_from_statement("SELECT GET_LOCK(@name, 1)") is None
    assert user_lock_from_statement(None) is None


def test_mysql8_snapshot_from_performance_schema_rows() -> None:
    now = [(1000.0,)]
    records = [
        (
            21,
            999.5,
            "X,REC_NOT_GAP",
            "RECORD",
            "`shop`.`orders`",
            "PRIMARY",
            "7",
            20,
            "X,REC_NOT_GAP",
        )
    ]
    user_locks = [(30, "GRANTED", "jobs", None), (31, "PENDING", "jobs", None)]
    sessions = [(20, "app", "10.0.0.2:5000", "worker"), (21, "app", "10.0.0.3:5000", None),
                (30, "cron", "10.0.0.4:1", "mysql"), (31, "app", "10.0.0.5:1", "py")]  # fmt: skip
    snap = mysql_snapshot([now, records, user_locks, sessions], SinceMemo(), mysql8=True)
    assert snap.sessions[21].wait is not None
    assert snap.sessions[21].wait.name == "row:shop.orders@PRIMARY(7)"
    assert snap.sessions[21].wait.since_ns == int(999.5e9)
    assert list(snap.sessions[20].holds) == ["row:shop.orders@PRIMARY(7)"]
    assert snap.sessions[31].wait is not None
    assert snap.sessions[31].wait.name == "user_lock:jobs"
    assert list(snap.sessions[30].holds) == ["user_lock:jobs"]
    assert snap.sessions[20].service == "worker"
    assert snap.sessions[21].service == "10.0.0.3:5000"


def test_mariadb_snapshot_from_information_schema_rows() -> None:
    now = [(1000.0,)]
    records = [(8, 999.0, "8:5:3:2", 7, "7:5:3:2")]
    locks = [
        ("8:5:3:2", "X", "RECORD", "`lockscope`.`accounts`", "PRIMARY", "1"),
        ("7:5:3:2", "X", "RECORD", "`lockscope`.`accounts`", "PRIMARY", "1"),
    ]
    user_waits = [(9, 2500.0, "SELECT GET_LOCK('jobs', 100)")]
    holders = [(6, "jobs"), (6, "unrelated")]
    sessions = [(6, "root", "127.0.0.1:1", ""), (7, "root", "127.0.0.1:2", ""),
                (8, "root", "127.0.0.1:3", ""), (9, "root", "127.0.0.1:4", "")]  # fmt: skip
    snap = mysql_snapshot(
        [now, records, locks, user_waits, holders, sessions],
        SinceMemo(),
        mysql8=False,
        holders_known=True,
    )
    assert snap.sessions[9].wait is not None
    assert snap.sessions[9].wait.name == "user_lock:jobs"
    assert snap.sessions[9].wait.since_ns == int(1000e9) - int(2.5e9)
    assert list(snap.sessions[6].holds) == ["user_lock:jobs"]
    assert list(snap.sessions[7].holds) == ["row:lockscope.accounts@PRIMARY(1)"]


class _RecordedMysql8:
    """A PyMySQL connection replaying what a MySQL 8.0 server answers the watcher: the
    version, the grants and one poll's result sets, written from MySQL 8's documented
    performance_schema columns.  Not a server test: no MySQL 8 server can be installed on
    this project's machines (Debian ships MariaDB only; no PyPI package ships mysqld)."""

    def __init__(self, poll_results: list[list[tuple[object, ...]]]) -> None:
        self.sent: list[str] = []
        self.poll_results = poll_results
        self.open = True
        self._pending: list[list[tuple[object, ...]]] = []

    def thread_id(self) -> int:
        return 99

    def close(self) -> None:
        self.open = False

    def cursor(self) -> _RecordedMysql8:
        return self

    def __enter__(self) -> _RecordedMysql8:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str) -> None:
        self.sent.append(sql)
        if sql == "SELECT VERSION()":
            self._pending = [[("8.0.36",)]]
        elif sql == "SHOW GRANTS":
            self._pending = [[("GRANT PROCESS ON *.* TO `lockscope_watch`@`%`",)]]
        elif "performance_schema.data_lock_waits" in sql:
            self._pending = [list(rows) for rows in self.poll_results]
        else:
            self._pending = [[]]

    def fetchone(self) -> tuple[object, ...] | None:
        rows = self.fetchall()
        return rows[0] if rows else None

    def fetchall(self) -> list[tuple[object, ...]]:
        return self._pending[0] if self._pending else []

    def nextset(self) -> bool:
        self._pending = self._pending[1:]
        return bool(self._pending)


def test_mysql8_dialect_with_recorded_server_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MySQL 8 path of the watcher end to end below the network: the version makes it
    pick ``max_execution_time`` and the performance_schema queries, one multi-statement
    poll's result sets become the snapshot (the watcher's own session left out), and
    error 3024 is a poll cut by the statement timeout.  Recorded rows, no server."""
    import pymysql

    from lockscope.agent.db_mysql import MYSQL8_QUERIES, MysqlDialect

    poll: list[list[tuple[object, ...]]] = [
        [(1000.0,)],
        [(21, 999.5, "X,REC_NOT_GAP", "RECORD", "`shop`.`orders`", "PRIMARY", "7", 20,
          "X,REC_NOT_GAP")],
        [(30, "GRANTED", "jobs", None), (31, "PENDING", "jobs", 1_500_000_000_000),
         (99, "GRANTED", "own", None)],
        [(20, "app", "10.0.0.2:5000", "worker"), (21, "app", "10.0.0.3:5000", None),
         (30, "cron", "10.0.0.4:1", "mysql"), (31, "app", "10.0.0.5:1", "py")],
    ]  # fmt: skip
    conn = _RecordedMysql8(poll)
    monkeypatch.setattr(pymysql, "connect", lambda **kwargs: conn)
    dialect = MysqlDialect()
    target = parse_dsn("mysql://lockscope_watch:pw@db8:3306/shop", name="my8")
    assert dialect.connect(target) is conn
    assert "SET SESSION max_execution_time = 2000" in conn.sent
    assert not any("max_statement_time" in sql for sql in conn.sent)
    snap = dialect.poll(conn)
    assert conn.sent[-1] == ";".join(MYSQL8_QUERIES)
    assert snap.sessions[21].wait is not None
    assert snap.sessions[21].wait.name == "row:shop.orders@PRIMARY(7)"
    assert list(snap.sessions[20].holds) == ["row:shop.orders@PRIMARY(7)"]
    assert snap.sessions[31].wait is not None
    assert snap.sessions[31].wait.name == "user_lock:jobs"
    assert list(snap.sessions[30].holds) == ["user_lock:jobs"]
    assert 99 not in snap.sessions  # the watcher's own session (its connection id)
    assert snap.sessions[30].application == "mysql"
    timeout = pymysql.err.OperationalError(3024, "Query execution was interrupted")
    assert dialect.cut_by_timeout(conn, timeout)
    assert not dialect.cut_by_timeout(conn, pymysql.err.OperationalError(2013, "lost"))
    conn.close()
    assert not dialect.cut_by_timeout(conn, timeout)


def test_deadlock_victim_errors_of_each_driver() -> None:
    """The driver errors that say the server aborted the statement to break a deadlock
    (real exception classes, no server)."""
    import psycopg
    import pymysql

    from lockscope.instrumentation.db_sessions import deadlock_victim

    assert deadlock_victim(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert not deadlock_victim(psycopg.errors.QueryCanceled("statement timeout"))
    assert deadlock_victim(pymysql.err.OperationalError(1213, "Deadlock found"))
    assert deadlock_victim(pymysql.err.OperationalError(3058, "Deadlock found (user lock)"))
    assert not deadlock_victim(pymysql.err.OperationalError(1205, "Lock wait timeout"))
    assert not deadlock_victim(ValueError(1213))
