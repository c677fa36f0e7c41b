"""Shared test configuration: the server fixtures come from lockscope's own pytest plugin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def new_client(zookeeper_server: Any) -> Iterator[Callable[..., Any]]:
    """Factory of started kazoo clients (one session each), stopped after the test."""
    from kazoo.client import KazooClient

    zookeeper_server.ensure_running()
    clients: list[Any] = []

    def make(timeout: float = 10.0) -> Any:
        client = KazooClient(hosts=zookeeper_server.hosts, timeout=timeout)
        client.start(timeout=20)
        clients.append(client)
        return client

    yield make
    for client in clients:
        try:
            client.stop()
            client.close()
        except Exception:
            pass
