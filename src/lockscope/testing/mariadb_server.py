"""A throw-away MariaDB for tests (Debian package ``mariadb-server``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Unpack

from lockscope.testing.server import Server, ServerOptions, ServerStartError

__all__ = ["MariaDBServer"]


class MariaDBServer(Server):
    """mariadbd with a private data directory, a passwordless ``root`` and a database.

    The data directory is created with ``mariadb-install-db`` (normal, passwordless root
    authentication, no test database); ``root@127.0.0.1`` is granted everything, so
    clients connect with :attr:`url` over TCP. The grant tables are real: SQL behaves as
    on any server. Binary logging is off and InnoDB writes its log to the kernel at every
    commit (``innodb_flush_log_at_trx_commit=2``), so a :meth:`kill` loses nothing that
    was committed.
    """

    name = "mariadb"
    package = "mariadb-server"

    def __init__(
        self,
        *,
        mariadbd: str = "/usr/sbin/mariadbd",
        install_db: str = "mariadb-install-db",
        client: str = "mariadb",
        admin: str = "mariadb-admin",
        dbname: str = "lockscope",
        max_connections: int = 300,
        **options: Unpack[ServerOptions],
    ) -> None:
        """Prepare a server; see :class:`~lockscope.testing.server.Server`.

        :param mariadbd: the server executable.
        :param install_db: ``mariadb-install-db``, which creates the system tables.
        :param client: the ``mariadb`` command-line client (creates the database).
        :param admin: ``mariadb-admin`` (readiness probe).
        :param dbname: a database created after the first start.
        """
        super().__init__(**options)
        self.mariadbd = mariadbd
        self.install_db = install_db
        self.client = client
        self.admin = admin
        self.dbname = dbname
        self.user = "root"
        self.password = ""
        self.max_connections = max_connections
        self.data_dir = self.base_dir / "data"
        self.socket_path = self.base_dir / "mariadb.sock"

    @property
    def url(self) -> str:
        """``mysql://root@127.0.0.1:PORT/lockscope`` (SQLAlchemy style; add ``+pymysql``)."""
        return f"mysql://{self.user}@{self.address}/{self.dbname}"

    def binaries(self) -> Sequence[str]:
        return [self.mariadbd, self.install_db, self.client, self.admin]

    def _as_root(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; the private datadir is ours anyway.
        return ["--user=root"] if os.geteuid() == 0 else []

    def initialise(self) -> None:
        (self.base_dir / "tmp").mkdir(exist_ok=True)
        self.run_tool(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._as_root(),
            ],
            cwd=self.base_dir,
            timeout=self.startup_timeout,
            error=ServerStartError,
        )

    def command(self) -> Sequence[str]:
        return [
            self.mariadbd,
            "--no-defaults",
            *self._as_root(),
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base_dir / 'mariadb.pid'}",
            f"--tmpdir={self.base_dir / 'tmp'}",
            f"--max-connections={self.max_connections}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=48M",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
        ]

    def ready(self) -> bool:
        probe = subprocess.run(
            [
                self.admin,
                "--no-defaults",
                f"--socket={self.socket_path}",
                "--user=root",
                "--connect-timeout=1",
                "ping",
            ],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def after_first_start(self) -> None:
        self.sql(
            f"CREATE DATABASE IF NOT EXISTS `{self.dbname}`;"
            f" CREATE USER IF NOT EXISTS 'root'@'{self.host}';"
            f" GRANT ALL PRIVILEGES ON *.* TO 'root'@'{self.host}' WITH GRANT OPTION;"
        )

    def sql(self, statements: str) -> str:
        """Run SQL as root through the local socket with the ``mariadb`` client; return stdout."""
        return self.run_tool(
            [
                self.client,
                "--no-defaults",
                f"--socket={self.socket_path}",
                "--user=root",
                "--batch",
                "-e",
                statements,
            ]
        )

    def create_monitor_user(self, user: str = "lockscope_watch", password: str = "watch") -> str:
        """Create (or reset) a user with only ``PROCESS`` (and ``SELECT`` on
        ``performance_schema``), the least privilege the agent's database watcher needs,
        and load the ``metadata_lock_info`` plugin (GET_LOCK holders); returns its URL."""
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        self.sql(
            f"CREATE USER IF NOT EXISTS '{user}'@'{self.host}';"
            f" ALTER USER '{user}'@'{self.host}' IDENTIFIED BY '{quoted}';"
            f" GRANT PROCESS ON *.* TO '{user}'@'{self.host}';"
            f" GRANT SELECT ON performance_schema.* TO '{user}'@'{self.host}';"
        )
        plugins = self.sql(
            "SELECT COUNT(*) FROM information_schema.PLUGINS"
            " WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO'"
        )
        if plugins.split()[-1] == "0":
            self.sql("INSTALL SONAME 'metadata_lock_info';")
        return f"mysql://{user}:{password}@{self.address}/{self.dbname}"
