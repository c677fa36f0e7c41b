"""lockscope's own locks under the shim: recorded through the common surface, with fencing
tokens, owners and the holder look-up; delegating wrappers recorded once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from lockscope import events
from lockscope.errors import LockLost
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.otlp_sink import OtlpSink


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


@contextlib.contextmanager
def instrumented(sink: OtlpSink) -> Iterator[runtime.Shim]:
    config = ShimConfig(endpoint=sink.endpoint, report_after=0.1, heartbeat=0.3,
                        metrics_export="none")  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    try:
        yield runtime.current
    finally:
        instrumentor.uninstrument()


def test_redis_lock_wait_carries_the_holders_token_and_owner(
    sink: OtlpSink, redis_url: str
) -> None:
    from lockscope.locks import RedisLock

    with instrumented(sink):
        holder = RedisLock("jobs:42", redis_url, ttl=10)
        assert holder.acquire()
        got: list[bool] = []
        waiter = threading.Thread(
            target=lambda: got.append(RedisLock("jobs:42", redis_url, ttl=10).acquire(timeout=0.5)),
            name="lockscope-waiter",
        )
        waiter.start()
        waiter.join(30)
        assert got == [False]
        start = sink.wait_for(lambda e: e.name == events.EVENT_WAIT_START)
        assert start.attrs[events.ATTR_LOCK_SYSTEM] == holder.system
        assert start.attrs[events.ATTR_LOCK_NAMESPACE] == holder.namespace
        assert start.attrs[events.ATTR_LOCK_TEMPLATE] == "jobs:{id}"
        assert start.attrs[events.ATTR_LOCK_HOLDER_TOKEN] == holder.fencing_token
        assert start.attrs[events.ATTR_LOCK_HOLDER_OWNER] == holder.owner
        hold = sink.wait_for(lambda e: e.name == events.EVENT_HOLD_START)
        assert hold.attrs[events.ATTR_LOCK_TOKEN] == holder.fencing_token
        assert hold.attrs[events.ATTR_LOCK_OWNER] == holder.owner
        end = sink.wait_for(lambda e: e.name == events.EVENT_WAIT_END)
        assert end.attrs[events.ATTR_OUTCOME] == "timeout"
        holder.release()
        sink.wait_for(lambda e: e.name == events.EVENT_HOLD_END)


def test_redis_lock_lost_is_reported_and_the_error_passes_through(
    sink: OtlpSink, redis_url: str
) -> None:
    import redis

    from lockscope.locks import RedisLock

    with instrumented(sink):
        lock = RedisLock("lost:1", redis_url, ttl=10)
        assert lock.acquire()
        client = redis.Redis.from_url(redis_url)
        for key in client.keys("*lost:1*"):
            client.delete(key)
        client.close()
        with pytest.raises(LockLost):
            lock.release()
        lost = sink.wait_for(lambda e: e.name == events.EVENT_LOCK_LOST)
        assert lost.attrs[events.ATTR_LOCK_NAME] == "lost:1"


def test_auto_renewing_lock_is_recorded_once(sink: OtlpSink, redis_url: str) -> None:
    from lockscope.locks import AutoRenewingLock, RedisLock

    with instrumented(sink) as shim:

        def acquisitions() -> int:
            return sum(shim.recorder.stats.snapshot()[1].values())

        before = acquisitions()
        lock = AutoRenewingLock(RedisLock("renewed:1", redis_url, ttl=1.0))
        assert lock.acquire()
        assert acquisitions() == before + 1
        hold = sink.wait_for(lambda e: e.name == events.EVENT_HOLD_START)
        assert hold.attrs[events.ATTR_LOCK_NAME] == "renewed:1"
        # The renewal thread's extends of the inner lock update the one hold.
        sink.wait_for(lambda e: e.name == events.EVENT_HOLD_EXTEND, timeout=10)
        lock.release()
        sink.wait_for(lambda e: e.name == events.EVENT_HOLD_END)
        starts = [e for e in sink.snapshot() if e.name == events.EVENT_HOLD_START]
        assert len(starts) == 1
