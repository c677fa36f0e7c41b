"""Client ownership: a kazoo client given by the caller, or one a lock owns, and lock paths."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from lockscope.errors import BackendUnavailable
from lockscope.events import zookeeper_namespace

DEFAULT_BASE_PATH = "/lockscope"
"""Relative lock names live under this znode (``"orders"`` -> ``/lockscope/orders``)."""


def default_identifier() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_path(name: str, base_path: str) -> str:
    path = name if name.startswith("/") else f"{base_path.rstrip('/')}/{name}"
    if path != "/":
        path = path.rstrip("/")
    if path == "/" or "//" in path:
        raise ValueError(f"not a usable lock path: {path!r}")
    return path


class Connection:
    """A kazoo client given by the caller, or one this lock owns (started on first use)."""

    def __init__(
        self,
        client_or_hosts: KazooClient | str,
        session_timeout: float,
        connect_timeout: float,
    ) -> None:
        if isinstance(client_or_hosts, str):
            self.client: Any = KazooClient(hosts=client_or_hosts, timeout=session_timeout)
            self.owned = True
        else:
            self.client = client_or_hosts
            self.owned = False
        self._connect_timeout = connect_timeout
        self._started = not self.owned
        self._start_lock = threading.Lock()

    @property
    def namespace(self) -> str:
        """The ensemble (sorted ``host:port`` list) plus the chroot: where the locks live."""
        return zookeeper_namespace(self.client.hosts, self.client.chroot)

    def ensure_started(self) -> None:
        with self._start_lock:
            if self._started:
                return
            try:
                self.client.start(timeout=self._connect_timeout)
            except (KazooTimeoutError, KazooException) as exc:
                raise BackendUnavailable(
                    f"cannot connect to ZooKeeper at {self.namespace}: {exc}"
                ) from exc
            self._started = True

    def session_id(self) -> int | None:
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    def close(self) -> None:
        if self.owned and self._started:
            self._started = False
            try:
                self.client.stop()
            finally:
                self.client.close()
