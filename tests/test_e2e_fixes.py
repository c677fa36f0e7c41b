"""Fixes found by the end-to-end detection tests (tests/test_e2e_detection.py), each pinned
by a test of its own: the shim's first heartbeat, kazoo waiters naming their holder as the
holder names itself, one ZooKeeper namespace spelling, and the metrics of a forgotten
process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from lockscope import events as ev
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.otlp_sink import OtlpSink


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


@pytest.fixture
def shim(sink: OtlpSink) -> Iterator[runtime.Shim]:
    config = ShimConfig(
        endpoint=sink.endpoint,
        report_after=0.05,
        heartbeat=60.0,  # the regular heartbeat would come far too late for the tests
        metrics_export="none",
        service_name="fixes",
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument(flush_timeout=0.2)


def _names(entries: Any) -> set[str]:
    return {entry.get(ev.ATTR_LOCK_NAME) for entry in entries or ()}


def test_the_first_report_comes_with_a_heartbeat(
    shim: runtime.Shim, sink: OtlpSink, redis_url: str
) -> None:
    """A process that reports a hold and dies before its first regular heartbeat must
    already have told the agent its heartbeat interval (else: "never heard from")."""
    client = redis.Redis.from_url(redis_url)
    lock = client.lock("fixes:first-beat", timeout=30)
    assert lock.acquire()
    try:
        beat = sink.wait_for(
            lambda e: (
                e.name == ev.EVENT_HEARTBEAT
                and "fixes:first-beat" in _names(e.attrs[ev.ATTR_HOLDS])
            ),
            timeout=10,
        )
        assert beat.attrs[ev.ATTR_HEARTBEAT_INTERVAL] == 60.0
        assert len(sink.named(ev.EVENT_HEARTBEAT)) == 1  # once, not on every report
    finally:
        lock.release()
        client.close()
