"""The lockscope shim: every lock operation of your app, seen at near-zero cost.

Instrument an existing app with no code change, either way::

    lockscope instrument -- python app.py          # or: gunicorn app:wsgi, celery worker...
    opentelemetry-instrument python app.py         # lockscope is an OpenTelemetry instrumentor

or from code, as early as possible::

    from lockscope.instrumentation import LockscopeInstrumentor
    LockscopeInstrumentor().instrument()           # threading=True, asyncio=True to opt in

What is instrumented: redis-py ``Lock`` (sync and asyncio), kazoo ``Lock``/``ReadLock``/
``WriteLock``/``Semaphore``/``Election``, python-redis-lock ``Lock``, pottery ``Redlock``/
``AIORedlock``, file locks (filelock, portalocker, fasteners), connection pools
(SQLAlchemy ``QueuePool``, psycopg_pool), lockscope's own locks, blocking lock calls an
asyncio task runs through ``run_in_executor``/``to_thread`` (as that task's) and, only if
asked, ``threading.Lock``/``RLock`` and ``asyncio.Lock`` created by application code.  Each
library is wrapped when it is imported, if it is installed; the others are skipped.  Any
other lock: :mod:`lockscope.instrumentation.manual`.

For each lock call the shim updates an in-process registry and in-process metrics (a few
microseconds); spans ``lock.acquire``/``lock.hold`` follow your TracerProvider's sampler.
Only waits and holds that last ``LOCKSCOPE_REPORT_AFTER`` (0.2 s), lost locks, new
lock-order pairs and a heartbeat every ``LOCKSCOPE_HEARTBEAT`` (1 s) are sent, by a
background thread, to ``LOCKSCOPE_ENDPOINT`` (the agent, default ``http://127.0.0.1:4318``)
as OTLP/HTTP log records.  The shim never blocks, raises into or changes your lock calls:
if the agent is down, events are dropped and counted.

Configuration (environment, read when instrumenting):

``LOCKSCOPE_ENDPOINT``          agent OTLP base URL (default ``OTEL_EXPORTER_OTLP_ENDPOINT``, else ``http://127.0.0.1:4318``)
``LOCKSCOPE_REPORT_AFTER``      seconds before a wait or hold is reported (0.2)
``LOCKSCOPE_HEARTBEAT``         seconds between heartbeat snapshots (1.0)
``LOCKSCOPE_DISABLED``          ``true``: instrument nothing
``LOCKSCOPE_HEADERS``           ``k=v,k2=v2`` HTTP headers (default ``OTEL_EXPORTER_OTLP_HEADERS``)
``LOCKSCOPE_INSTRUMENT_THREADING`` / ``LOCKSCOPE_INSTRUMENT_ASYNCIO``  ``true`` to opt in
``LOCKSCOPE_METRICS_EXPORT``    ``auto`` (default), ``agent``, ``app`` or ``none``
``LOCKSCOPE_METRICS_INTERVAL``  seconds between metric exports of the shim's own provider (5)
``LOCKSCOPE_QUEUE_SIZE``        events kept while the agent is slow (10000)
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``  name the process;
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=lockscope`` also turns the shim off.

Suppression: calls made under OpenTelemetry's ``suppress_instrumentation()`` are not recorded.
See docs/instrumentation.md for attributes, events and measured overhead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from lockscope.instrumentation import (
    executor,
    fasteners_locks,
    filelock_locks,
    kazoo_recipes,
    lockscope_locks,
    portalocker_locks,
    pottery_redlock,
    psycopg_pools,
    python_redis_lock,
    redis_py,
    runtime,
    sqlalchemy_pool,
)
from lockscope.instrumentation.config import ShimConfig
from lockscope.instrumentation.patching import Patcher

__all__ = ["TARGETS", "LockscopeInstrumentor"]

_log = logging.getLogger("lockscope.instrumentation")

TARGETS: tuple[ModuleType, ...] = (
    redis_py,
    kazoo_recipes,
    lockscope_locks,
    python_redis_lock,
    pottery_redlock,
    filelock_locks,
    portalocker_locks,
    fasteners_locks,
    sqlalchemy_pool,
    psycopg_pools,
    executor,
)
"""The always-on targets, one module per library, each with ``instrument(patcher)`` (and
``SUPPORTED`` versions); a library that is not installed costs nothing."""


def _disabled_by_otel(env: Any) -> bool:
    names = env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return any(n.strip() in ("lockscope", "*") for n in names.split(","))


class LockscopeInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every supported lock library that is installed.

    Keyword arguments of :meth:`instrument`: ``threading`` and ``asyncio`` (bool) opt in to
    in-process locks (default from ``LOCKSCOPE_INSTRUMENT_THREADING``/``_ASYNCIO``);
    ``tracer_provider`` and ``meter_provider`` (default: the global ones); ``config`` (a
    :class:`~lockscope.instrumentation.config.ShimConfig`, default from the environment).
    """

    _patcher = Patcher()

    def instrumentation_dependencies(self) -> Collection[str]:
        """None: each target checks at instrument time that its library is importable, so
        ``opentelemetry-instrument`` loads lockscope whatever subset of libraries is there."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        config = kwargs.get("config") or ShimConfig.from_env()
        if config.disabled or _disabled_by_otel(os.environ):
            _log.debug("lockscope: disabled by the environment")
            return
        if runtime.current is not None:
            return
        shim = runtime.Shim(config, kwargs.get("tracer_provider"), kwargs.get("meter_provider"))
        runtime.current = shim
        patcher = self._patcher
        patcher.start()
        for target in TARGETS:
            target.instrument(patcher)
        from lockscope.instrumentation import db_asyncpg, db_psycopg, db_psycopg2, db_pymysql

        # Database drivers: which actor uses which database session (docs/databases.md).
        for target in (db_psycopg, db_psycopg2, db_asyncpg, db_pymysql):
            target.instrument(patcher)
        if kwargs.get("threading", config.instrument_threading):
            from lockscope.instrumentation import threading_locks

            threading_locks.instrument(patcher)
        if kwargs.get("asyncio", config.instrument_asyncio):
            from lockscope.instrumentation import asyncio_locks

            asyncio_locks.instrument(patcher)
        shim.start()

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patcher.restore()
        shim, runtime.current = runtime.current, None
        if shim is not None:
            shim.stop(kwargs.get("flush_timeout", 1.0))
