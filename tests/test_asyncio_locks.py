"""The opt-in asyncio target behaves as the bare asyncio.Lock, and its records stay true:
each test is an edge case where a traced lock could differ from the bare one."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pickle
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from lockscope import events
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.otlp_sink import OtlpSink


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


@contextlib.contextmanager
def instrumented(sink: OtlpSink) -> Iterator[runtime.Shim]:
    config = ShimConfig(endpoint=sink.endpoint, report_after=0.05, heartbeat=0.2,
                        metrics_export="none")  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config, asyncio=True)
    assert runtime.current is not None
    try:
        yield runtime.current
    finally:
        instrumentor.uninstrument()


async def outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        result = call()
        if asyncio.iscoroutine(result):
            result = await result
        return "returned", repr(result)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 30))


async def misuse() -> list[tuple[str, str]]:
    lock = asyncio.Lock()
    seen = [await outcome(lock.release)]  # not acquired
    seen.append(await outcome(lambda: lock.acquire(1)))  # type: ignore[call-arg]
    seen.append(await outcome(lock.acquire))
    seen.append(await outcome(lambda: lock.locked()))
    seen.append(await outcome(lock.release))
    seen.append(await outcome(lock.release))  # twice
    return seen


def test_misuse_is_refused_as_bare(sink: OtlpSink) -> None:
    bare = run(misuse)
    with instrumented(sink) as shim:
        traced = run(misuse)
        assert shim.recorder.errors == 0
    assert traced == bare
    assert bare[0][0] == "RuntimeError"
    assert bare[1][0] == "TypeError"


def test_a_copied_lock_is_a_lock_of_its_own(sink: OtlpSink) -> None:
    with instrumented(sink) as shim:

        async def main() -> None:
            lock = asyncio.Lock()
            await lock.acquire()
            twin = copy.copy(lock)  # bare asyncio allows it: the twin's state is a snapshot
            deep = copy.deepcopy(lock)
            again = pickle.loads(pickle.dumps(lock))
            for other in (twin, deep, again):
                other.release()  # copied "locked": releasing the copy must not end our hold
                await other.acquire()
                other.release()
            record = lock.__dict__["_lockscope_record"]
            assert record._since  # the original's hold is still recorded
            names = {o.__dict__.get("_lockscope_site") for o in (lock, twin, deep, again)}
            assert len(names - {None}) == len(names)  # each lock its own name (or none)
            lock.release()
            assert not record._since

        run(main)
        assert shim.recorder.errors == 0


def test_foreign_task_release_ends_the_hold_as_bare_allows(sink: OtlpSink) -> None:
    with instrumented(sink) as shim:

        async def main() -> None:
            lock = asyncio.Lock()
            taken = asyncio.Event()

            async def owner() -> None:
                await lock.acquire()
                taken.set()

            await asyncio.create_task(owner(), name="owner")
            await taken.wait()
            record = lock.__dict__["_lockscope_record"]
            assert record._since
            lock.release()  # another task: legal for asyncio.Lock
            assert not record._since
            assert not lock.locked()
            assert not shim.recorder.light_tasks.get(record._owner)

        run(main)


def test_cancelled_waiter_leaves_no_wait_and_the_holder_is_reported(sink: OtlpSink) -> None:
    with instrumented(sink) as shim:

        async def main() -> None:
            lock = asyncio.Lock()
            await lock.acquire()
            waiter = asyncio.create_task(lock.acquire(), name="waiter")
            await asyncio.to_thread(
                sink.wait_for,
                lambda e: (
                    e.name == events.EVENT_WAIT_START
                    and e.attrs[events.ATTR_ACTOR_NAME] == "waiter"
                ),
                30,
            )
            # The holder (this task) was reported with the wait, as the one waited for.
            sink.wait_for(
                lambda e: (
                    e.name == events.EVENT_HOLD_START
                    and e.attrs[events.ATTR_LOCK_SYSTEM] == "asyncio"
                    and e.attrs[events.ATTR_ACTOR_ID].startswith("task:")
                )
            )
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            end = await asyncio.to_thread(
                sink.wait_for, lambda e: e.name == events.EVENT_WAIT_END, 30
            )
            assert end.attrs[events.ATTR_OUTCOME] == "cancelled"
            lock.release()
            assert shim.recorder.due_waits(10**19) == []

        run(main)


def test_replaced_methods_look_like_the_originals(sink: OtlpSink) -> None:
    bare = (asyncio.Lock.acquire.__qualname__, asyncio.Lock.release.__doc__)
    with instrumented(sink):
        assert (asyncio.Lock.acquire.__qualname__, asyncio.Lock.release.__doc__) == bare
        assert asyncio.iscoroutinefunction(asyncio.Lock.acquire)
    assert asyncio.Lock.acquire.__qualname__ == bare[0]
    assert not hasattr(asyncio.Lock.acquire, "__wrapped__")  # restored exactly
