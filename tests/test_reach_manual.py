"""The public API for any other lock (lockscope.instrumentation.manual): the same registry,
events and detection as the built-in targets, and the app's lock untouched."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.instrumentation.manual import AsyncTrackedLock, LockSpec, TrackedLock
from lockscope.testing.agent import InProcessAgent
from reach_helpers import Api, unique, until


@pytest.fixture
def agent() -> Iterator[InProcessAgent]:
    with InProcessAgent() as a:
        yield a


@pytest.fixture
def shim(agent: InProcessAgent) -> Iterator[runtime.Shim]:
    config = ShimConfig(endpoint=agent.otlp_url, report_after=0.1, heartbeat=0.5,
                        metrics_export="none", service_name="manual")  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument(flush_timeout=0.5)


def acquisitions(shim: runtime.Shim) -> int:
    """Acquire calls recorded so far (any outcome)."""
    return sum(shim.recorder.stats.snapshot()[1].values())


def holds(shim: runtime.Shim, spec: LockSpec) -> list[Any]:
    return shim.recorder.holds_matching(lambda h: h.info.key == spec.key)


def test_tracked_locks_in_opposite_order_are_a_deadlock(
    shim: runtime.Shim, agent: InProcessAgent
) -> None:
    a = TrackedLock(threading.Lock(), LockSpec(unique("manual"), system="etcd", namespace="e:1"))
    b = TrackedLock(threading.Lock(), LockSpec(unique("manual"), system="etcd", namespace="e:1"))
    api = Api(agent.http_url)
    first = threading.Barrier(2)
    results: list[bool] = []

    def take(x: TrackedLock[Any], y: TrackedLock[Any], timeout: float) -> None:
        with x:
            first.wait()
            got = y.acquire(timeout=timeout)
            results.append(got)
            if got:
                y.release()

    threads = [threading.Thread(target=take, args=p) for p in ((a, b, 8), (b, a, 20))]
    for t in threads:
        t.start()
    try:
        names = {a.spec.info.name, b.spec.info.name}
        found = until(lambda: api.deadlock_on(names), timeout=8)
        assert {p["waits_for"] for p in found["participants"]} == names
        assert all(len(p["holds"]) == 1 for p in found["participants"])
    finally:
        for t in threads:
            t.join(20)
    # The app's own timeout ended it, as without lockscope: the first gave up, the second won.
    assert results == [False, True]


def test_acquiring_and_released_record_outcomes_and_pass_exceptions(shim: runtime.Shim) -> None:
    spec = LockSpec(unique("spec"), system="custom", ttl=30)
    with spec.acquiring() as attempt:
        attempt.acquired(token=7, owner="me")
    (hold,) = holds(shim, spec)
    assert (hold.token, hold.owner, hold.info.ttl) == (7, "me", 30.0)
    spec.released()
    assert holds(shim, spec) == []
    with spec.acquiring() as attempt:
        attempt.result(False)
    assert holds(shim, spec) == []
    with pytest.raises(KeyError, match="boom"), spec.acquiring():
        raise KeyError("boom")
    assert holds(shim, spec) == []
    spec.released()  # nothing held: a no-op
    before = acquisitions(shim)
    with spec.acquiring():
        pass
    spec.released(lost=True)
    assert acquisitions(shim) == before + 1
    assert shim.recorder.errors == 0


def test_a_tracked_lock_returns_what_the_lock_returns() -> None:
    """Not instrumented: a pass-through with the lock's results and errors."""
    inner = threading.Lock()
    lock = TrackedLock(inner, LockSpec("plain"))
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.locked() is True  # other attributes are the lock's
    assert lock.release() is None
    with pytest.raises(RuntimeError):
        lock.release()


def test_async_tracked_lock_holds_by_task(shim: runtime.Shim) -> None:
    spec = LockSpec(unique("async"), system="custom")

    async def main() -> tuple[int, int]:
        lock = AsyncTrackedLock(asyncio.Lock(), spec)
        async with lock:
            (hold,) = holds(shim, spec)
            task = asyncio.current_task()
            mine = hold.actor == id(task)
        return int(mine), len(holds(shim, spec))

    assert asyncio.run(main()) == (1, 0)


def test_spec_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="mode"):
        LockSpec("x", mode="shared")
    with pytest.raises(ValueError, match="max_leases"):
        LockSpec("x", mode="semaphore")
    spec = LockSpec("jobs", system="custom", namespace="n", mode="semaphore", max_leases=3,
                    process_bound=True)  # fmt: skip
    assert spec.key == "custom:n/jobs"
    assert spec.info.attrs["lockscope.lock.process_bound"] is True
