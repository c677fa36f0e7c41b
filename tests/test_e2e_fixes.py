"""Fixes found by the end-to-end detection tests (tests/test_e2e_detection.py), each pinned
by a test of its own: the shim's first heartbeat, kazoo waiters naming their holder as the
holder names itself, one ZooKeeper namespace spelling, and the metrics of a forgotten
process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout

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
        # While it holds a reported lock it promises the busy interval, not its idle 60 s,
        # so the agent calls the hold orphaned ~1.2 s after the process stops.
        assert beat.attrs[ev.ATTR_HEARTBEAT_INTERVAL] == 0.4
    finally:
        lock.release()
        client.close()


def _beats_listing(sink: OtlpSink, kind: str, name: str) -> list[Any]:
    return [e for e in sink.named(ev.EVENT_HEARTBEAT) if name in _names(e.attrs[kind])]


def test_a_long_wait_brings_a_snapshot_every_report_after_until_it_ends(
    shim: runtime.Shim, sink: OtlpSink, redis_url: str
) -> None:
    """A waiting process re-asserts its wait and holds every report_after (here 0.05 s, so
    the 0.1 s floor; its idle heartbeat is 60 s), so a deadlock's participants all speak up
    soon after the cycle closes; once nothing is reported, snapshots fall back to idle."""
    client = redis.Redis.from_url(redis_url)
    holder = client.lock("fixes:cadence", timeout=30)
    assert holder.acquire()
    result: list[bool] = []

    def wait() -> None:
        lock = client.lock("fixes:cadence", timeout=30)
        result.append(bool(lock.acquire(blocking_timeout=30)))
        lock.release()

    waiter = threading.Thread(target=wait)
    try:
        waiter.start()
        # Five snapshots listing the wait while it lasts: with the old fixed 60 s
        # heartbeat there would be one.
        sink.wait_until(lambda s: len(_beats_listing(s, ev.ATTR_WAITS, "fixes:cadence")) >= 5)
        beats = _beats_listing(sink, ev.ATTR_WAITS, "fixes:cadence")
        assert {b.attrs[ev.ATTR_HEARTBEAT_INTERVAL] for b in beats} == {0.4}
    finally:
        holder.release()
        waiter.join(30)
    assert result == [True]
    # The waiter got the lock and released it (the shim saw both): the next snapshot is
    # empty and announces the idle interval again.
    idle = sink.wait_for(
        lambda e: (
            e.name == ev.EVENT_HEARTBEAT
            and not e.attrs[ev.ATTR_WAITS]
            and not e.attrs[ev.ATTR_HOLDS]
            and e.attrs[ev.ATTR_HEARTBEAT_INTERVAL] == 60.0
        ),
        timeout=10,
    )
    assert idle is not None
    client.close()


@pytest.mark.parametrize("recipe", ["Lock", "WriteLock"])
def test_a_kazoo_waiter_names_its_holder_as_the_holder_names_itself(
    shim: runtime.Shim, sink: OtlpSink, zookeeper_server: Any, recipe: str
) -> None:
    """The waiter's ``holder_owner``/``holder_token`` equal the holder's ``owner``/``token``:
    the agent can confirm a ZooKeeper deadlock at once, without waiting for heartbeats."""
    client = KazooClient(hosts=zookeeper_server.hosts, timeout=10)
    client.start(timeout=30)
    path = f"/fixes/named-{recipe}"
    try:
        holder = getattr(client, recipe)(path, "holder")
        assert holder.acquire(timeout=10)
        waiter = getattr(client, recipe)(path, "waiter")
        result: list[str] = []

        def wait() -> None:
            try:
                waiter.acquire(timeout=1.0)
            except LockTimeout:
                result.append("timeout")

        thread = threading.Thread(target=wait)
        thread.start()
        start = sink.wait_for(
            lambda e: e.name == ev.EVENT_WAIT_START and e.attrs[ev.ATTR_LOCK_NAME] == path
        )
        thread.join(30)
        assert result == ["timeout"]
        hold = sink.wait_for(
            lambda e: e.name == ev.EVENT_HOLD_START and e.attrs[ev.ATTR_LOCK_NAME] == path
        )
        holder.release()
        assert start.attrs[ev.ATTR_LOCK_HOLDER_OWNER] == hold.attrs[ev.ATTR_LOCK_OWNER]
        assert start.attrs[ev.ATTR_LOCK_HOLDER_TOKEN] == hold.attrs[ev.ATTR_LOCK_TOKEN]
        assert start.attrs[ev.ATTR_QUEUE_POSITION] > hold.attrs[ev.ATTR_LOCK_TOKEN]
    finally:
        client.stop()
        client.close()


def test_one_zookeeper_namespace_for_the_shim_and_lockscopes_locks() -> None:
    """A kazoo recipe and a lockscope ZooKeeperLock on the same ensemble, however each
    client lists its servers, are the same lock for the agent."""
    from lockscope.instrumentation.kazoo_recipes import zookeeper_namespace
    from lockscope.locks.zookeeper import ZooKeeperLock

    listed = KazooClient(hosts="127.0.0.2:2182,127.0.0.1:2181,127.0.0.2:2182/app")
    reordered = KazooClient(hosts="127.0.0.1:2181,127.0.0.2:2182/app")
    expected = "127.0.0.1:2181,127.0.0.2:2182/app"
    assert ev.zookeeper_namespace(listed.hosts, listed.chroot) == expected
    assert zookeeper_namespace(listed) == zookeeper_namespace(reordered) == expected
    assert ZooKeeperLock(listed, "x").namespace == expected


def test_a_forgotten_process_drops_its_metric_series_but_keeps_its_totals() -> None:
    """When the state forgets a dead process, the metrics store forgets its series too
    (folding its totals into the fleet's), instead of keeping them for the idle sweep."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from lockscope.agent.config import AgentConfig
    from lockscope.agent.model import Event, ProcessInfo
    from lockscope.testing.agent import InProcessAgent
    from reliability_helpers import request, until

    config = AgentConfig(heartbeat_timeout_floor=0.1, dead_process_retention=0.3)
    proc = ProcessInfo("gone", "host", 4242, "gone-instance")
    with InProcessAgent(config) as agent:
        body = ExportMetricsServiceRequest()
        rm = body.resource_metrics.add()
        for key, value in ((ev.RES_SERVICE_NAME, "gone"), (ev.RES_SERVICE_INSTANCE, proc.instance)):
            rm.resource.attributes.add(key=key).value.string_value = value
        metric = rm.scope_metrics.add().metrics.add(name=ev.METRIC_ACQUISITIONS)
        metric.sum.aggregation_temporality = 2  # type: ignore[assignment]  # cumulative
        metric.sum.is_monotonic = True
        now = time.time_ns()
        point = metric.sum.data_points.add(start_time_unix_nano=now, time_unix_nano=now, as_int=7)
        for key, value in (
            (ev.ATTR_LOCK_TEMPLATE, "gone:{id}"),
            (ev.ATTR_LOCK_SYSTEM, "redis"),
            (ev.ATTR_OUTCOME, "acquired"),
        ):
            point.attributes.add(key=key).value.string_value = value
        status, _, _ = request(
            agent.otlp_url + "/v1/metrics",
            data=body.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert status == 200
        store = agent.runner.metrics_store
        assert agent.call(store.processes) == [proc.instance]
        beat = {ev.ATTR_HOLDS: [], ev.ATTR_WAITS: [], ev.ATTR_HEARTBEAT_INTERVAL: 0.05}
        agent.post_events([Event(ev.EVENT_HEARTBEAT, time.time_ns(), proc, beat)])
        # Silent from now on: presumed dead after 0.15 s, forgotten 0.3 s later.
        until(lambda: agent.call(store.processes) == [], timeout=10)
        assert sum(agent.call(store.sums).values()) == 7
