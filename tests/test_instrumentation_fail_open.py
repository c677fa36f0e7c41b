"""Fail open: whatever the agent does (refuses, never answers, 500, 429), lock calls behave
as bare ones, the shim's memory stays bounded and what it could not send is counted."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from lockscope import events
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.testing.otlp_sink import OtlpSink

QUEUE = 20


def _refused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _shim(endpoint: str, **overrides: float) -> Iterator[runtime.Shim]:
    config = ShimConfig(
        endpoint=endpoint,
        report_after=0.02,
        heartbeat=float(overrides.get("heartbeat", 0.02)),
        metrics_export="none",
        queue_size=QUEUE,
        http_timeout=0.2,
    )
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config)
    assert runtime.current is not None
    yield runtime.current
    instrumentor.uninstrument(flush_timeout=0.2)


def _until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _lock_scenario(client: redis.Redis) -> list[object]:
    """Lock calls whose results must not depend on the agent."""
    out: list[object] = []
    lock = client.lock("fo:a", timeout=10)
    out.append(lock.acquire())
    out.append(client.lock("fo:a", timeout=10).acquire(blocking=False))
    out.append(lock.extend(5))
    lock.release()
    client.set("fo:b", "other")
    stolen = client.lock("fo:b", timeout=10)
    try:
        stolen.release()
    except redis.exceptions.LockError as exc:
        out.append(type(exc).__name__)
    for i in range(200):  # more events (order pairs, holds) than the queue takes
        with (
            client.lock(f"fo:{i}:x", timeout=10),
            client.lock(f"fo-{chr(65 + i % 26)}", timeout=10),
        ):
            pass
    out.append(sorted(client.keys("fo:*")))
    return out


EXPECTED = [True, False, True, "LockError", [b"fo:b"]]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def test_agent_refusing_connections(client: redis.Redis) -> None:
    with _shim(_refused_endpoint()) as shim:
        assert _lock_scenario(client) == EXPECTED
        _until(lambda: shim.recorder.dropped > 0)
        assert shim.recorder.pending() <= QUEUE
        assert shim.reporter.sent == 0
        assert shim.reporter.failed_posts > 0
        assert shim.recorder.errors == 0


def test_agent_black_holed(redis_url: str) -> None:
    with OtlpSink() as sink:
        sink.black_hole = True  # accepts the connection, reads, never answers
        r = redis.Redis.from_url(redis_url)
        with _shim(sink.endpoint) as shim:
            sink.wait_until(lambda s: len(s.requests) >= 1)
            # The sender is stuck waiting for an answer; lock calls are not.
            assert _lock_scenario(r) == EXPECTED
            _until(lambda: shim.recorder.dropped > 0)
            assert shim.recorder.pending() <= QUEUE
            assert shim.reporter.sent == 0
        r.close()


def test_agent_answering_500_drops_without_retrying(client: redis.Redis) -> None:
    with OtlpSink() as sink:
        sink.status = 500
        with _shim(sink.endpoint, heartbeat=0.05) as shim:
            assert _lock_scenario(client) == EXPECTED
            _until(lambda: shim.recorder.dropped > 0 and shim.reporter.failed_posts >= 2)
            # 500 is not retryable: one request per failed batch.
            assert len(sink.requests) == shim.reporter.failed_posts
            assert not sink.events


def test_agent_answering_429_is_retried_after_retry_after(client: redis.Redis) -> None:
    with OtlpSink() as sink:
        sink.status = 429
        sink.retry_after = "1"
        with _shim(sink.endpoint, heartbeat=5.0) as shim:
            assert _lock_scenario(client) == EXPECTED
            sink.wait_until(lambda s: len(s.requests) >= 1)
            first = sink.requests[0][2]
            sink.status = 200
            # The same batch comes back once Retry-After has passed, and is accepted.
            sink.wait_until(lambda s: len(s.events) > 0, timeout=10)
            second = sink.requests[1][2]
            assert second - first >= 1e9
            assert any(e.name == events.EVENT_ORDER_PAIR for e in sink.snapshot())
            _until(lambda: shim.reporter.sent > 0)


def test_memory_stays_bounded_under_a_burst_while_the_agent_is_down(client: redis.Redis) -> None:
    with _shim(_refused_endpoint(), heartbeat=10.0) as shim:
        stop = threading.Event()
        held = client.lock("fo:held", timeout=30)
        assert held.acquire()

        def contend() -> None:
            # Each acquire that waits past report_after is one wait.start + wait.end.
            while not stop.is_set():
                client.lock("fo:held", timeout=30).acquire(blocking_timeout=0.05)

        threads = [threading.Thread(target=contend) for _ in range(4)]
        for t in threads:
            t.start()
        _until(lambda: shim.recorder.dropped > 0)
        stop.set()
        for t in threads:
            t.join(10)
        held.release()
        assert shim.recorder.pending() <= QUEUE
        assert shim.recorder.errors == 0


def test_shim_bugs_never_reach_the_caller(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockscope.instrumentation.recorder import Recorder

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shim bug")

    with _shim(_refused_endpoint()) as shim:
        monkeypatch.setattr(Recorder, "end_wait", broken)
        monkeypatch.setattr(Recorder, "find_hold", broken)
        assert _lock_scenario(client) == EXPECTED
        assert shim.recorder.errors > 0
