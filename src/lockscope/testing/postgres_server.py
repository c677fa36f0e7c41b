"""A throw-away PostgreSQL cluster for tests (Debian package ``postgresql``)."""

from __future__ import annotations

import glob
import os
import pwd
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

from lockscope.testing.server import Server, ServerOptions, ServerStartError

__all__ = ["PostgresServer", "find_bin_dir"]


def find_bin_dir() -> str:
    """The newest ``/usr/lib/postgresql/<major>/bin`` (Debian's layout), or ``""``."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/postgres")

    def major(path: str) -> int:
        version = Path(path).parent.parent.name
        return int(version) if version.isdigit() else 0

    return str(Path(max(candidates, key=major)).parent) if candidates else ""


class PostgresServer(Server):
    """A private PostgreSQL cluster (initdb) with trust authentication on loopback.

    PostgreSQL refuses to run as root, so when the tests run as root the cluster is
    created and run as ``run_as`` (``nobody`` by default), which then owns the
    temporary directory. ``fsync`` and ``full_page_writes`` are off: they only protect
    against an operating-system crash, which tests do not simulate. Commits still reach
    the kernel before they return, so a server killed with :meth:`kill` recovers every
    committed transaction when it starts again.
    """

    name = "postgres"
    package = "postgresql"
    #: SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        *,
        bin_dir: str | None = None,
        user: str = "postgres",
        dbname: str = "lockscope",
        run_as: str = "nobody",
        max_connections: int = 200,
        **options: Unpack[ServerOptions],
    ) -> None:
        """Prepare a cluster; see :class:`~lockscope.testing.server.Server`.

        :param bin_dir: directory with initdb/postgres/pg_isready/createdb; the newest
            ``/usr/lib/postgresql/*/bin`` when omitted.
        :param user: the superuser role clients connect as.
        :param dbname: a database created after the first start.
        :param run_as: the unprivileged OS user the server runs as when we are root.
        """
        super().__init__(**options)
        self.bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
        self.user = user
        self.dbname = dbname
        self.max_connections = max_connections
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self._account = pwd.getpwnam(run_as) if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/lockscope`` (SQLAlchemy style)."""
        return f"postgresql://{self.user}@{self.address}/{self.dbname}"

    @property
    def dsn(self) -> str:
        """libpq key=value string, for ``psycopg.connect(dsn)``."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    def _bin(self, name: str) -> str:
        # Without a bin dir, a relative name makes check_installed report it as missing.
        return os.path.join(self.bin_dir, name) if self.bin_dir else f"postgresql-bin/{name}"

    def binaries(self) -> Sequence[str]:
        return [self._bin(name) for name in ("initdb", "postgres", "pg_isready", "createdb")]

    def popen_kwargs(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {
            "user": self._account.pw_uid,
            "group": self._account.pw_gid,
            "extra_groups": [],
        }

    def environment(self) -> dict[str, str]:
        # initdb picks its locale from the environment; one that is not generated fails it.
        return {"LC_ALL": "C", "LANG": "C"}

    def initialise(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        if self._account is not None:
            for parent in self.base_dir.resolve().parents:
                if not os.stat(parent).st_mode & 0o001:
                    raise ServerStartError(
                        f"postgres runs as {self._account.pw_name!r}, who cannot enter "
                        f"{parent}; choose a base_dir (or TMPDIR) under a world-searchable path"
                    )
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self.run_tool(
            [
                self._bin("initdb"),
                "--pgdata", str(self.data_dir),
                "--username", self.user,
                "--auth", "trust",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
            ],
            cwd=self.base_dir,
            env={**os.environ, **self.environment()},
            timeout=self.startup_timeout,
            error=ServerStartError,
            **self.popen_kwargs(),
        )  # fmt: skip

    def command(self) -> Sequence[str]:
        return [
            self._bin("postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-h", self.host,
            "-k", str(self.socket_dir),
            "-c", f"max_connections={self.max_connections}",
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip

    def ready(self) -> bool:
        probe = subprocess.run(
            [self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"],
            check=False,
        )
        return probe.returncode == 0

    def after_first_start(self) -> None:
        self.create_database(self.dbname)

    def create_database(self, dbname: str) -> None:
        """Create database ``dbname`` (owned by :attr:`user`) with ``createdb``."""
        self.run_tool(
            [self._bin("createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, dbname],
            error=ServerStartError,
        )

    def create_monitor_role(self, role: str = "lockscope_watch", password: str = "watch") -> str:
        """Create (or reset) a login role with only ``pg_monitor``, the least privilege the
        agent's database watcher needs, and require its password (scram) over TCP while
        every other role keeps trust authentication; returns its URL DSN."""
        hba = self.data_dir / "pg_hba.conf"
        line = f"host all {role} {self.host}/32 scram-sha-256\n"
        text = hba.read_text()
        if line not in text:
            hba.write_text(line + text)
        quoted = password.replace("'", "''")
        self.psql(
            f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN "
            f"NULL; END $$; ALTER ROLE {role} LOGIN PASSWORD '{quoted}'; "
            f"GRANT pg_monitor TO {role}; SELECT pg_reload_conf();"
        )
        return f"postgresql://{role}:{password}@{self.address}/{self.dbname}"

    def psql(self, sql: str) -> str:
        """Run SQL as the superuser with ``psql``; return its output."""
        return self.run_tool(
            [
                self._bin("psql"), "-h", self.host, "-p", str(self.port), "-U", self.user,
                "-d", self.dbname, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql,
            ]
        )  # fmt: skip
