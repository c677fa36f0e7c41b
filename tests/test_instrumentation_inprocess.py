"""The opt-in in-process targets: threading.Lock/RLock and asyncio.Lock created by app code."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterator

import pytest

from lockscope import events
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.instrumentation.threading_locks import TracedLock, TracedRLock
from lockscope.testing.otlp_sink import OtlpSink


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


@contextlib.contextmanager
def instrumented(sink: OtlpSink, **kwargs: bool) -> Iterator[runtime.Shim]:
    config = ShimConfig(endpoint=sink.endpoint, report_after=0.1, heartbeat=0.2,
                        metrics_export="agent", metrics_interval=0.2)  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config, **kwargs)
    assert runtime.current is not None
    try:
        yield runtime.current
    finally:
        instrumentor.uninstrument()


def traced(lock: object) -> TracedLock:
    """``lock`` as the TracedLock it is under the shim (typeshed: the final _thread.lock)."""
    assert isinstance(lock, TracedLock)
    return lock


def test_only_app_code_gets_traced_locks(sink: OtlpSink) -> None:
    with instrumented(sink, threading=True):
        assert isinstance(threading.Lock(), TracedLock)
        assert isinstance(threading.RLock(), TracedRLock)
        # Created inside the standard library: plain, unobserved, full speed.
        assert not isinstance(queue.Queue().mutex, TracedLock)
        assert not isinstance(threading.Condition()._lock, TracedLock)  # type: ignore[attr-defined]
    assert not isinstance(threading.Lock(), TracedLock)


def test_threading_wait_hold_and_order_pair_are_reported(sink: OtlpSink) -> None:
    with instrumented(sink, threading=True) as shim:
        first = threading.Lock()  # line of creation = template
        second = threading.Lock()
        second_taken = threading.Event()
        release_second = threading.Event()

        def holder() -> None:
            with second:
                second_taken.set()
                release_second.wait(30)

        def waiter() -> None:
            with first, second:  # waits for `second` while holding `first`
                pass

        t1 = threading.Thread(target=holder, name="holder")
        t1.start()
        second_taken.wait(30)
        t2 = threading.Thread(target=waiter, name="waiter")
        t2.start()
        start = sink.wait_for(
            lambda e: (
                e.name == events.EVENT_WAIT_START
                and e.attrs[events.ATTR_LOCK_SYSTEM] == "threading"
            )
        )
        release_second.set()
        t1.join(30)
        t2.join(30)
        assert start.attrs[events.ATTR_ACTOR_NAME] == "waiter"
        assert start.attrs[events.ATTR_LOCK_NAMESPACE] == shim.instance_id
        assert start.attrs[events.ATTR_LOCK_TEMPLATE].startswith("tests/")
        assert start.attrs[events.ATTR_LOCK_NAME] == traced(second)._site
        holds = {
            e.attrs[events.ATTR_LOCK_NAME]: e
            for e in sink.named(events.EVENT_HOLD_START)
            if e.attrs[events.ATTR_LOCK_SYSTEM] == "threading"
        }
        # Both the waiter's own hold and the long hold of the holder thread.
        assert holds[traced(first)._site].attrs[events.ATTR_ACTOR_NAME] == "waiter"
        assert holds[traced(second)._site].attrs[events.ATTR_ACTOR_NAME] == "holder"
        pair = sink.wait_for(lambda e: e.name == events.EVENT_ORDER_PAIR)
        assert pair.attrs[events.ATTR_ORDER_FIRST] == traced(first)._template
        assert pair.attrs[events.ATTR_ORDER_SECOND] == traced(second)._template
        sink.wait_for(lambda e: e.name == events.EVENT_WAIT_END
                      and e.attrs[events.ATTR_OUTCOME] == "acquired")  # fmt: skip
        ends = sink.wait_for(
            lambda e: (
                e.name == events.EVENT_HOLD_END
                and e.attrs[events.ATTR_LOCK_NAME] == traced(second)._site
            )
        )
        assert ends.attrs[events.ATTR_OUTCOME] == "released"


def test_threading_metrics_are_aggregated_by_creation_site(sink: OtlpSink) -> None:
    with instrumented(sink, threading=True):
        lock = threading.Lock()
        for _ in range(1000):
            with lock:
                pass
        template = traced(lock)._template

        def counted(s: OtlpSink) -> bool:
            return any(
                name == events.METRIC_ACQUISITIONS
                and attrs[events.ATTR_LOCK_TEMPLATE] == template
                and point.as_int >= 1000
                for name, attrs, point in s.iter_metric_points()
            )

        sink.wait_until(counted)
    holds = [
        point
        for name, attrs, point in sink.iter_metric_points()
        if name == events.METRIC_HOLD_DURATION and attrs[events.ATTR_LOCK_TEMPLATE] == template
    ]
    assert holds[-1].count == 1000
    assert sum(holds[-1].bucket_counts) == 1000


def test_asyncio_lock_long_wait_is_reported_with_the_task(sink: OtlpSink) -> None:
    async def main() -> None:
        lock = asyncio.Lock()
        released = asyncio.Event()

        async def holder() -> None:
            async with lock:
                await released.wait()

        async def waiter() -> None:
            async with lock:
                pass

        h = asyncio.create_task(holder(), name="holder-task")
        await asyncio.sleep(0)
        w = asyncio.create_task(waiter(), name="waiter-task")
        await asyncio.to_thread(sink.wait_for, lambda e: e.name == events.EVENT_WAIT_START, 30)
        released.set()
        await asyncio.gather(h, w)

    with instrumented(sink, asyncio=True):
        asyncio.run(asyncio.wait_for(main(), 30))
    start = sink.named(events.EVENT_WAIT_START)[0]
    assert start.attrs[events.ATTR_LOCK_SYSTEM] == "asyncio"
    assert start.attrs[events.ATTR_ACTOR_NAME] == "waiter-task"
    assert start.attrs[events.ATTR_ACTOR_ID].startswith("task:")
    hold = sink.wait_for(lambda e: e.name == events.EVENT_HOLD_START)
    assert hold.attrs[events.ATTR_ACTOR_NAME] == "holder-task"
