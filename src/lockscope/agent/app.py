"""Assembling the agent: two aiohttp applications on two addresses sharing one state.

- the **OTLP app** (default ``127.0.0.1:4318``): ``POST /v1/logs``, ``/v1/traces``,
  ``/v1/metrics`` (:mod:`lockscope.agent.otlp_receiver`);
- the **HTTP app** (default ``127.0.0.1:9477``): the JSON API
  (:mod:`lockscope.agent.web_api`), ``/healthz`` (200 while the process serves) and
  ``/readyz`` (200 once both listeners are up and the state is ready, 503 before and while
  shutting down).

Both carry the same :class:`~lockscope.agent.state.AgentState` (and the other objects of
:mod:`lockscope.agent.app_keys`); a background task calls ``state.tick()`` every
``tick_interval`` seconds so time-based findings (stale holders, dead processes) appear
without new events.

:class:`AgentRunner` runs all of it inside an existing event loop (tests, ``lockscope
demo``); bind port 0 and read :attr:`AgentRunner.otlp_port`/:attr:`AgentRunner.http_port`.
:func:`run_agent` is the ``lockscope agent`` process: it serves until SIGTERM or SIGINT,
then stops accepting connections, lets in-flight requests finish (up to
``shutdown_timeout``), stops the tick loop and returns 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import signal
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final, TypedDict, Unpack

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lockscope.agent.app_keys import (
    ALERTMANAGER_URLS_KEY,
    CONFIG_KEY,
    DEFAULT_MAX_REQUEST_BYTES,
    EVENT_TAPS_KEY,
    METRICS_STORE_KEY,
    READY_KEY,
    RECEIVER_LIMITS_KEY,
    RECEIVER_STATS_KEY,
    STATE_KEY,
    ReceiverLimits,
)
from lockscope.agent.background import BackgroundTask
from lockscope.agent.config import AgentConfig
from lockscope.agent.durable import DurableFile, default_state_file
from lockscope.agent.durable_sync import DurableSync
from lockscope.agent.export_alertmanager import bind_http_url, setup_alertmanager
from lockscope.agent.metrics_store import MetricsStore
from lockscope.agent.otlp_receiver import setup_otlp_routes
from lockscope.agent.otlp_stats import ReceiverStats
from lockscope.agent.server_guard import ConnectionGuard, GuardedSite
from lockscope.agent.shard_forward import ShardForwarding
from lockscope.agent.shard_metrics import forwarding_metrics
from lockscope.agent.state import AgentState
from lockscope.agent.web_api import api_status, setup_api_routes
from lockscope.agent.web_metrics import collector_of, setup_metrics_route
from lockscope.agent.web_security import (
    AccessPolicy,
    add_safe_headers,
    auth_middleware,
    warn_if_exposed,
)
from lockscope.agent.web_view import setup_web_view

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_OTLP",
    "Address",
    "AgentRunner",
    "ServeOptions",
    "build_http_app",
    "build_otlp_app",
    "run_agent",
    "tune_gc",
]

log = logging.getLogger("lockscope.agent")

Address = tuple[str, int]
DEFAULT_OTLP: Final[Address] = ("127.0.0.1", 4318)
DEFAULT_HTTP: Final[Address] = ("127.0.0.1", 9477)
DEFAULT_TICK_INTERVAL: Final = 0.1
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0
HOUSEKEEPING_INTERVAL: Final = 10.0
"""Seconds between sweeps of processes that stopped sending metrics."""
GC_YOUNG_THRESHOLD: Final = 5_000
"""Generation-0 threshold of the ``lockscope agent`` process (CPython's default is 700)."""


def tune_gc() -> None:
    """Garbage-collector settings for a process that runs only the agent.

    Each OTLP request makes a few thousand objects that live until its records are applied.
    With CPython's default young-generation threshold they are promoted and trigger a
    full collection every few seconds under load, ~100 ms each over a populated state
    (benchmarks/agent_ingest.py); a larger young generation lets them die young.  What
    start-up allocated (modules, the apps) is frozen out of later collections.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_YOUNG_THRESHOLD), gen1, gen2)


HttpSetup = Callable[[web.Application], None]
"""Adds routes or startup/cleanup hooks to the HTTP app (metrics exporter, web view...)."""


def _share(
    app: web.Application,
    state: AgentState,
    config: AgentConfig,
    stats: ReceiverStats,
    store: MetricsStore,
    limits: ReceiverLimits,
    ready: asyncio.Event,
    alertmanager_urls: tuple[str, ...],
) -> None:
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app[RECEIVER_STATS_KEY] = stats
    app[METRICS_STORE_KEY] = store
    app[RECEIVER_LIMITS_KEY] = limits
    app[READY_KEY] = ready
    app[ALERTMANAGER_URLS_KEY] = alertmanager_urls


def build_otlp_app(middlewares: Iterable[Middleware] = ()) -> web.Application:
    """The OTLP receiver application (state keys are added by :class:`AgentRunner`).

    Serve it with ``auto_decompress=False``: the receiver decompresses with its own cap.
    """
    # No client_max_size here: it only guards request.read(), and the receiver streams the
    # body with its own limit (ReceiverLimits), compressed and decompressed.
    app = web.Application(middlewares=list(middlewares))
    setup_otlp_routes(app)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[READY_KEY].is_set()
    body: dict[str, object] = {
        "status": "ready" if ready else "not ready",
        "state": api_status(request.app[STATE_KEY]),
    }
    from lockscope.agent.db_watch import DATABASES_KEY

    watchers = request.app.get(DATABASES_KEY)
    if watchers is not None:
        # A database the agent cannot watch is shown, not fatal: the agent still serves.
        body["databases"] = watchers.readiness()
    return web.json_response(body, status=200 if ready else 503)


def build_http_app(
    extra: Iterable[HttpSetup] = (), middlewares: Iterable[Middleware] = ()
) -> web.Application:
    """The HTTP application: JSON API, ``/healthz``, ``/readyz``, ``/metrics``, the web view
    at ``/`` and the Alertmanager exporter, plus ``extra`` setups."""
    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    setup_api_routes(app, index=False)
    setup_web_view(app)
    setup_metrics_route(app)
    setup_alertmanager(app)
    for setup in extra:
        setup(app)
    return app


class AgentRunner:
    """The agent inside the current event loop.

    ::

        runner = AgentRunner(AgentConfig(), otlp=("127.0.0.1", 0), http=("127.0.0.1", 0))
        await runner.start()
        print(runner.otlp_url, runner.http_url)
        ...
        await runner.stop()

    Also an async context manager.  ``max_request_bytes`` bounds OTLP bodies on the wire
    and after decompression; ``alertmanager_urls`` are handed to the alert exporter
    through :data:`~lockscope.agent.app_keys.ALERTMANAGER_URLS_KEY`.  ``access`` (bearer
    token) and ``ssl_context`` (HTTPS) apply to both listeners, see
    :mod:`lockscope.agent.web_security`.  ``forward_to`` makes it a shard agent: every
    event a detector needs is forwarded to each of those detector agents' OTLP URLs
    (:mod:`lockscope.agent.shard_forward`; ``forward_headers`` e.g. carry their token), and
    ``GET /api/v1/forwarding`` reports the links.
    """

    def __init__(
        self,
        config: AgentConfig | None = None,
        *,
        otlp: Address = DEFAULT_OTLP,
        http: Address = DEFAULT_HTTP,
        state: AgentState | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        alertmanager_urls: Iterable[str] = (),
        tick_interval: float = DEFAULT_TICK_INTERVAL,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        http_setup: Iterable[HttpSetup] = (),
        access: AccessPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        forward_to: Iterable[str] = (),
        forward_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config if config is not None else AgentConfig()
        self.access = access if access is not None else AccessPolicy()
        self.ssl_context = ssl_context
        self.state = state if state is not None else AgentState(self.config)
        self.stats = ReceiverStats()
        self.metrics_store = MetricsStore()
        self.state.on_process_forgotten.append(self.metrics_store.forget_process)
        self.limits = ReceiverLimits(max_request_bytes, self.config.body_timeout)
        self.durable: DurableSync | None = None
        self.guard = ConnectionGuard(
            self.config.limits.max_connections, self.config.header_timeout, self.stats
        )
        self.alertmanager_urls = tuple(alertmanager_urls)
        self.tick_interval = tick_interval
        self.ready = asyncio.Event()
        self._otlp_address = otlp
        self._http_address = http
        self._shutdown_timeout = shutdown_timeout
        self._http_setup = tuple(http_setup)
        self._runners: list[web.AppRunner] = []
        self._ticker = BackgroundTask("lockscope-agent-tick")
        self._otlp_bound: Address | None = None
        self._http_bound: Address | None = None
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        urls = tuple(forward_to)
        self.forwarding = ShardForwarding(urls, headers=forward_headers) if urls else None
        if self.forwarding is not None:
            self.state.on_process_forgotten.append(self.forwarding.forget)

    # -- addresses ----------------------------------------------------------------------
    @property
    def otlp_port(self) -> int:
        """The bound OTLP port (after :meth:`start`)."""
        return self._bound(self._otlp_bound)[1]

    @property
    def http_port(self) -> int:
        """The bound HTTP port (after :meth:`start`)."""
        return self._bound(self._http_bound)[1]

    @property
    def otlp_url(self) -> str:
        """Base URL of the OTLP receiver, e.g. ``http://127.0.0.1:4318`` (the value for
        ``LOCKSCOPE_ENDPOINT``)."""
        return _url(self._bound(self._otlp_bound), self.ssl_context is not None)

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP side, e.g. ``http://127.0.0.1:9477``."""
        return _url(self._bound(self._http_bound), self.ssl_context is not None)

    @staticmethod
    def _bound(address: Address | None) -> Address:
        if address is None:
            raise RuntimeError("the agent is not started")
        return address

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Bind both listeners, start the tick loop, then report ready."""
        shared = (
            self.state,
            self.config,
            self.stats,
            self.metrics_store,
            self.limits,
            self.ready,
            self.alertmanager_urls,
        )
        guarded = self.guard.middleware
        otlp_app = build_otlp_app(
            [
                guarded,
                self._count_in_flight,
                auth_middleware(self.access, self._count_unauthorized),
            ]
        )
        http_app = build_http_app(
            self._http_setup, [guarded, self._count_in_flight, auth_middleware(self.access)]
        )
        http_app.on_response_prepare.append(add_safe_headers)
        warn_if_exposed((self._otlp_address, self._http_address), self.access)
        for app in (otlp_app, http_app):
            _share(app, *shared)
        if self.config.state_file:
            # Before serving: what a restart would lose is back before the first report.
            self.durable = DurableSync(self.state, DurableFile(self.config.state_file))
            await self.durable.restore()
        if self.forwarding is not None:
            otlp_app[EVENT_TAPS_KEY] = (self.forwarding.tap,)
            http_app.router.add_get("/api/v1/forwarding", self._forwarding_status)
            await self.forwarding.start()
        try:
            self._otlp_bound = await self._serve(
                otlp_app, self._otlp_address, auto_decompress=False
            )
            self._http_bound = await self._serve(http_app, self._http_address)
            bind_http_url(http_app, self.http_url)
            collector = collector_of(http_app)
            if self.forwarding is not None and collector is not None:
                collector.extra.append(functools.partial(forwarding_metrics, self.forwarding))
        except BaseException:
            await self._cleanup_runners()
            if self.forwarding is not None:
                await self.forwarding.stop()
            raise
        self.guard.start()
        if self.durable is not None:
            self.durable.start()
        self._ticker.start(self._tick_loop)
        self.ready.set()
        log.info("lockscope agent: OTLP on %s, HTTP on %s", self.otlp_url, self.http_url)

    async def _forwarding_status(self, request: web.Request) -> web.Response:
        assert self.forwarding is not None
        return web.json_response(self.forwarding.status())

    async def _serve(
        self, app: web.Application, address: Address, auto_decompress: bool = True
    ) -> Address:
        runner = web.AppRunner(
            app,
            shutdown_timeout=self._shutdown_timeout,
            access_log=None,
            auto_decompress=auto_decompress,
            # aiohttp's own idle timer (an hour by default) as a backstop to the guard's.
            keepalive_timeout=2 * self.config.header_timeout,
        )
        await runner.setup()
        self._runners.append(runner)
        site = GuardedSite(
            runner, address[0], address[1], guard=self.guard, ssl_context=self.ssl_context
        )
        await site.start()
        bound = runner.addresses[-1]
        return (address[0], int(bound[1]))

    @web.middleware
    async def _count_in_flight(
        self,
        request: web.Request,
        handler: Handler,
    ) -> web.StreamResponse:
        self._in_flight += 1
        self._drained.clear()
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    def _count_unauthorized(self, request: web.Request) -> None:
        self.stats.reject("unauthorized")

    @property
    def in_flight(self) -> int:
        """Requests being handled right now (both applications)."""
        return self._in_flight

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, stop the tick loop.

        Requests in flight get up to ``shutdown_timeout`` seconds, including the time to
        receive the rest of their body (aiohttp's own shutdown stops reading from
        connections, which would strand an OTLP export that is still uploading).
        """
        self.ready.clear()
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        try:
            await asyncio.wait_for(self._drained.wait(), self._shutdown_timeout)
        except TimeoutError:
            log.warning("%d request(s) still in flight at shutdown", self._in_flight)
        await self._cleanup_runners()
        await self.guard.stop()
        if self.durable is not None:
            await self.durable.stop()
            self.durable = None
        await self._ticker.stop()
        if self.forwarding is not None:
            await self.forwarding.stop()
        log.info("lockscope agent stopped")

    async def _cleanup_runners(self) -> None:
        runners, self._runners = self._runners, []
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        housekeeping_at = next_at + HOUSEKEEPING_INTERVAL
        while True:
            next_at += self.tick_interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                self.state.tick(time.time_ns())
            except Exception:
                # One bad tick must not stop detection for the rest of the agent's life.
                log.exception("agent state tick failed")
            if loop.time() >= housekeeping_at:
                housekeeping_at = loop.time() + HOUSEKEEPING_INTERVAL
                self.metrics_store.forget_idle()
            if loop.time() - next_at > self.tick_interval:
                next_at = loop.time()  # fell behind (a long request): do not burst

    async def __aenter__(self) -> AgentRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _url(address: Address, tls: bool = False) -> str:
    host = address[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{address[1]}"


class ServeOptions(TypedDict, total=False):
    """What :func:`run_agent` passes on to :class:`AgentRunner` (see it for each)."""

    otlp: Address
    http: Address
    max_request_bytes: int
    alertmanager_urls: Iterable[str]
    shutdown_timeout: float
    http_setup: Iterable[HttpSetup]
    access: AccessPolicy | None
    ssl_context: ssl.SSLContext | None
    forward_to: Iterable[str]
    forward_headers: Mapping[str, str] | None


def run_agent(config: AgentConfig | None = None, **options: Unpack[ServeOptions]) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; returns the exit code
    (0 after a clean shutdown, 1 when a listener could not bind)."""

    config = config if config is not None else AgentConfig()
    if config.state_file is None:
        path = default_state_file(options.get("otlp", DEFAULT_OTLP)[1])
        config = dataclasses.replace(config, state_file=str(path) if path else "")

    async def main() -> int:
        runner = AgentRunner(config, **options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await runner.start()
        except OSError as exc:
            log.error("lockscope agent: cannot listen: %s", exc)
            return 1
        tune_gc()
        await stop.wait()
        log.info("lockscope agent: shutting down")
        await runner.stop()
        return 0

    return asyncio.run(main())
