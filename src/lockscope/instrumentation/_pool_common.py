"""What the connection-pool targets share: a pool is a semaphore.

Identity: system ``pool``, namespace this process (the shim's instance id: a pool is
never shared between processes), name the pool's (the database URL without password,
or the pool's own name), mode ``semaphore`` with as many permits as the pool can hand
out at once.  Each checkout is an acquire (a checkout that has to wait is a wait, as
long as it waits); each checked-out connection is a hold by the thread or asyncio task
that took it, until the connection is returned, by whichever thread.  Pool starvation
(every connection held by actors that all wait) is then a semaphore knot the agent's
graph reduction finds, including through other locks.  A pool's connections die with
its process: the locks are ``process_bound``.  The checkout and return functions the
targets put on the pool classes are in :mod:`._pool_plain`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

from lockscope.instrumentation import runtime
from lockscope.instrumentation.manual import make_info
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.recorder import Hold, LockInfo

__all__ = ["PoolAdapter", "current_task"]

_INFO_ATTR = "_lockscope_pool_info"
_names: dict[str, itertools.count[int]] = {}


def current_task() -> Any:
    """The running asyncio task of this thread, if any (cheap when there is no loop)."""
    if asyncio._get_running_loop() is None:
        return None
    return asyncio.current_task()


def unique(name: str) -> str:
    """``name``, then ``name#2``, ``name#3``... for further pools of the same name."""
    counter = _names.setdefault(name, itertools.count(1))
    n = next(counter)
    return name if n == 1 else f"{name}#{n}"


class PoolAdapter(Adapter):
    """One pool library; subclasses name the pool and count its permits."""

    by_key = False

    def __init__(self, timeout_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.timeout_errors = timeout_errors
        self.holds: dict[int, Hold] = {}
        """id(checked-out connection) -> its hold (a forked child starts empty: the
        parent's holds are the parent's)."""
        os.register_at_fork(after_in_child=self.holds.clear)

    def name(self, pool: Any) -> str:
        raise NotImplementedError

    def permits(self, pool: Any) -> int | None:
        """How many connections the pool hands out at once; ``None``: unbounded (skipped)."""
        raise NotImplementedError

    def info(self, instance: Any) -> LockInfo | None:
        shim = runtime.current
        if shim is None:
            return None
        permits = self.permits(instance)
        cached = instance.__dict__.get(_INFO_ATTR)
        if cached is not None and cached[0] == shim.generation and cached[1] == permits:
            return cached[2]  # type: ignore[no-any-return]
        info = None
        if permits is not None and permits > 0:
            name = cached[3] if cached is not None else unique(self.name(instance))
            info = make_info("pool", shim.instance_id, name, mode="semaphore",
                             max_leases=permits, process_bound=True, adapter=self)  # fmt: skip
        else:
            name = cached[3] if cached is not None else ""
        instance.__dict__[_INFO_ATTR] = (shim.generation, permits, info, name)
        return info

    def exc_outcome(self, exc: BaseException) -> str:
        if self.timeout_errors and isinstance(exc, self.timeout_errors):
            return "timeout"
        return super().exc_outcome(exc)
