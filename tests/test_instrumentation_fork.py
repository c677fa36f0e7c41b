"""fork(): the child starts with an empty registry and its own reporter, and reports under
its own pid and instance id; the parent keeps reporting."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import redis

from lockscope import events
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.faults import wait_exited
from lockscope.testing.otlp_sink import OtlpSink


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


def _long_wait(client: redis.Redis, name: str) -> None:
    held = client.lock(name, timeout=30)
    assert held.acquire()
    waiter = threading.Thread(
        target=lambda: client.lock(name, timeout=30).acquire(blocking_timeout=0.4)
    )
    waiter.start()
    waiter.join(30)
    held.release()


def test_forked_child_reports_under_its_own_pid(sink: OtlpSink, redis_url: str) -> None:
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(
        config=ShimConfig(
            endpoint=sink.endpoint, report_after=0.1, heartbeat=0.2, metrics_export="none"
        )
    )
    try:
        client = redis.Redis.from_url(redis_url)
        parent_hold = client.lock("fork:parent-held", timeout=30)
        assert parent_hold.acquire()  # held across the fork: the child must not report it
        parent_instance = runtime.current.instance_id  # type: ignore[union-attr]
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                shim = runtime.current
                assert shim is not None
                assert shim.instance_id != parent_instance
                assert shim.recorder.find_hold(parent_hold, threading.get_ident()) is None
                _long_wait(client, "fork:child")
                shim.stop(flush_timeout=5.0)  # what atexit does; os._exit skips atexit
                code = 0 if shim.reporter.sent > 0 else 3
            finally:
                os._exit(code)
        _long_wait(client, "fork:parent")
        wait_exited(pid, timeout=30)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        child = sink.wait_for(
            lambda e: (
                e.name == events.EVENT_WAIT_START and e.attrs[events.ATTR_LOCK_NAME] == "fork:child"
            )
        )
        parent = sink.wait_for(
            lambda e: (
                e.name == events.EVENT_WAIT_START
                and e.attrs[events.ATTR_LOCK_NAME] == "fork:parent"
            )
        )
        assert child.pid == pid
        assert parent.pid == os.getpid()
        assert child.event.process.instance != parent.event.process.instance
        assert parent.event.process.instance == parent_instance
        # The parent's hold is reported by the parent only.
        sink.wait_for(
            lambda e: (
                e.name == events.EVENT_HOLD_START
                and e.attrs[events.ATTR_LOCK_NAME] == "fork:parent-held"
            )
        )
        assert {
            e.pid
            for e in sink.snapshot()
            if e.attrs.get(events.ATTR_LOCK_NAME) == "fork:parent-held"
        } == {os.getpid()}
        # The parent keeps reporting after the fork: heartbeats continue.
        last = sink.named(events.EVENT_HEARTBEAT)[-1].event.time_ns
        sink.wait_for(
            lambda e: (
                e.name == events.EVENT_HEARTBEAT and e.pid == os.getpid() and e.event.time_ns > last
            )
        )
        parent_hold.release()
        client.close()
    finally:
        instrumentor.uninstrument()
