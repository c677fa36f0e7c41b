"""instrumentation/otlp_export.py: encoding the shim's events, retry hints."""

from __future__ import annotations

from lockscope import events
from lockscope.instrumentation.otlp_export import _retry_after, encode_events
from lockscope.testing.otlp_sink import decode_logs


def test_events_encode_and_decode_round_trip() -> None:
    attrs = {
        events.ATTR_LOCK_NAME: "orders:1",
        events.ATTR_LOCK_TTL: 5.0,
        events.ATTR_LOCK_TOKEN: 42,
        events.ATTR_LOCK_FIFO: True,
        events.ATTR_HOLDS: [{events.ATTR_LOCK_NAME: "x", events.ATTR_SINCE: 1}],
    }
    body = encode_events(
        [(events.EVENT_HEARTBEAT, 123, attrs)],
        {"service.name": "s", "host.name": "h", "process.pid": 7, "service.instance.id": "i"},
    )
    (received,) = decode_logs(body)
    assert received.name == events.EVENT_HEARTBEAT
    assert received.event.time_ns == 123
    assert dict(received.attrs) == attrs
    assert (received.pid, received.event.process.instance) == (7, "i")


def test_retry_after_seconds_and_dates() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after("soon") is None
