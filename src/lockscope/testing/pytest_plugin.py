"""pytest fixtures that start real lock servers; registered automatically (``pytest11``).

Installing lockscope makes these fixtures available in every test suite, with no import:

``redis_server`` (session)
    a :class:`~lockscope.testing.RedisServer`: ``.url``, ``.host``, ``.port``, ``.pid``,
    ``.kill()``, ``.pause()``, ``.resume()``, ``.stop()``, ``.start()``, ``.flush()``.
``redis_servers`` (session)
    three independent Redis servers, for Redlock.
``redis_url`` (function)
    the URL of ``redis_server``, flushed before the test.
``zookeeper_server`` (session)
    a :class:`~lockscope.testing.ZooKeeperServer` (``.hosts`` for kazoo).
``postgres_server`` (session)
    a :class:`~lockscope.testing.PostgresServer` (``.url``, ``.dsn``).
``mariadb_server`` (session)
    a :class:`~lockscope.testing.MariaDBServer` (``.url``).
``alertmanager_server``, ``prometheus_server`` (session)
    an :class:`~lockscope.testing.prometheus.AlertmanagerServer` (``.url``, ``.alerts()``)
    and a :class:`~lockscope.testing.prometheus.PrometheusServer` (``.scrape()``,
    ``.query()``).
``lockscope_agent`` (function)
    a started in-process agent, :class:`~lockscope.testing.agent.InProcessAgent`
    (``.otlp_url``, ``.http_url``, ``.state``, ``.get()``, ``.post_events()``), stopped after
    the test.

Servers start on first use, once per session, and stop at the end of the session. After
every test, a server that the test paused, stopped or killed is resumed or restarted, so a
failing fault test cannot break the tests after it.

A missing server binary makes the tests that use it error with
:class:`~lockscope.testing.ServerNotInstalled`, naming the Debian package to install; it
never skips them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    from lockscope.testing.agent import InProcessAgent
    from lockscope.testing.mariadb_server import MariaDBServer
    from lockscope.testing.postgres_server import PostgresServer
    from lockscope.testing.prometheus import AlertmanagerServer, PrometheusServer
    from lockscope.testing.redis_server import RedisServer
    from lockscope.testing.server import Server
    from lockscope.testing.zookeeper_server import ZooKeeperServer

# Servers started in this session, healed after each test. The plugin imports the server
# classes only inside fixtures, so suites that never use them pay nothing.
_started: list[Server] = []
_S = TypeVar("_S", bound="Server")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _track(server: Server) -> None:
    _started.append(server)
    # A CI job cancelled with SIGTERM would otherwise die without running any teardown and
    # leave the servers behind; as an interrupt, pytest finishes the session cleanly.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def _serving(server: _S) -> Iterator[_S]:
    """Start ``server``, heal it after each test while in use, then close it."""
    with server:
        _track(server)
        try:
            yield server
        finally:
            _started.remove(server)


@pytest.fixture(autouse=True)
def _lockscope_heal_servers() -> Iterator[None]:
    """After each test, resume or restart any session server the test left broken."""
    yield
    for server in list(_started):
        server.ensure_running()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (not flushed between tests: see ``redis_url``)."""
    from lockscope.testing.redis_server import RedisServer

    with _serving(RedisServer()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[list[RedisServer]]:
    """Three independent redis-servers (for Redlock), separate from ``redis_server``."""
    from lockscope.testing.redis_server import RedisServer

    with ExitStack() as stack:
        yield [stack.enter_context(_serving(RedisServer())) for _ in range(3)]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, running and flushed for this test."""
    redis_server.ensure_running()
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def zookeeper_server() -> Iterator[ZooKeeperServer]:
    """One standalone ZooKeeper for the session (tick 500 ms: sessions may be as short as 1 s)."""
    from lockscope.testing.zookeeper_server import ZooKeeperServer

    with _serving(ZooKeeperServer()) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session, with database ``lockscope`` (trust auth)."""
    from lockscope.testing.postgres_server import PostgresServer

    with _serving(PostgresServer()) as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One MariaDB for the session: passwordless ``root@127.0.0.1``, database ``lockscope``."""
    from lockscope.testing.mariadb_server import MariaDBServer

    with _serving(MariaDBServer()) as server:
        yield server


@pytest.fixture(scope="session")
def alertmanager_server() -> Iterator[AlertmanagerServer]:
    """One Alertmanager for the session (clustering off, a do-nothing receiver)."""
    from lockscope.testing.prometheus import AlertmanagerServer

    with _serving(AlertmanagerServer()) as server:
        yield server


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[PrometheusServer]:
    """One Prometheus for the session (1 s scrape and evaluation); point it at a target
    with ``prometheus_server.scrape(["127.0.0.1:PORT"])``."""
    from lockscope.testing.prometheus import PrometheusServer

    with _serving(PrometheusServer()) as server:
        yield server


@pytest.fixture
def lockscope_agent() -> Iterator[InProcessAgent]:
    """A lockscope agent on free loopback ports, fresh for each test (needs the ``agent``
    extra); point the shim at it with ``LOCKSCOPE_ENDPOINT=lockscope_agent.otlp_url``."""
    from lockscope.testing.agent import InProcessAgent

    with InProcessAgent() as agent:
        yield agent
