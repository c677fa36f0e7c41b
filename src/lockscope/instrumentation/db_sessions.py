"""Who is the database session: binding an instrumented connection to the actor using it.

The driver targets (``db_psycopg``, ``db_psycopg2``, ``db_asyncpg``, ``db_pymysql``) call
:func:`statement_begin` before a statement and :func:`statement_end` after it (and after
``commit``/``rollback``).  While a statement runs, or while the connection's transaction is
open, the actor (thread or task) *binds* the session: it holds the binding lock
``session:<backend id>`` (system ``postgresql``/``mysql``, namespace ``host:port/db``) in
the recorder.  Like any hold it is reported only once it has lasted ``report_after`` (or
when the actor's wait for another lock is reported), so an uncontended statement pays an
in-memory registry update and nothing on the network.  The agent's database watcher then
attributes that session's database waits and holds to the actor.

The backend id is what the driver already knows (psycopg ``info.backend_pid``, asyncpg
``get_server_pid()``, PyMySQL ``thread_id()``): no extra round trip.  Nothing here raises
into the app.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from lockscope.instrumentation import operations, runtime
from lockscope.instrumentation.recorder import Hold, LockInfo

__all__ = [
    "SESSION_TEMPLATE",
    "Binding",
    "connection_done",
    "current_task",
    "statement_begin",
    "statement_end",
]

SESSION_TEMPLATE: Final = "session:{id}"

Identify = Callable[[Any], "tuple[str, str, int] | None"]
"""conn -> (system, namespace ``host:port/db``, backend id), or None if unknown."""

_get_ident = threading.get_ident


class Binding:
    """One connection's binding lock and the actor holding it now."""

    __slots__ = ("__weakref__", "backend", "hold", "info")

    def __init__(self, system: str, namespace: str, backend: int) -> None:
        self.backend = backend
        self.info = LockInfo(system, namespace, f"session:{backend}", SESSION_TEMPLATE, mode="read")
        self.hold: Hold | None = None


_bindings: weakref.WeakKeyDictionary[Any, Binding] = weakref.WeakKeyDictionary()
_by_id: dict[int, Binding] = {}
"""For connections that cannot be weakly referenced: id(conn) -> binding (dropped on end)."""


def current_task() -> Any:
    """The running asyncio task, or ``None`` on a thread without a running loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _binding(conn: Any, identify: Identify) -> Binding | None:
    try:
        b = _bindings.get(conn)
    except TypeError:
        b = _by_id.get(id(conn))
    if b is not None:
        return b
    ident = identify(conn)
    if ident is None:
        return None
    b = Binding(*ident)
    try:
        _bindings[conn] = b
    except TypeError:
        _by_id[id(conn)] = b
    return b


def statement_begin(conn: Any, identify: Identify, task: Any = None) -> Binding | None:
    """A statement starts on ``conn`` (run by the current thread, or ``task``)."""
    shim = runtime.current
    if shim is None or not operations.fast_enabled():
        return None
    try:
        b = _binding(conn, identify)
        if b is None:
            return None
        actor = _get_ident() if task is None else id(task)
        h = b.hold
        if h is None or h.actor != actor:
            recorder = shim.recorder
            if h is not None:
                recorder.unbind(h)
            b.hold = recorder.bind(b.info, actor, task, conn)
        return b
    except Exception:
        operations.failed()
        return None


def statement_end(b: Binding | None, in_transaction: Callable[[], bool]) -> None:
    """The statement (or ``commit``/``rollback``) returned: keep the binding while the
    connection's transaction stays open, else end it."""
    if b is None or b.hold is None:
        return
    try:
        if in_transaction():
            return
        shim = runtime.current
        hold, b.hold = b.hold, None
        if shim is not None:
            shim.recorder.unbind(hold)
    except Exception:
        operations.failed()


def connection_done(conn: Any) -> None:
    """``commit``/``rollback``/``close`` returned: the transaction is over."""
    try:
        try:
            b = _bindings.get(conn)
        except TypeError:
            b = _by_id.pop(id(conn), None)
        if b is not None and b.hold is not None:
            hold, b.hold = b.hold, None
            shim = runtime.current
            if shim is not None:
                shim.recorder.unbind(hold)
    except Exception:
        operations.failed()
