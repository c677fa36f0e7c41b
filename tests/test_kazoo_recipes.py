"""The kazoo recipes target (lockscope.instrumentation.kazoo_recipes): what a kazoo waiter
reports about its holder, and one ZooKeeper namespace spelling for the shim and lockscope's
own locks (real ZooKeeper, a real OTLP sink)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
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
        service_name="kazoo-recipes",
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument(flush_timeout=0.2)


def _named_wait(event: Any, path: str) -> dict[str, Any] | None:
    """The attributes of a wait on ``path`` (its wait.start, or a heartbeat's entry) that
    names its holder and carries its ticket, if ``event`` has one."""
    if event.name == ev.EVENT_WAIT_START:
        entries = [event.attrs]
    elif event.name == ev.EVENT_HEARTBEAT:
        entries = list(event.attrs.get(ev.ATTR_WAITS) or ())
    else:
        return None
    for attrs in entries:
        if attrs.get(ev.ATTR_LOCK_NAME) == path and all(
            key in attrs
            for key in (ev.ATTR_LOCK_HOLDER_OWNER, ev.ATTR_LOCK_HOLDER_TOKEN, ev.ATTR_WAIT_TICKET)
        ):
            return dict(attrs)
    return None


@pytest.mark.parametrize("recipe", ["Lock", "WriteLock"])
def test_a_kazoo_waiter_names_its_holder_as_the_holder_names_itself(
    shim: runtime.Shim, sink: OtlpSink, zookeeper_server: Any, recipe: str
) -> None:
    """The waiter's ``holder_owner``/``holder_token`` equal the holder's ``owner``/``token``:
    the agent can confirm a ZooKeeper deadlock at once, without waiting for heartbeats."""
    client = KazooClient(hosts=zookeeper_server.hosts, timeout=10)
    client.start(timeout=30)
    path = f"/kazoo-recipes/named-{recipe}"
    try:
        holder = getattr(client, recipe)(path, "holder")
        assert holder.acquire(timeout=10)
        waiter = getattr(client, recipe)(path, "waiter")
        result: list[str] = []

        def wait() -> None:
            try:
                # Long enough for a heartbeat to carry a look-up that was slow to finish.
                waiter.acquire(timeout=3.0)
            except LockTimeout:
                result.append("timeout")

        thread = threading.Thread(target=wait)
        thread.start()
        # The first report (after report_after) may come before the look-up of the holder
        # (or the waiter's own queue node) is done on a loaded host; the heartbeats that
        # follow while the wait lasts carry what it learned.
        named = sink.wait_for(lambda e: _named_wait(e, path) is not None)
        start = _named_wait(named, path)
        assert start is not None
        thread.join(30)
        assert result == ["timeout"]
        hold = sink.wait_for(
            lambda e: e.name == ev.EVENT_HOLD_START and e.attrs[ev.ATTR_LOCK_NAME] == path
        )
        holder.release()
        assert start[ev.ATTR_LOCK_HOLDER_OWNER] == hold.attrs[ev.ATTR_LOCK_OWNER]
        assert start[ev.ATTR_LOCK_HOLDER_TOKEN] == hold.attrs[ev.ATTR_LOCK_TOKEN]
        assert start[ev.ATTR_QUEUE_POSITION] > hold.attrs[ev.ATTR_LOCK_TOKEN]
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
