"""Target: ``psycopg_pool`` (``ConnectionPool``, ``AsyncConnectionPool`` and their
``NullConnectionPool`` flavours), as semaphores (see :mod:`._pool_common`).

Replaced by plain functions (:mod:`._pool_plain`): ``getconn`` and ``putconn``
(``connection()`` calls them).  Identity: system ``pool``, namespace this process, name
the pool's ``name`` (``pool-1`` unless given), permits ``max_size`` (re-read on each
checkout, so ``resize()`` is followed). ``PoolTimeout`` is a ``timeout``.  The actor is
the calling thread, or the asyncio task for the async pool.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import _pool_plain
from lockscope.instrumentation._pool_common import PoolAdapter
from lockscope.instrumentation.patching import Patcher

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"psycopg-pool": ">=3.2,<4"}
"""Tested with 3.3.3."""


class PsycopgPoolAdapter(PoolAdapter):
    def name(self, pool: Any) -> str:
        return str(pool.name)

    def permits(self, pool: Any) -> int | None:
        size = pool.max_size
        return int(size) if size else None


def instrument(patcher: Patcher) -> None:
    """Wrap psycopg_pool's sync and async pools when they are imported."""

    def sync(module: Any) -> None:
        from psycopg_pool.errors import PoolTimeout

        adapter = PsycopgPoolAdapter((PoolTimeout,))
        cls = module.ConnectionPool
        patcher.replace(cls, "getconn", _pool_plain.plain_checkout(adapter))
        patcher.replace(cls, "putconn", _pool_plain.plain_return(adapter))

    def asynchronous(module: Any) -> None:
        from psycopg_pool.errors import PoolTimeout

        adapter = PsycopgPoolAdapter((PoolTimeout,))
        cls = module.AsyncConnectionPool
        patcher.replace(cls, "getconn", _pool_plain.plain_async_checkout(adapter))
        patcher.replace(cls, "putconn", _pool_plain.plain_async_return(adapter))

    patcher.when_imported("psycopg_pool.pool", sync)
    patcher.when_imported("psycopg_pool.pool_async", asynchronous)
