"""Who is the database session: binding an instrumented connection to the actor using it.

The driver targets (``db_psycopg``, ``db_psycopg2``, ``db_asyncpg``, ``db_pymysql``) run
each statement through :mod:`.db_wrappers`, which updates a connection's :class:`Binding`
before the statement and after it (inlined there: it runs on every statement), and call
:func:`connection_done` after ``commit``/``rollback``/``close``.  While a statement runs,
or while the connection's transaction is open, the actor (thread or task) *binds* the
session: it holds the binding lock ``session:<backend id>`` (system
``postgresql``/``mysql``, namespace ``host:port/db``) in the recorder.  Like any hold it
is reported only once it has lasted ``report_after`` (or when the actor's wait for
another lock is reported), so an uncontended statement pays an update of a few
attributes and a set (no registry lock, no object), and nothing on the network.  The
agent's database watcher then attributes that session's database waits and holds to the
actor.

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

from lockscope import events
from lockscope.instrumentation import operations, runtime
from lockscope.instrumentation.recorder import Hold, LockInfo, Recorder

__all__ = [
    "ATTR",
    "SESSION_TEMPLATE",
    "Binding",
    "active",
    "binding",
    "connection_done",
    "current_task",
    "drop_hold",
    "statement_end",
    "statement_raised",
]

SESSION_TEMPLATE: Final = "session:{id}"

Identify = Callable[[Any], "tuple[str, str, int] | None"]
"""conn -> (system, namespace ``host:port/db``, backend id), or None if unknown."""


class Binding:
    """One connection's session, the actor using it now and since when.

    The hot path only writes these attributes and adds/discards the binding in
    :data:`active` (single set operations, atomic under the GIL): no registry lock, no
    object per statement.  The reporter thread turns a binding that has lasted
    ``report_after`` into a recorder hold (:func:`_promote`); ``gen`` changes whenever the
    caller ends or re-binds, so a promotion that raced with it is undone.
    """

    __slots__ = ("__weakref__", "actor", "backend", "conn", "gen", "hold", "info", "start", "task")

    def __init__(self, system: str, namespace: str, backend: int) -> None:
        self.backend = backend
        self.info = LockInfo(system, namespace, f"session:{backend}", SESSION_TEMPLATE, mode="read")
        # The database ends the session with the process: no orphaned-holder finding.
        self.info.attrs[events.ATTR_LOCK_PROCESS_BOUND] = True
        self.hold: Hold | None = None
        self.actor = 0
        self.task: Any = None
        self.start = 0
        self.gen = 0
        self.conn: Any = None


_bindings: weakref.WeakKeyDictionary[Any, Binding] = weakref.WeakKeyDictionary()
_by_id: dict[int, Binding] = {}
"""For connections that cannot be weakly referenced: id(conn) -> binding."""
active: set[Binding] = set()
"""Bindings in use now (a statement running or a transaction open)."""
_promote_lock = threading.Lock()


def current_task() -> Any:
    """The running asyncio task, or ``None`` on a thread without a running loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


ATTR: Final = "_lockscope_binding"
"""The connection attribute that holds its binding (where the class allows one)."""


def _known(conn: Any) -> Binding | None:
    b: Binding | None = getattr(conn, ATTR, None)
    if b is not None:
        return b
    try:
        return _bindings.get(conn)
    except TypeError:
        return _by_id.get(id(conn))


def _binding(conn: Any, identify: Identify, recorder: Recorder) -> Binding | None:
    b = _known(conn)
    if b is not None:
        return b
    ident = identify(conn)
    if ident is None:
        return None
    if _promote not in recorder.before_report:
        recorder.before_report.append(_promote)
    b = Binding(*ident)
    try:
        # An attribute is the cheapest look-up; connection classes with __slots__ get a
        # weak mapping instead.
        setattr(conn, ATTR, b)
        return b
    except (AttributeError, TypeError):
        pass
    try:
        _bindings[conn] = b
    except TypeError:
        _by_id[id(conn)] = b
        b.conn = conn  # keeps the id from being reused while the binding is known
    return b


def drop_hold(b: Binding, outcome: str = "released") -> None:
    """End ``b``'s recorder hold, if the reporter made one."""
    if b.hold is not None:
        with _promote_lock:
            hold, b.hold = b.hold, None
        shim = runtime.current
        if hold is not None and shim is not None:
            shim.recorder.unbind(hold, outcome)


def binding(conn: Any, identify: Identify) -> Binding | None:
    """``conn``'s binding, made on its first statement (``None`` if the shim is off or the
    driver does not know the session yet)."""
    shim = runtime.current
    return None if shim is None else _binding(conn, identify, shim.recorder)


def _end(b: Binding, outcome: str = "released") -> None:
    b.gen += 1
    active.discard(b)
    drop_hold(b, outcome)


DEADLOCK_VICTIM: Final = "deadlock_victim"


def deadlock_victim(exc: BaseException) -> bool:
    """Whether a driver error says the database aborted the statement to break a deadlock
    (SQLSTATE 40P01 from psycopg, psycopg2, asyncpg; from PyMySQL, error 1213, InnoDB's and
    MariaDB's GET_LOCK deadlock, or 3058, MySQL 8's GET_LOCK deadlock)."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if code == "40P01":
        return True
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] in (1213, 3058) and type(exc).__module__.startswith("pymysql")


def statement_end(b: Binding, in_transaction: Callable[[Any], bool], conn: Any) -> None:
    """The statement returned: keep the binding while the connection's transaction stays
    open (``in_transaction(conn)``), else end it.  (:mod:`.db_wrappers` inlines this.)"""
    try:
        if not in_transaction(conn):
            _end(b)
    except Exception:
        operations.failed()


def statement_raised(
    b: Binding, exc: BaseException, in_transaction: Callable[[Any], bool], conn: Any
) -> None:
    """The statement raised: a deadlock victim's binding ends at once, with that outcome
    (its transaction is aborted, though the connection still reports it open); any other
    error is an end like a return."""
    try:
        if deadlock_victim(exc):
            _end(b, DEADLOCK_VICTIM)
            return
    except Exception:
        operations.failed()
    statement_end(b, in_transaction, conn)


def connection_done(conn: Any) -> None:
    """``commit``/``rollback``/``close`` returned: the transaction is over."""
    try:
        b = _known(conn)
        if b is not None:
            _end(b)
    except Exception:
        operations.failed()


def _promote(now: int) -> None:
    """Reporter thread: bindings in use for ``report_after`` become recorder holds."""
    shim = runtime.current
    if shim is None or not active:
        return
    recorder = shim.recorder
    threshold = now - recorder.report_after_ns
    for b in list(active):
        if b.hold is not None or b.start > threshold:
            continue
        gen, actor, task, start = b.gen, b.actor, b.task, b.start
        hold: Hold | None = recorder.bind(b.info, actor, task, b, start)
        with _promote_lock:
            if b.gen == gen and b.hold is None:
                b.hold = hold
                hold = None
        if hold is not None:
            recorder.unbind(hold)  # the caller ended or re-bound it meanwhile
