"""instrumentation/reporter.py: what the reporter thread sends, in which order."""

from __future__ import annotations

from lockscope import events
from lockscope.instrumentation.otlp_export import PostResult
from lockscope.instrumentation.recorder import LockInfo, Recorder
from lockscope.instrumentation.reporter import Reporter
from lockscope.testing.otlp_sink import decode_logs


class _Capture:
    """A transport that keeps every logs body (and can fail the first posts)."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.fail = fail

    def post(self, path: str, body: bytes) -> PostResult:
        if path != "/v1/logs":
            return PostResult(ok=True, retryable=False)
        if self.fail:
            self.fail -= 1
            return PostResult(ok=False, retryable=False, status=400)
        self.bodies.append(body)
        return PostResult(ok=True, retryable=False)


def test_every_event_carries_the_send_order_sequence() -> None:
    """Issue 14 item 1 (shim side): events and heartbeats are numbered 1, 2, 3... in the
    order the process sent them, whatever its wall clock says (the agent orders by it)."""
    recorder = Recorder(report_after=0.0)
    transport = _Capture(fail=1)
    resource = {"service.name": "s", "host.name": "h", "process.pid": 7, "service.instance.id": "i"}
    reporter = Reporter(
        recorder,
        transport,  # type: ignore[arg-type]
        lambda: resource,
        report_after=0.0,
        heartbeat=1.0,
        probes=lambda w: None,
    )
    a = LockInfo("redis", "ns", "a:1", "a:{id}")
    for i in range(3):
        wait = recorder.begin_wait(a, i + 1, None, object())
        hold = recorder.end_wait(wait, "acquired")
        assert hold is not None
        reporter.scan(heartbeat=True)
        reporter._send(recorder.drain(512))
        recorder.end_hold(hold)
    reporter.scan(heartbeat=True)
    reporter._send(recorder.drain(512))
    seqs = [r.attrs[events.ATTR_SEQUENCE] for body in transport.bodies for r in decode_logs(body)]
    names = [r.name for body in transport.bodies for r in decode_logs(body)]
    assert events.EVENT_HEARTBEAT in names
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    # the first batch was refused and dropped: its numbers are a gap, never reused
    assert seqs[0] > 1
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
