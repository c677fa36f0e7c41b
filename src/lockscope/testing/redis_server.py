"""A throw-away redis-server for tests (Debian package ``redis-server``)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Unpack

from lockscope.testing.server import Server, ServerOptions

__all__ = ["RedisServer"]


class RedisServer(Server):
    """redis-server on a free loopback port, without persistence by default.

    ``appendonly=True`` turns on the append-only file (fsync every write), so that data
    survives :meth:`kill` + :meth:`start`; without it a restarted server comes back empty,
    which is the "restart without persistence" case of the Redlock debate.

    The harness talks RESP over a plain socket (``PING``, ``FLUSHALL``), so it does not
    need redis-py; tests use whichever client they like with :attr:`url`.
    """

    name = "redis"
    package = "redis-server"
    default_startup_timeout = 30.0

    def __init__(
        self,
        *,
        binary: str = "redis-server",
        appendonly: bool = False,
        **options: Unpack[ServerOptions],
    ) -> None:
        """Prepare a redis-server; see :class:`~lockscope.testing.server.Server`.

        :param binary: redis-server executable (name on ``PATH`` or a path).
        :param appendonly: persist every write to an AOF in the data directory.
        """
        super().__init__(**options)
        self.binary = binary
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, for ``redis.Redis.from_url``."""
        return f"redis://{self.address}/0"

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.base_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", "",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            return bool(self.execute("PING", timeout=0.5) == "PONG")
        except OSError:
            return False

    def execute(self, *args: str, timeout: float = 5.0) -> Any:
        """Run one command over a fresh connection; return a simple reply as a string.

        Enough for the harness (``PING``, ``FLUSHALL``, ``DBSIZE``); errors raise
        :class:`RuntimeError`. Use a real client for anything else.
        """
        request = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            request += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                reply += chunk
        kind, body = reply[:1], reply[1:-2].decode()
        if kind == b"-":
            raise RuntimeError(f"redis error: {body}")
        if kind == b":":
            return int(body)
        return body

    def flush(self) -> None:
        """Delete every key in every database (``FLUSHALL``)."""
        self.execute("FLUSHALL")
