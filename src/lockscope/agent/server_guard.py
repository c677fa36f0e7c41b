"""Connection limits and header timeouts for the agent's two listeners (slow-client defence).

aiohttp reads request headers without a deadline of its own (its keep-alive timer is an
hour by default) and accepts connections until the process runs out of file descriptors;
then ``accept()`` fails with ``EMFILE`` and *every* client, ``/healthz`` and ingest
included, waits.  So each listener runs behind a :class:`ConnectionGuard`, shared by both:

- **header timeout**: a connection that has no request in progress (it is sending its
  headers, or it is idle between requests) for ``header_timeout`` seconds is closed.  A
  well-behaved exporter sends a whole request at once, so only slow or silent clients hit
  it.  Counted as ``lockscope_agent_connections_closed_total{reason="header_timeout"}``.
- **connection limit**: at most ``max_connections`` connections on both listeners
  together, and never more than the file-descriptor limit allows (a reserve is kept for
  the agent's own files and outbound connections).  A new connection over the limit makes
  room by closing the oldest connection with no request in progress (a slow or idle
  client: the newcomer is probably a probe or an exporter that sends at once); if every
  connection is busy the newcomer is closed.  Counted with ``reason="limit"``.
- **body timeout** (the OTLP receiver applies it while it streams a body): 408.

Requests in progress are known through :meth:`ConnectionGuard.middleware`, which both
applications install.  TLS handshakes get the header timeout too (``ssl_handshake_timeout``).
"""

from __future__ import annotations

import asyncio
import resource
import ssl
import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lockscope.agent.background import BackgroundTask
from lockscope.agent.otlp_stats import ReceiverStats

__all__ = ["BACKLOG", "FD_RESERVE", "ConnectionGuard", "GuardedSite", "fd_bounded"]

BACKLOG: Final = 32
"""Listen backlog per listener.  asyncio accepts up to this many connections in one go,
before the connections the guard closed to make room have released their descriptors, so
a burst can briefly exceed the limit by this much per listener."""
FD_RESERVE: Final = 128
"""File descriptors kept free for everything but client connections: a burst of accepts
on both listeners (2 x ``BACKLOG``) plus the state file, database watches, Alertmanager
and logs."""
_SWEEP_INTERVAL: Final = 0.5


def fd_bounded(limit: int) -> int:
    """``limit``, lowered so that connections never exhaust the process's descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return limit
    return max(8, min(limit, soft - FD_RESERVE))


class _Conn:
    __slots__ = ("busy", "handler", "idle_since", "transport")

    def __init__(self, handler: asyncio.Protocol, now: float) -> None:
        self.handler = handler
        self.transport: asyncio.BaseTransport | None = None
        self.busy = 0
        self.idle_since = now
        """When the connection was opened or finished its last request."""


class _GuardedProtocol(asyncio.Protocol):
    """Wraps one aiohttp request handler: forwards everything, tells the guard."""

    __slots__ = ("_conn", "_guard", "_inner", "_started")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._conn = _Conn(inner, time.monotonic())
        self._started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn.transport = transport
        if not self._guard._admit(self._conn):
            _abort(transport)
            return
        self._started = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._release(self._conn)
        if self._started:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _abort(transport: asyncio.BaseTransport) -> None:
    # abort, not close: close() on a TLS transport waits for the peer's close_notify, and a
    # slow client would keep its descriptor for that long.
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class ConnectionGuard:
    """Header timeout and connection limit over any number of aiohttp listeners."""

    def __init__(
        self, max_connections: int, header_timeout: float, stats: ReceiverStats | None = None
    ) -> None:
        self.max_connections = fd_bounded(max_connections)
        """The effective limit (the configured one, lowered to fit the descriptor limit)."""
        self.header_timeout = header_timeout
        self.stats = stats if stats is not None else ReceiverStats()
        self.closed = self.stats.connections_closed
        """Connections the guard closed, by reason (``header_timeout``, ``limit``)."""
        self._by_handler: dict[asyncio.Protocol, _Conn] = {}
        self._sweeper = BackgroundTask("lockscope-conn-guard")

    @property
    def open_connections(self) -> int:
        """Client connections open now (both listeners)."""
        return len(self._by_handler)

    # -- wiring -----------------------------------------------------------------------------
    def protocol_factory(self, server: web.Server) -> _GuardedProtocol:
        """A guarded protocol around a new handler of ``server``."""
        return _GuardedProtocol(self, server())

    @property
    def middleware(self) -> Middleware:
        """Marks a connection busy while one of its requests is handled."""

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            conn = self._by_handler.get(request.protocol)
            if conn is None:
                return await handler(request)
            conn.busy += 1
            try:
                return await handler(request)
            finally:
                conn.busy -= 1
                conn.idle_since = time.monotonic()

        return track

    def start(self) -> None:
        """Start closing connections past their header timeout (inside the event loop)."""
        self._sweeper.start(self._sweep_loop)

    async def stop(self) -> None:
        """Stop the sweeper."""
        await self._sweeper.stop()

    # -- policy -----------------------------------------------------------------------------
    def _admit(self, conn: _Conn) -> bool:
        if len(self._by_handler) >= self.max_connections:
            victim = min(
                (c for c in self._by_handler.values() if not c.busy),
                key=lambda c: c.idle_since,
                default=None,
            )
            self.closed["limit"] += 1
            if victim is None:
                return False
            self._close(victim)
        self._by_handler[conn.handler] = conn
        self.stats.connections_open = len(self._by_handler)
        return True

    def _release(self, conn: _Conn) -> None:
        self._by_handler.pop(conn.handler, None)
        self.stats.connections_open = len(self._by_handler)

    def _close(self, conn: _Conn) -> None:
        # Forgotten now, so the limit has room at once; the transport tells the handler
        # (connection_lost) on the next loop turn.
        self._by_handler.pop(conn.handler, None)
        self.stats.connections_open = len(self._by_handler)
        if conn.transport is not None:
            _abort(conn.transport)

    def sweep(self, now: float | None = None) -> int:
        """Close connections idle (or stuck in their headers) past the header timeout;
        returns how many were closed."""
        now = time.monotonic() if now is None else now
        deadline = now - self.header_timeout
        stale = [c for c in self._by_handler.values() if not c.busy and c.idle_since < deadline]
        for conn in stale:
            self._close(conn)
        self.closed["header_timeout"] += len(stale)
        return len(stale)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(_SWEEP_INTERVAL, self.header_timeout / 2))
            self.sweep()


class GuardedSite(web.TCPSite):
    """A :class:`aiohttp.web.TCPSite` whose connections pass through a
    :class:`ConnectionGuard` (and whose TLS handshakes get the header timeout)."""

    __slots__ = ("_guard",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = BACKLOG,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._guard = guard

    async def start(self) -> None:
        # web.BaseSite.start registers the site with its runner (so stop/cleanup see it);
        # TCPSite.start would serve the bare handler factory, so it is not called.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert isinstance(server, web.Server)
        guard = self._guard
        self._server = await loop.create_server(
            lambda: guard.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=guard.header_timeout if self._ssl_context else None,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port
