"""Target: SQLAlchemy's ``QueuePool`` and ``AsyncAdaptedQueuePool`` (the default pools of
``create_engine`` and ``create_async_engine``), as semaphores (see :mod:`._pool_common`).

Replaced by plain functions (:mod:`._pool_plain`): ``QueuePool._do_get`` (a checkout; it
waits on the pool's queue when every connection is out) and
``QueuePool._do_return_conn`` (the connection is back); wrapped:
``Engine.__init__``/``Engine.dispose`` to learn each pool's URL.  Identity: system
``pool``, namespace this process, name the engine's URL without its password (``#2``,
``#3``... for further pools of the same URL; ``QueuePool`` for a pool made without an
engine), permits ``pool_size + max_overflow``.  A pool without limit
(``max_overflow=-1`` or ``pool_size=0``) cannot starve and is not recorded.  With an
async engine the checkout runs in the calling task (SQLAlchemy's greenlet bridge): the
task is the actor. ``TimeoutError`` (the pool's ``timeout``) is a ``timeout``.
"""

from __future__ import annotations

from typing import Any

from lockscope.instrumentation import _pool_plain, operations
from lockscope.instrumentation._pool_common import PoolAdapter
from lockscope.instrumentation.patching import Patcher

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = {"sqlalchemy": ">=2.0,<3"}
"""Tested with 2.1.9."""

_URL_ATTR = "_lockscope_url"


class QueuePoolAdapter(PoolAdapter):
    def name(self, pool: Any) -> str:
        return str(pool.__dict__.get(_URL_ATTR) or "QueuePool")

    def permits(self, pool: Any) -> int | None:
        overflow = pool._max_overflow
        if overflow < 0:
            return None
        # pool.size() is ``_pool.maxsize``: read here, a call less per checkout.
        return int(pool._pool.maxsize) + int(overflow)


def _tag(engine: Any) -> None:
    try:
        pool = engine.pool
        if _URL_ATTR not in pool.__dict__:
            pool.__dict__[_URL_ATTR] = engine.url.render_as_string(hide_password=True)
    except Exception:
        operations.failed()


def _engine_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    _tag(instance)
    return result


def _engine_dispose(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    _tag(instance)  # dispose() puts a fresh pool in place
    return result


def instrument(patcher: Patcher) -> None:
    """Wrap ``QueuePool`` (and so ``AsyncAdaptedQueuePool``) when SQLAlchemy is imported."""

    def pools(module: Any) -> None:
        from sqlalchemy import exc  # imported before the pool modules

        adapter = QueuePoolAdapter((exc.TimeoutError,))
        cls = module.QueuePool
        # _do_get calls itself when it loses a race for an overflow slot: one checkout
        # (the guard).  Plain functions on the class, not wrapt proxies (:mod:`._pool_plain`).
        patcher.replace(cls, "_do_get", _pool_plain.plain_checkout(adapter, guarded=True))
        patcher.replace(cls, "_do_return_conn", _pool_plain.plain_return(adapter))

    def engines(module: Any) -> None:
        patcher.wrap(module.Engine, "__init__", _engine_init)
        patcher.wrap(module.Engine, "dispose", _engine_dispose)

    patcher.when_imported("sqlalchemy.pool.impl", pools)
    patcher.when_imported("sqlalchemy.engine.base", engines)
