"""Real lock servers for tests: lockscope's own, and yours.

Like ``kazoo.testing``, this package starts real servers -- redis-server, ZooKeeper,
PostgreSQL, MariaDB -- on free loopback ports in temporary directories, and stops them
at the end. Fault helpers pause (SIGSTOP), resume and kill a server or any process, so
lock code can be tested against the failures it exists for.

In pytest, the fixtures are registered automatically when lockscope is installed
(``redis_server``, ``redis_servers``, ``redis_url``, ``zookeeper_server``,
``postgres_server``, ``mariadb_server``; see :mod:`lockscope.testing.pytest_plugin`).
Anywhere else, use a server as a context manager::

    from lockscope.testing import RedisServer, faults

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        with faults.paused(server.pid):
            ...  # requests time out here

The servers need the Debian packages ``redis-server``, ``zookeeper``, ``postgresql`` and
``mariadb-server``; a missing one raises :class:`ServerNotInstalled` naming the package.
"""

from lockscope.testing import faults
from lockscope.testing.mariadb_server import MariaDBServer
from lockscope.testing.postgres_server import PostgresServer
from lockscope.testing.redis_server import RedisServer
from lockscope.testing.server import (
    Server,
    ServerNotInstalled,
    ServerStartError,
    free_port,
    port_open,
)
from lockscope.testing.zookeeper_server import ZooKeeperServer

__all__ = [
    "MariaDBServer",
    "PostgresServer",
    "RedisServer",
    "Server",
    "ServerNotInstalled",
    "ServerStartError",
    "ZooKeeperServer",
    "faults",
    "free_port",
    "port_open",
]
