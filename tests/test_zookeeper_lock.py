"""ZooKeeper locks against a real ZooKeeper (the ``zookeeper_server`` fixture)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from kazoo.client import KazooClient

from fencing import held_token
from lockscope.errors import BackendUnavailable, LockError, LockLost, LockNotOwned
from lockscope.locks import ZooKeeperLock as ExportedLock
from lockscope.locks.aio import ZooKeeperLock as ExportedAsyncLock
from lockscope.locks.zookeeper import (
    AsyncZooKeeperLock,
    AsyncZooKeeperSemaphore,
    ZooKeeperHolder,
    ZooKeeperLock,
    ZooKeeperReadLock,
    ZooKeeperSemaphore,
    ZooKeeperWriteLock,
    sequence_of,
)
from polling import wait_until

WAIT = 15.0  # generous deadline for anything that should happen "soon"


wait_for = functools.partial(wait_until, timeout=WAIT)


@pytest.fixture
def zk(new_client: Callable[..., Any]) -> Any:
    return new_client()


@pytest.fixture
def path() -> str:
    return f"/lockscope-test/{uuid.uuid4().hex}"


def children(client: Any, path: str) -> list[str]:
    if client.exists(path) is None:
        return []
    return sorted(client.get_children(path))


def expire_session(client: Any, hosts: str) -> None:
    """End ``client``'s session on the server, as a session timeout would.

    A second client attaches to the same session and closes it: the server deletes the
    session's ephemeral nodes and the first client sees LOST when it reconnects.
    """
    session_id, password = client.client_id
    timeout = client._session_timeout / 1000
    other = KazooClient(hosts=hosts, client_id=(session_id, password), timeout=timeout)
    other.start(timeout=20)
    other.stop()
    other.close()


def held_node(lock: Any) -> str:
    """The lock's own znode, which a held lock has."""
    node: str | None = lock.node
    assert node is not None
    return node


def start_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# -- the common surface -------------------------------------------------------------------
def test_exports_and_identity(zk: Any, path: str, zookeeper_server: Any) -> None:
    assert ExportedLock is ZooKeeperLock
    assert ExportedAsyncLock is AsyncZooKeeperLock
    lock = ZooKeeperLock(zk, path)
    assert lock.system == "zookeeper"
    assert lock.mode == "exclusive"
    assert lock.fifo is True
    assert lock.ttl is None
    assert lock.max_leases is None  # semaphores only
    assert lock.name == path
    assert lock.namespace == zookeeper_server.hosts
    relative = ZooKeeperLock(zk, "orders:1")
    assert relative.name == "/lockscope/orders:1"
    assert ZooKeeperReadLock(zk, path).mode == "read"
    assert ZooKeeperWriteLock(zk, path).mode == "write"
    sem = ZooKeeperSemaphore(zk, path + "-sem", max_leases=3)
    assert (sem.mode, sem.max_leases) == ("semaphore", 3)
    with pytest.raises(ValueError, match="max_leases"):
        ZooKeeperSemaphore(zk, path, max_leases=0)
    with pytest.raises(ValueError, match="lock path"):
        ZooKeeperLock(zk, "/")


def test_acquire_release_and_token_is_node_sequence(zk: Any, path: str) -> None:
    lock = ZooKeeperLock(zk, path, identifier="worker-1")
    assert lock.acquire()
    node = lock.node
    assert node is not None
    assert children(zk, path) == [node]
    assert lock.fencing_token == sequence_of(node) == lock.sequence
    with pytest.deprecated_call():  # the old spelling of holder().fencing_token
        assert lock.holder_sequence() == lock.fencing_token
    assert lock.owner == node
    assert lock.holder() == ZooKeeperHolder(node, lock.fencing_token)
    assert lock.contenders() == ["worker-1"]
    assert lock.owned()
    assert lock.locked()
    lock.extend(30)  # no lease: only checks the hold
    with pytest.raises(LockError, match="already held"):
        lock.acquire(blocking=False)
    lock.release()
    assert children(zk, path) == []
    released = lock  # a new name: mypy keeps lock.owner narrowed (to str) past release()
    assert released.owner is None
    assert lock.holder() is None
    assert not lock.owned()
    assert not lock.locked()
    with pytest.raises(LockNotOwned):
        lock.release()
    with pytest.raises(LockNotOwned):
        lock.extend(1)
    with pytest.raises(ValueError, match="positive"):
        lock.extend(0)


def test_context_manager_and_busy_lock(new_client: Callable[..., Any], path: str) -> None:
    holder = ZooKeeperLock(new_client(), path)
    other = ZooKeeperLock(new_client(), path, blocking_timeout=0.2)
    with holder:
        assert not other.acquire(blocking=False)
        with pytest.raises(LockError), other:
            pass
        assert children(holder.client, path) == [holder.node]  # no leftovers
    assert other.acquire(blocking=False)
    other.release()


def test_five_contenders_are_served_in_arrival_order(
    new_client: Callable[..., Any], path: str
) -> None:
    holder = ZooKeeperLock(new_client(), path)
    assert holder.acquire()
    order: list[int] = []
    tokens: list[int] = []
    locks = [ZooKeeperLock(new_client(), path, identifier=f"c{i}") for i in range(5)]

    def contend(i: int) -> None:
        assert locks[i].acquire(timeout=WAIT)
        order.append(i)
        tokens.append(held_token(locks[i]))
        locks[i].release()

    threads = []
    for i in range(5):
        threads.append(start_thread(functools.partial(contend, i)))

        # Arrival = node creation: let each contender queue before the next starts.
        def queued(i: int = i) -> bool:
            return locks[i].sequence is not None

        wait_for(queued, what=f"contender {i} queued")
    assert holder.contenders()[1:] == [f"c{i}" for i in range(5)]
    found = locks[4].holder()  # what a waiter learns about whom it waits for
    assert found is not None
    assert found.owner == holder.owner
    holder.release()
    for thread in threads:
        thread.join(WAIT)
    assert order == [0, 1, 2, 3, 4]
    assert holder.fencing_token is not None
    assert [holder.fencing_token, *tokens] == sorted({holder.fencing_token, *tokens})
    assert children(holder.client, path) == []


def test_timed_out_contender_leaves_no_node(new_client: Callable[..., Any], path: str) -> None:
    holder = ZooKeeperLock(new_client(), path)
    waiter = ZooKeeperLock(new_client(), path)
    assert holder.acquire()
    assert waiter.acquire(timeout=0.3) is False
    assert waiter.acquire(blocking=False) is False
    assert children(holder.client, path) == [holder.node]
    assert waiter.node is None
    assert waiter.pending_cleanups == 0
    holder.release()
    assert waiter.acquire(timeout=WAIT)
    waiter.release()


def test_waiter_whose_predecessor_leaves_times_out_cleanly(
    new_client: Callable[..., Any], path: str
) -> None:
    """The predecessor change restarts kazoo's own timeout; the adapter's deadline still
    cancels the wait, and the node goes."""
    holder = ZooKeeperLock(new_client(), path)
    middle = ZooKeeperLock(new_client(), path)
    last = ZooKeeperLock(new_client(), path)
    assert holder.acquire()
    middle_done = threading.Event()

    def acquire_middle() -> None:
        middle.acquire(timeout=WAIT)
        middle_done.set()

    start_thread(acquire_middle)
    wait_for(lambda: middle.sequence is not None)
    result: list[bool] = []
    last_thread = start_thread(lambda: result.append(last.acquire(timeout=2.0)))
    wait_for(lambda: last.sequence is not None)
    middle.cancel()  # the predecessor of `last` goes away; the holder still holds
    assert middle_done.wait(WAIT)
    # With kazoo's per-predecessor timeout `last` would wait 2 s more from here; with an
    # overall deadline it returns once its 2 s are used up. Either way it must not hold.
    last_thread.join(WAIT)
    assert result == [False]
    assert children(holder.client, path) == [holder.node]
    holder.release()


def test_cancel_from_another_thread_leaves_no_node(
    new_client: Callable[..., Any], path: str
) -> None:
    holder = ZooKeeperLock(new_client(), path)
    waiter = ZooKeeperLock(new_client(), path)
    assert holder.acquire()
    result: list[bool] = []
    thread = start_thread(lambda: result.append(waiter.acquire()))
    wait_for(lambda: waiter.sequence is not None)
    waiter.cancel()
    thread.join(WAIT)
    assert result == [False]
    assert children(holder.client, path) == [holder.node]
    holder.release()


def test_lock_owns_a_client_built_from_hosts(zookeeper_server: Any, path: str) -> None:
    lock = ZooKeeperLock(zookeeper_server.hosts + "/", path)
    try:
        assert lock.acquire(timeout=WAIT)
        assert lock.client.connected
        lock.release()
    finally:
        lock.close()
    assert not lock.client.connected


def test_unreachable_server_is_backend_unavailable(path: str) -> None:
    from lockscope.testing.server import free_port

    lock = ZooKeeperLock(f"127.0.0.1:{free_port()}", path, connect_timeout=0.5)
    with pytest.raises(BackendUnavailable):
        lock.acquire(timeout=1)
    lock.close()


# -- lost and uncertain holds -------------------------------------------------------------
@pytest.mark.parametrize("next_call", ["release", "extend"])
def test_session_expiry_loses_the_lock_and_the_next_contender_takes_over(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any, next_call: str
) -> None:
    lost_calls: list[object] = []
    holder_client = new_client(timeout=2.0)
    holder = ZooKeeperLock(holder_client, path, on_lost=lost_calls.append)
    waiter = ZooKeeperLock(new_client(), path)
    assert holder.acquire()
    token = holder.fencing_token
    acquired = threading.Event()

    def wait_then_signal() -> None:
        if waiter.acquire(timeout=WAIT):
            acquired.set()

    start_thread(wait_then_signal)
    wait_for(lambda: waiter.sequence is not None)

    expire_session(holder_client, zookeeper_server.hosts)

    assert acquired.wait(WAIT), "the next contender did not take over"
    wait_for(lambda: holder.lost, what="lost flag")
    wait_for(lambda: lost_calls == [holder], what="on_lost called once")
    assert not holder.owned()
    with pytest.raises(LockLost):
        getattr(holder, next_call)(*([1] if next_call == "extend" else []))
    with pytest.raises(LockNotOwned):  # LockLost is reported once, then it is just not held
        holder.release()
    assert waiter.fencing_token is not None
    assert token is not None
    assert waiter.fencing_token > token
    waiter.release()
    # The holder can queue again on its new session.
    wait_for(lambda: holder_client.connected)
    assert holder.acquire(timeout=WAIT)
    holder.release()
    assert lost_calls == [holder]


def test_suspended_connection_makes_the_hold_uncertain_until_reconnect(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    changes: list[bool] = []
    # A long session so it survives the pause; kazoo suspends after 2/3 of it in silence.
    lock = ZooKeeperLock(
        new_client(timeout=9.0), path, on_uncertain=lambda _lock, flag: changes.append(flag)
    )
    assert lock.acquire()
    zookeeper_server.pause()
    try:
        wait_for(lambda: lock.uncertain, what="uncertain flag")
    finally:
        zookeeper_server.resume()
    wait_for(lambda: not lock.uncertain, what="uncertain cleared on reconnect")
    wait_for(lambda: changes == [True, False])
    assert not lock.lost
    assert lock.owned()
    lock.release()


def test_acquire_failing_in_an_outage_leaves_no_node_after_reconnect(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    """The kazoo pitfall: cleanup during an outage fails and the node outlives the call."""
    holder = ZooKeeperLock(new_client(timeout=8.0), path)
    waiter = ZooKeeperLock(new_client(timeout=8.0), path)
    assert holder.acquire()
    outcome: list[object] = []

    def contend() -> None:
        try:
            outcome.append(waiter.acquire(timeout=0.5))
        except BackendUnavailable as exc:
            outcome.append(exc)

    thread = start_thread(contend)
    wait_for(lambda: waiter.sequence is not None)
    # The server freezes while the waiter's timeout runs out: its cleanup cannot reach it.
    zookeeper_server.pause()
    try:
        thread.join(WAIT)
        assert outcome, "acquire did not return during the outage"
        assert outcome[0] is False or isinstance(outcome[0], BackendUnavailable)
        # Its node could not be deleted yet: the lock knows it still has to.
        assert waiter.pending_cleanups == 1
    finally:
        zookeeper_server.resume()
    wait_for(lambda: waiter.pending_cleanups == 0, timeout=WAIT * 2, what="cleanup")
    wait_for(lambda: holder.client.connected)
    assert children(holder.client, path) == [holder.node]
    holder.release()


def test_release_in_an_outage_is_bounded_and_the_node_still_goes(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    holder = ZooKeeperLock(new_client(timeout=8.0), path, operation_timeout=0.5)
    assert holder.acquire()
    zookeeper_server.pause()
    try:
        for query in (holder.contenders, holder.holder, holder.locked, holder.owned):
            with pytest.raises(BackendUnavailable):
                query()
        with pytest.raises(BackendUnavailable):
            holder.release()
        assert holder.pending_cleanups == 1
    finally:
        zookeeper_server.resume()
    wait_for(lambda: children(holder.client, path) == [], what="node deleted after the outage")
    assert holder.acquire(timeout=WAIT)
    assert holder.pending_cleanups == 0
    holder.release()


def test_node_deleted_behind_the_holders_back_is_lost(
    new_client: Callable[..., Any], path: str
) -> None:
    lost: list[object] = []
    holder = ZooKeeperLock(new_client(), path, on_lost=lost.append)
    assert holder.acquire()
    holder.client.delete(f"{path}/{holder.node}")  # an operator "unsticking" the lock
    with pytest.raises(LockLost):
        holder.release()
    assert holder.lost
    assert lost == [holder]


# -- read/write locks and semaphores ------------------------------------------------------
def test_readers_share_and_writers_exclude(new_client: Callable[..., Any], path: str) -> None:
    r1 = ZooKeeperReadLock(new_client(), path)
    r2 = ZooKeeperReadLock(new_client(), path)
    w = ZooKeeperWriteLock(new_client(), path)
    assert r1.acquire(blocking=False)
    assert r2.acquire(blocking=False)
    assert not w.acquire(blocking=False)
    r1.release()
    r2.release()
    assert w.acquire(blocking=False)
    assert not r1.acquire(blocking=False)
    assert not ZooKeeperWriteLock(new_client(), path).acquire(timeout=0.2)
    assert children(w.client, path) == [w.node]
    w.release()


def test_mixed_readers_and_writers_keep_queue_order(
    new_client: Callable[..., Any], path: str
) -> None:
    first_reader = ZooKeeperReadLock(new_client(), path, identifier="r0")
    queue = [
        ZooKeeperWriteLock(new_client(), path, identifier="w1"),
        ZooKeeperReadLock(new_client(), path, identifier="r2"),
        ZooKeeperReadLock(new_client(), path, identifier="r3"),
        ZooKeeperWriteLock(new_client(), path, identifier="w4"),
    ]
    assert first_reader.acquire()
    events: list[str] = []
    held = {lock.identifier: threading.Event() for lock in queue}
    go = {lock.identifier: threading.Event() for lock in queue}

    def contend(lock: Any) -> None:
        assert lock.acquire(timeout=WAIT)
        events.append(f"+{lock.identifier}")
        held[lock.identifier].set()
        go[lock.identifier].wait(WAIT)
        events.append(f"-{lock.identifier}")
        lock.release()

    for lock in queue:
        start_thread(functools.partial(contend, lock))

        def queued(lock: Any = lock) -> bool:
            return lock.sequence is not None

        wait_for(queued)
    # A reader queued behind a writer waits even though only readers hold the lock now.
    late_reader = ZooKeeperReadLock(new_client(), path)
    assert not late_reader.acquire(timeout=0.2)
    assert events == []
    first_reader.release()
    assert held["w1"].wait(WAIT)
    assert events == ["+w1"]
    go["w1"].set()
    assert held["r2"].wait(WAIT)
    assert held["r3"].wait(WAIT)
    assert not held["w4"].is_set()
    go["r2"].set()
    go["r3"].set()
    assert held["w4"].wait(WAIT)
    go["w4"].set()
    wait_for(lambda: len(events) == 8)
    assert events[:2] == ["+w1", "-w1"]
    assert sorted(events[2:4]) == ["+r2", "+r3"]
    assert events[-2:] == ["+w4", "-w4"]
    assert children(first_reader.client, path) == []


def test_semaphore_admits_two_and_blocks_the_third(
    new_client: Callable[..., Any], path: str
) -> None:
    sems = [
        ZooKeeperSemaphore(new_client(), path, max_leases=2, identifier=f"s{i}") for i in range(3)
    ]
    assert sems[0].acquire(timeout=WAIT)
    assert not sems[0].locked()
    assert sems[1].acquire(timeout=WAIT)
    assert sems[1].locked()
    assert sorted(sems[2].contenders()) == ["s0", "s1"]
    assert sems[2].holder() is None  # many holders
    assert not sems[2].acquire(timeout=0.3)
    assert not sems[2].acquire(blocking=False)
    zk = sems[0].client
    # No leftovers: two leases, nobody queued on the internal lock.
    assert children(zk, path) == sorted([held_node(sems[0]), held_node(sems[1])])
    assert children(zk, path + "-__lock__") == []
    tokens = [held_token(sems[0]), held_token(sems[1])]
    got = threading.Event()

    def third_acquires() -> None:
        if sems[2].acquire(timeout=WAIT):
            got.set()

    start_thread(third_acquires)
    wait_for(lambda: sems[2].sequence is not None, what="third queued")
    assert not got.is_set()
    sems[0].release()
    assert got.wait(WAIT)
    tokens.append(held_token(sems[2]))
    assert all(isinstance(t, int) for t in tokens)
    assert tokens == sorted(set(tokens))  # strictly increasing
    assert sems[2].owned()
    with pytest.raises(LockError, match=r"max leases|Inconsistent"):
        ZooKeeperSemaphore(new_client(), path, max_leases=5).acquire(blocking=False)
    sems[1].release()
    sems[2].release()
    assert children(zk, path) == []


def test_cancelled_semaphore_wait_leaves_no_node(new_client: Callable[..., Any], path: str) -> None:
    holder = ZooKeeperSemaphore(new_client(), path, max_leases=1)
    waiter = ZooKeeperSemaphore(new_client(), path, max_leases=1)
    assert holder.acquire()
    result: list[bool] = []
    thread = start_thread(lambda: result.append(waiter.acquire()))
    wait_for(lambda: waiter.sequence is not None)
    waiter.cancel()
    thread.join(WAIT)
    assert result == [False]
    zk = holder.client
    assert children(zk, path) == [holder.node]
    assert children(zk, path + "-__lock__") == []
    holder.release()


def test_fencing_tokens_strictly_increase_across_holders(
    new_client: Callable[..., Any], path: str
) -> None:
    clients = [new_client(), new_client()]
    tokens = []
    for i in range(6):
        kind = [ZooKeeperLock, ZooKeeperWriteLock, ZooKeeperReadLock][i % 3]
        lock = kind(clients[i % 2], path)
        assert lock.acquire(timeout=WAIT)
        tokens.append(held_token(lock))
        lock.release()
    assert tokens == sorted(set(tokens))


# -- asyncio ------------------------------------------------------------------------------
async def test_async_lock_round_trip(zk: Any, path: str) -> None:
    lock = AsyncZooKeeperLock(zk, path, identifier="task")
    async with lock:
        assert lock.fencing_token == lock.sequence
        assert await lock.owned()
        assert await lock.locked()
        assert await lock.contenders() == ["task"]
        await lock.extend(5)
    assert not await lock.locked()
    with pytest.raises(LockNotOwned):
        await lock.release()


async def test_async_aclose_stops_an_owned_client_and_close_is_its_deprecated_alias(
    zookeeper_server: Any, path: str
) -> None:
    for spelling in ("aclose", "close"):
        lock = AsyncZooKeeperLock(zookeeper_server.hosts, path)
        assert lock.sync.client is lock.client
        assert await lock.acquire(timeout=10)
        owned = lock.client
        if spelling == "aclose":
            await lock.aclose()
        else:
            with pytest.deprecated_call(match="aclose"):
                await lock.close()
        assert not owned.connected  # its session ended with it, and the node with that
        probe = ZooKeeperLock(zookeeper_server.hosts, path)
        assert not await asyncio.to_thread(probe.locked)
        probe.close()


async def test_cancelled_async_acquire_leaves_no_node(
    new_client: Callable[..., Any], path: str
) -> None:
    holder = ZooKeeperLock(new_client(), path)
    waiter = AsyncZooKeeperLock(new_client(), path)
    assert holder.acquire()
    task = asyncio.create_task(waiter.acquire())
    await queued(waiter)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The node is gone by the time the cancellation reaches the caller.
    assert children(holder.client, path) == [holder.node]
    holder.release()


async def queued(lock: AsyncZooKeeperLock) -> None:
    deadline = time.monotonic() + WAIT
    while lock.sequence is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_async_waiters_do_not_starve_the_holder(
    new_client: Callable[..., Any], path: str
) -> None:
    """More waiting tasks than the default executor has threads, and the holder still
    releases (each blocked acquire has a thread of its own)."""
    client = new_client()
    locks = [AsyncZooKeeperLock(client, path, identifier=str(i)) for i in range(12)]
    order: list[int] = []

    async def contend(i: int) -> None:
        assert await locks[i].acquire(timeout=WAIT)
        order.append(i)
        await locks[i].release()

    assert await locks[0].acquire()
    tasks = []
    for i in range(1, 12):
        tasks.append(asyncio.create_task(contend(i)))
        await queued(locks[i])
    await locks[0].release()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert order == list(range(1, 12))


async def test_async_semaphore_and_lost_callback_on_the_loop(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[object, bool]] = []
    lost = asyncio.Event()

    def on_lost(lock: object) -> None:
        seen.append((lock, asyncio.get_running_loop() is loop))
        lost.set()

    client = new_client(timeout=2.0)
    sem = AsyncZooKeeperSemaphore(client, path, max_leases=2, on_lost=on_lost)
    assert await sem.acquire(timeout=WAIT)
    assert sem.fencing_token is not None
    await asyncio.to_thread(expire_session, client, zookeeper_server.hosts)
    await asyncio.wait_for(lost.wait(), WAIT)
    assert seen == [(sem, True)]
    assert sem.lost
    with pytest.raises(LockLost):
        await sem.release()


MARKER: contextvars.ContextVar[str | None] = contextvars.ContextVar("marker", default=None)


class ContextSpyLock(ZooKeeperLock):
    """Records the context the kazoo recipe runs in (it may run on a helper thread)."""

    seen: ClassVar[list[str | None]] = []

    def _recipe_acquire(self, recipe: Any, blocking: bool, timeout: float | None) -> bool:
        self.seen.append(MARKER.get())
        return super()._recipe_acquire(recipe, blocking, timeout)


class AsyncContextSpyLock(AsyncZooKeeperLock):
    _sync_class = ContextSpyLock


async def test_recipe_runs_in_the_callers_context(zk: Any, path: str) -> None:
    """Instrumentation marks nested lock calls with a contextvar: it must reach the
    helper threads, or kazoo's inner acquire would be recorded as a second lock."""
    ContextSpyLock.seen.clear()
    MARKER.set("caller")
    lock = ContextSpyLock(zk, path)
    assert await asyncio.to_thread(lock.acquire, True, 5.0)  # timed: runs on a helper thread
    await asyncio.to_thread(lock.release)
    alock = AsyncContextSpyLock(zk, path)
    assert await alock.acquire(timeout=5.0)
    await alock.release()
    assert await alock.acquire()
    await alock.release()
    assert ContextSpyLock.seen == ["caller", "caller", "caller"]


HOLDER = """
import sys
import threading
from kazoo.client import KazooClient
from lockscope.errors import LockLost
from lockscope.locks.zookeeper import ZooKeeperLock

hosts, path = sys.argv[1:3]
client = KazooClient(hosts=hosts, timeout=1.0)  # the smallest session the server grants
client.start(timeout=20)
out = threading.Lock()  # on_lost prints from another thread: keep lines whole

def say(*words):
    with out:
        print(*words, flush=True)

lock = ZooKeeperLock(client, path, on_lost=lambda lk: say("on_lost", lk.lost))
lock.acquire()
say("held", lock.fencing_token)
sys.stdin.readline()  # the test says when the "work" is done
try:
    lock.release()
    say("released")
except LockLost:
    say("LockLost")
"""


def test_holder_process_paused_past_its_session_learns_it_lost_the_lock(
    zookeeper_server: Any, new_client: Callable[..., Any], path: str
) -> None:
    """The classic GC-pause scenario: the frozen holder's session expires, the next
    contender takes over, and the holder finds out when it runs again."""
    import subprocess
    import sys

    from lockscope.testing import faults

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, zookeeper_server.hosts, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        words = proc.stdout.readline().split()
        assert words[0] == "held", words
        holder_token = int(words[1])
        waiter = ZooKeeperLock(new_client(), path)
        with faults.paused(proc.pid):
            assert waiter.acquire(timeout=WAIT), "the frozen holder's session never expired"
        assert waiter.fencing_token is not None
        assert waiter.fencing_token > holder_token
        lines = []
        proc.stdin.write("done\n")
        proc.stdin.flush()
        for line in proc.stdout:
            lines.append(line.strip())
        # on_lost runs on its own thread, so it may print after the release attempt.
        assert sorted(lines) == ["LockLost", "on_lost True"]
        assert proc.wait(WAIT) == 0
        assert waiter.owned()
        waiter.release()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
