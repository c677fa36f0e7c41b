"""A throw-away standalone ZooKeeper for tests (Debian package ``zookeeper``)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Unpack

from lockscope.testing.server import Server, ServerOptions

__all__ = ["ZooKeeperServer"]

#: Debian's jar; its manifest's Class-Path names the dependency jars in /usr/share/java.
DEBIAN_JAR = "/usr/share/java/zookeeper.jar"


class ZooKeeperServer(Server):
    """ZooKeeper in standalone mode, run from Debian's jar with ``java``.

    ``tick_time`` is 500 ms by default, so the smallest session timeout the server grants
    is 1 s (two ticks) and session-expiry tests run fast; ask kazoo for
    ``timeout=1.0`` to use it. The four-letter words ``ruok``, ``srvr``, ``stat``,
    ``mntr``, ``cons`` and ``dump`` are enabled; the admin HTTP server is off.
    """

    name = "zookeeper"
    package = "zookeeper"

    def __init__(
        self,
        *,
        java: str = "java",
        jar: str = DEBIAN_JAR,
        tick_time_ms: int = 500,
        max_session_timeout_ms: int = 60_000,
        **options: Unpack[ServerOptions],
    ) -> None:
        """Prepare a ZooKeeper; see :class:`~lockscope.testing.server.Server`.

        :param java: the java executable (ZooKeeper needs Java 11 or later).
        :param jar: ZooKeeper's jar, with its dependencies on the manifest class path.
        :param tick_time_ms: ZooKeeper's tick; sessions last at least two ticks.
        :param max_session_timeout_ms: the longest session timeout the server grants.
        """
        super().__init__(**options)
        self.java = java
        self.jar = jar
        self.tick_time_ms = tick_time_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.config_path = self.base_dir / "zoo.cfg"

    @property
    def hosts(self) -> str:
        """``127.0.0.1:PORT``, for ``kazoo.client.KazooClient(hosts=...)``."""
        return self.address

    def required_files(self) -> Sequence[str]:
        return [self.jar]

    def initialise(self) -> None:
        data_dir = self.base_dir / "data"
        data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_time_ms}",
                    f"dataDir={data_dir}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={self.host}",
                    "maxClientCnxns=0",
                    f"minSessionTimeout={2 * self.tick_time_ms}",
                    f"maxSessionTimeout={self.max_session_timeout_ms}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons,dump",
                    # Tests need no durability against power loss; fsync only slows them.
                    "forceSync=no",
                    "",
                ]
            ),
            encoding="utf-8",
        )

    def command(self) -> Sequence[str]:
        return [
            self.java,
            # A small heap and the client compiler start the JVM faster; enough for tests.
            "-Xms32m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.4lw.commands.whitelist=*",
            "-cp",
            self.jar,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.config_path),
        ]

    def ready(self) -> bool:
        try:
            # A standalone server that is not serving yet answers srvr without "Mode:".
            return "Mode: standalone" in self.four_letter_word("srvr", timeout=0.5)
        except OSError:
            return False

    def four_letter_word(self, word: str, timeout: float = 5.0) -> str:
        """Send a four-letter admin command (``ruok``, ``srvr``, ``mntr``...); return the reply."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(word.encode("ascii"))
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
