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

import importlib
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from lockscope.testing.agent import InProcessAgent
    from lockscope.testing.redis_server import RedisServer
    from lockscope.testing.server import Server

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


def _session_server(module: str, class_name: str, doc: str) -> Any:
    """A session fixture serving one default ``lockscope.testing.<module>.<class_name>()``,
    the class imported on first use."""

    def serve() -> Iterator[Server]:
        server_class = getattr(importlib.import_module(f"lockscope.testing.{module}"), class_name)
        with _serving(server_class()) as server:
            yield server

    serve.__doc__ = doc
    return pytest.fixture(scope="session")(serve)


redis_server = _session_server(
    "redis_server",
    "RedisServer",
    "One redis-server for the whole session (not flushed between tests: see ``redis_url``).",
)


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


zookeeper_server = _session_server(
    "zookeeper_server",
    "ZooKeeperServer",
    "One standalone ZooKeeper for the session (tick 500 ms: sessions may be as short as 1 s).",
)
postgres_server = _session_server(
    "postgres_server",
    "PostgresServer",
    "One PostgreSQL cluster for the session, with database ``lockscope`` (trust auth).",
)
mariadb_server = _session_server(
    "mariadb_server",
    "MariaDBServer",
    "One MariaDB for the session: passwordless ``root@127.0.0.1``, database ``lockscope``.",
)
alertmanager_server = _session_server(
    "prometheus",
    "AlertmanagerServer",
    "One Alertmanager for the session (clustering off, a do-nothing receiver).",
)
prometheus_server = _session_server(
    "prometheus",
    "PrometheusServer",
    "One Prometheus for the session (1 s scrape and evaluation); point it at a target with "
    '``prometheus_server.scrape(["127.0.0.1:PORT"])``.',
)


@pytest.fixture
def lockscope_agent() -> Iterator[InProcessAgent]:
    """A lockscope agent on free loopback ports, fresh for each test (needs the ``agent``
    extra); point the shim at it with ``LOCKSCOPE_ENDPOINT=lockscope_agent.otlp_url``."""
    from lockscope.testing.agent import InProcessAgent

    with InProcessAgent() as agent:
        yield agent
