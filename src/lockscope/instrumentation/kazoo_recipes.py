"""Target: kazoo's ``Lock``, ``ReadLock``, ``WriteLock``, ``Semaphore`` and ``Election``.

Identity: system ``zookeeper``, namespace = the client's hosts (and chroot), name = the
recipe's path.  Kazoo's locks are FIFO (each contender queues a sequential znode), so
waits carry ``lockscope.lock.fifo`` and, when reported, their queue ticket.  The hold's
fencing token is the sequence number of the contender's znode.  A long wait asks
the server for the node at the head of the queue (``lease_holders()`` for a semaphore) on
the probe thread: its name and sequence are the holder's ``owner`` and ``token``.
A session ``LOST`` while holding reports the hold as lost.

A ``Semaphore`` takes an internal ``Lock`` while it looks for a lease and an ``Election``
runs a ``Lock``: those inner locks are not recorded separately.  An election's wait lasts
until the leader function starts, its hold while the function runs.
"""

from __future__ import annotations

import threading
from typing import Any

from lockscope import events
from lockscope.instrumentation import operations, plain, runtime
from lockscope.instrumentation.operations import Adapter
from lockscope.instrumentation.patching import Patcher
from lockscope.instrumentation.recorder import Hold, LockInfo, Wait
from lockscope.naming import DEFAULT_TEMPLATER

__all__ = ["instrument"]

_watched: set[int] = set()
_watched_lock = threading.Lock()


def zookeeper_namespace(client: Any) -> str:
    """``host:port,host:port[/chroot]`` of a kazoo client (sorted, as lockscope's own
    ZooKeeper locks spell it: see :func:`lockscope.events.zookeeper_namespace`)."""
    hosts = getattr(client, "hosts", None)
    chroot = getattr(client, "chroot", None) or ""
    try:
        return events.zookeeper_namespace(hosts or (), chroot)
    except (TypeError, ValueError):
        return str(hosts) + chroot


def _sequence(node: Any) -> int | None:
    if not isinstance(node, str) or len(node) < 10 or not node[-10:].isdigit():
        return None
    return int(node[-10:])


class KazooAdapter(Adapter):
    """kazoo lock recipes."""

    watches_holds = True

    def __init__(self, errors: Any) -> None:
        self.timeout_error = errors.LockTimeout
        self.cancelled_error = errors.CancelledError
        self.read_lock: Any = None
        self.write_lock: Any = None
        self.semaphore: Any = None
        self.election: Any = None

    def _recipe(self, instance: Any) -> Any:
        if self.election is not None and isinstance(instance, self.election):
            return instance.lock
        return instance

    def info(self, instance: Any) -> LockInfo | None:
        instance = self._recipe(instance)
        mode = "exclusive"
        max_leases = None
        if self.read_lock is not None and isinstance(instance, self.read_lock):
            mode = "read"
        elif self.write_lock is not None and isinstance(instance, self.write_lock):
            mode = "write"
        elif self.semaphore is not None and isinstance(instance, self.semaphore):
            mode = "semaphore"
            max_leases = int(instance.max_leases)
        path = str(instance.path)
        info = LockInfo(
            "zookeeper",
            zookeeper_namespace(instance.client),
            path,
            DEFAULT_TEMPLATER(path),
            mode=mode,
            fifo=True,
            max_leases=max_leases,
            adapter=self,
        )
        # The lock node is ephemeral: ZooKeeper deletes it when the holder's session ends,
        # session_timeout after it last heard from the holder.  The agent uses it to end an
        # orphaned hold (a holder that died) when the server has.
        timeout_ms = getattr(instance.client, "_session_timeout", None)
        if isinstance(timeout_ms, int | float) and timeout_ms > 0:
            info.attrs[events.ATTR_LOCK_SESSION_TIMEOUT] = timeout_ms / 1000.0
        return info

    def exc_outcome(self, exc: BaseException) -> str:
        if isinstance(exc, self.timeout_error):
            return "timeout"
        if isinstance(exc, self.cancelled_error):
            return "cancelled"
        return super().exc_outcome(exc)

    def hold_fields(self, instance: Any) -> tuple[int | None, str | bytes | None, float | None]:
        instance = self._recipe(instance)
        node = getattr(instance, "node", None)
        if node is None:  # a semaphore: its lease node
            node = getattr(instance, "create_path", None)
        return _sequence(node), (str(node) if node is not None else None), None

    def on_hold(self, instance: Any, hold: Hold) -> None:
        client = self._recipe(instance).client
        key = id(client)
        if key in _watched:
            return
        with _watched_lock:
            if key in _watched:
                return
            _watched.add(key)
        client.add_listener(_session_listener(client))

    def probe_for(self, wait: Wait) -> Any:
        return _probe


def _probe(wait: Wait) -> bool:
    recipe: Any = wait.target
    if hasattr(recipe, "lease_holders"):
        holders = recipe.lease_holders()
        if holders:
            wait.holder_owner = str(holders[0])
        return True
    recipe = getattr(recipe, "lock", recipe)  # an Election queues on its inner Lock
    # The waiter's own node may not be created yet (its round trip still under way on
    # a loaded host): then the ticket is unknown and the reporter asks again later.
    wait.ticket = _sequence(getattr(recipe, "node", None))
    # The node at the head of the queue holds the lock; its name is what its holder
    # reports as the hold's owner (and its sequence as the token), so the agent can match
    # waiter and holder at once.  ``contenders()`` would give identifiers, one read each.
    nodes = [n for n in recipe.client.get_children(recipe.path) if _sequence(n) is not None]
    if nodes:
        head = min(nodes, key=lambda n: _sequence(n) or 0)
        wait.holder_owner = head
        wait.holder_token = _sequence(head)
    return wait.ticket is not None and wait.holder_owner is not None


def _session_listener(client: Any) -> Any:
    def listener(state: Any) -> bool:
        if str(state) != "LOST":
            return False
        shim = runtime.current
        if shim is None:
            return False
        try:
            for hold in shim.recorder.holds_matching(
                lambda h: (
                    h.info.system == "zookeeper"
                    and getattr(getattr(h.target, "lock", h.target), "client", None) is client
                )
            ):
                shim.recorder.end_hold(hold, "lost")
        except Exception:
            shim.recorder.errors += 1
        return False  # keep listening: the client may reconnect with a new session

    return listener


def _election_run(adapter: KazooAdapter) -> operations.Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not args or not callable(args[0]):
            return wrapped(*args, **kwargs)
        if not operations.fast_enabled():
            return wrapped(*args, **kwargs)
        try:
            operations.skip(instance.lock)
            op = operations.begin(adapter, instance, (), {}, None)
        except Exception:
            operations.failed()
            op = None
        if op is None:
            return wrapped(*args, **kwargs)
        func = args[0]
        state: dict[str, Any] = {}

        def elected(*f_args: Any, **f_kwargs: Any) -> Any:
            op.done("acquired")
            state["elected"] = True
            hold = (
                runtime.current.recorder.find_hold(instance, threading.get_ident())
                if (runtime.current is not None)
                else None
            )
            token = operations.unguarded()
            try:
                result = func(*f_args, **f_kwargs)
            except BaseException as exc:
                if hold is not None:
                    operations.released(adapter, instance, hold, None)
                state["raised"] = exc
                raise
            finally:
                operations.reguard(token)
            if hold is not None:
                operations.released(adapter, instance, hold, None)
            return result

        try:
            result = wrapped(elected, *args[1:], **kwargs)
        except BaseException as exc:
            if "elected" not in state:
                op.done(operations.exc_outcome(adapter, exc), exc)
            raise
        if "elected" not in state:
            op.done("cancelled")
        return result

    return wrapper


def instrument(patcher: Patcher) -> None:
    """Wrap kazoo's lock recipes and elections when they are imported."""

    def locks(module: Any) -> None:
        from kazoo import exceptions

        adapter = KazooAdapter(exceptions)
        adapter.read_lock = module.ReadLock
        adapter.write_lock = module.WriteLock
        adapter.semaphore = module.Semaphore
        # ReadLock and WriteLock inherit Lock's methods, so replacing Lock's covers them.
        # Plain functions with the guard built in (not wrapt proxies around a guard): a
        # Semaphore or a lease built on a Lock is recorded once, as the outer lock.
        for cls in (module.Lock, module.Semaphore):
            patcher.replace(cls, "acquire", plain.plain_acquire(adapter, guarded=True))
            patcher.replace(cls, "release", plain.plain_release(adapter, guarded=True))

    def election(module: Any) -> None:
        from kazoo import exceptions

        adapter = KazooAdapter(exceptions)
        adapter.election = module.Election
        patcher.wrap(module.Election, "run", operations.guarded(_election_run(adapter)))

    patcher.when_imported("kazoo.recipe.lock", locks)
    patcher.when_imported("kazoo.recipe.election", election)
