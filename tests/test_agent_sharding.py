"""More than one agent: three shard agents own the processes, two detector agents (HA)
get what the shards forward, and every cycle is still found.

Real agents on loopback, real instrumented processes (``lockscope instrument`` workers on
real Redis locks) spread across the shards by their ``LOCKSCOPE_ENDPOINT``, and fake apps
posting OTLP for the mutual-exclusion cases that real locks never produce on purpose.
"""

from __future__ import annotations

import functools
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from lockscope import events as ev
from lockscope.agent import otlp_fastlogs
from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.otlp_decode import decode_logs, parse_request
from lockscope.agent.shard_forward import ForwardFilter, encode_forwarded
from lockscope.testing.agent import InProcessAgent
from reliability_helpers import Worker, findings, until

S = 1_000_000_000


class Tier:
    """Two detectors and three shards forwarding to both."""

    def __init__(self) -> None:
        self.detectors = [
            InProcessAgent(AgentConfig(stale_holder_findings=False)).start() for _ in range(2)
        ]
        urls = [d.otlp_url for d in self.detectors]
        self.shards = [InProcessAgent(forward_to=urls).start() for _ in range(3)]

    def stop(self) -> None:
        for agent in [*self.shards, *self.detectors]:
            agent.stop()


@pytest.fixture
def tier() -> Iterator[Tier]:
    t = Tier()
    yield t
    t.stop()


def active_deadlocks(agent: InProcessAgent, locks: set[str]) -> list[dict[str, Any]]:
    return [
        d
        for d in findings(agent.http_url, "deadlocks")
        if d["status"] == "active" and set(d["locks"]) == locks
    ]


def _no_active_deadlock(agent: InProcessAgent, locks: set[str]) -> bool:
    return not active_deadlocks(agent, locks)


def test_a_ring_across_three_shards_is_found_by_both_detectors_and_no_shard(
    tier: Tier, redis_url: str
) -> None:
    names = [f"shard-ring:{i}" for i in range(3)]
    workers = [
        Worker(
            "deadlock",
            {"url": redis_url, "first": names[i], "second": names[(i + 1) % 3]},
            tier.shards[i].otlp_url,
            heartbeat=0.5,
            service=f"svc-{i}",
        )
        for i in range(3)
    ]
    try:
        for w in workers:
            w.expect("holding")
        for w in workers:
            w.send("go")
        found = [
            until(functools.partial(active_deadlocks, d, set(names)), 30)[0] for d in tier.detectors
        ]
        assert found[0]["id"] == found[1]["id"]  # one stable id: Alertmanager dedups HA pairs
        assert {p["service"] for p in found[0]["participants"]} == {"svc-0", "svc-1", "svc-2"}
        assert {p["pid"] for p in found[0]["participants"]} == {w.pid for w in workers}
        # Each shard sees one participant only: the cycle exists only in the detectors.
        for shard in tier.shards:
            assert findings(shard.http_url, "deadlocks") == []
            status = shard.get("/api/v1/forwarding")
            assert status["role"] == "shard"
            assert all(d["forwarded"] > 0 and d["dropped"] == 0 for d in status["detectors"])
        workers[0].kill()  # the victim: the ring resolves on both detectors
        for d in tier.detectors:
            until(functools.partial(_no_active_deadlock, d, set(names)), 30)
            assert findings(d.http_url, "stale-holders") == []  # detectors report none
    finally:
        for w in workers:
            w.kill()


def _proc(n: int) -> ProcessInfo:
    return ProcessInfo(service=f"fake-{n}", host="h", pid=5000 + n, instance=f"fake-inst-{n}")


def _lock(name: str, **extra: Any) -> dict[str, Any]:
    return {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: "10.0.0.1:6379/0",
        ev.ATTR_LOCK_NAME: name,
        ev.ATTR_ACTOR_ID: "thread:1",
        **extra,
    }


def _heartbeat(info: ProcessInfo, t: int, holds: list[dict[str, Any]]) -> Event:
    return Event(
        ev.EVENT_HEARTBEAT,
        t,
        info,
        {ev.ATTR_HEARTBEAT_INTERVAL: 0.5, ev.ATTR_HOLDS: holds, ev.ATTR_WAITS: []},
    )


def test_one_lock_held_from_two_shards_is_a_violation_only_the_detectors_see(
    tier: Tier,
) -> None:
    now = time.time_ns()
    one, two = _proc(1), _proc(2)
    both = _lock("shared:overlap", **{ev.ATTR_SINCE: now - 2 * S})
    for shard, info in ((tier.shards[0], one), (tier.shards[1], two)):
        shard.post_events(
            [Event(ev.EVENT_HOLD_START, now, info, both), _heartbeat(info, now, [both])]
        )
    for d in tier.detectors:
        found = until(functools.partial(findings, d.http_url, "violations"), 15)
        assert {v["reason"] for v in found} == {"overlapping_holds"}
        assert found[0]["lock"] == "shared:overlap"
    for shard in tier.shards:
        assert findings(shard.http_url, "violations") == []


def test_a_fencing_token_that_goes_backwards_across_shards_is_found(tier: Tier) -> None:
    now = time.time_ns()
    one, two = _proc(3), _proc(4)
    first = _lock("shared:token", **{ev.ATTR_SINCE: now - 3 * S, ev.ATTR_LOCK_TOKEN: 10})
    tier.shards[0].post_events(
        [
            Event(ev.EVENT_HOLD_START, now - 3 * S, one, first),
            Event(ev.EVENT_HOLD_END, now - 2 * S, one, first),
        ]
    )
    # The first shard's events must reach the detectors first (they come from two links):
    # a forwarded request counts once the detector answered, after applying it.
    until(
        lambda: all(
            d["forwarded"] == 2 for d in tier.shards[0].get("/api/v1/forwarding")["detectors"]
        ),
        15,
    )
    later = _lock("shared:token", **{ev.ATTR_SINCE: now - S, ev.ATTR_LOCK_TOKEN: 7})
    tier.shards[2].post_events([Event(ev.EVENT_HOLD_START, now - S, two, later)])
    for d in tier.detectors:
        found = until(functools.partial(findings, d.http_url, "violations"), 15)
        assert {v["reason"] for v in found} == {"fencing_token_backwards"}


def test_idle_processes_are_not_forwarded_and_a_dead_shard_invents_nothing(
    tier: Tier,
) -> None:
    shard, detector = tier.shards[0], tier.detectors[0]
    now = time.time_ns()
    idle = _proc(5)
    shard.post_events([_heartbeat(idle, now + i, []) for i in range(5)])
    status = until(lambda: shard.get("/api/v1/forwarding"), 5)
    assert status["skipped_heartbeats"] == 5
    assert status["selected"] == 0
    holder = _proc(6)
    held = _lock("shared:held", **{ev.ATTR_SINCE: now - S})
    shard.post_events(
        [Event(ev.EVENT_HOLD_START, now, holder, held), _heartbeat(holder, now, [held])]
    )
    until(lambda: detector.get("/api/v1/locks")["locks"], 15)
    # The shard goes away, so the holder's heartbeats stop reaching the detectors: the
    # shard would call the holder orphaned, a detector must not invent that.
    shard.stop()
    until(lambda: detector.get("/api/v1/processes")["processes"][0]["alive"] is False, 15)
    assert findings(detector.http_url, "stale-holders") == []
    tier.shards.remove(shard)


def test_a_detector_that_is_down_costs_the_shard_only_counted_drops() -> None:
    with InProcessAgent(AgentConfig(stale_holder_findings=False)) as alive:
        dead = InProcessAgent().start()
        dead_url = dead.otlp_url
        dead.stop()
        with InProcessAgent(forward_to=[dead_url, alive.otlp_url]) as shard:
            info = _proc(7)
            held = _lock("down:held", **{ev.ATTR_SINCE: time.time_ns()})
            shard.post_events([Event(ev.EVENT_HOLD_START, time.time_ns(), info, held)])
            until(lambda: alive.get("/api/v1/locks")["locks"], 15)
            status = until(
                lambda: (s := shard.get("/api/v1/forwarding"))["detectors"][0]["dropped"] and s,
                15,
            )
            down, up = status["detectors"]
            assert down["dropped"] == 1
            assert down["failed_posts"] >= 1
            assert down["last_error"]
            assert up["forwarded"] == 1
            assert up["dropped"] == 0
            with urllib.request.urlopen(shard.http_url + "/healthz", timeout=5) as r:
                assert r.status == 200
            # The same counters on /metrics, one series per detector link.
            samples = _metrics(shard.http_url)
            assert samples[("lockscope_agent_forwarded_events_total", dead_url)] == 0
            assert samples[("lockscope_agent_forwarded_events_total", alive.otlp_url)] == 1
            assert samples[("lockscope_agent_forward_dropped_events_total", dead_url)] == 1
            assert samples[("lockscope_agent_forward_dropped_events_total", alive.otlp_url)] == 0
            failures = samples[("lockscope_agent_forward_failures_total", dead_url)]
            assert failures == down["failed_posts"] >= 1
            assert samples[("lockscope_agent_forward_failures_total", alive.otlp_url)] == 0
            assert samples[("lockscope_agent_forward_requests_total", dead_url)] >= failures
            assert samples[("lockscope_agent_forward_requests_total", alive.otlp_url)] >= 1
            assert samples[("lockscope_agent_forward_queued_events", alive.otlp_url)] == 0
            assert samples[("lockscope_agent_forward_selected_events_total", "")] == 1
        # A detector (or any agent that does not forward) has no such series.
        assert not any(
            name.startswith("lockscope_agent_forward") for name, _ in _metrics(alive.http_url)
        )


def _metrics(http_url: str) -> dict[tuple[str, str], float]:
    """``/metrics`` samples by (name, ``detector`` label or "")."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(http_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, s.labels.get("detector", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_filter_forwards_one_empty_heartbeat_per_ended_state_and_each_pair_once() -> None:
    f = ForwardFilter()
    info = _proc(8)
    empty = _heartbeat(info, 1, [])
    assert not f.wants(empty)  # idle
    assert f.wants(Event(ev.EVENT_HOLD_START, 2, info, _lock("x")))
    assert f.wants(_heartbeat(info, 3, [_lock("x")]))
    assert f.wants(_heartbeat(info, 4, []))  # clears the detector's view
    assert not f.wants(_heartbeat(info, 5, []))
    pair = {ev.ATTR_ORDER_FIRST: "a", ev.ATTR_ORDER_SECOND: "b"}
    assert f.wants(Event(ev.EVENT_ORDER_PAIR, 6, info, pair))
    assert not f.wants(Event(ev.EVENT_ORDER_PAIR, 7, _proc(9), pair))  # same pair, once
    resent = f.resync()  # a detector may have lost events: pairs again, heartbeats heal
    assert [e.attrs for e in resent] == [pair]
    assert f.wants(_heartbeat(info, 8, []))
    assert not f.wants(_heartbeat(info, 9, []))


def test_forwarded_requests_keep_each_process_resource() -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    events = [
        Event(ev.EVENT_HOLD_START, 10, _proc(1), _lock("r", **{ev.ATTR_SINCE: 5})),
        _heartbeat(_proc(2), 11, [_lock("r", **{ev.ATTR_SINCE: 5})]),
        Event(ev.EVENT_HOLD_END, 12, _proc(1), _lock("r", **{ev.ATTR_SINCE: 5})),
    ]
    body = encode_forwarded(events)
    request = ExportLogsServiceRequest.FromString(body)
    assert len(request.resource_logs) == 3  # the order across processes is kept
    decoded = decode_logs(parse_request("logs", body, "protobuf"), 99).events
    assert [(e.name, e.time_ns, e.process) for e in decoded] == [
        (e.name, e.time_ns, e.process) for e in events
    ]
    assert decoded[1].attrs[ev.ATTR_HOLDS] == [dict(events[1].attrs[ev.ATTR_HOLDS][0])]
    # A shard forwards what it decoded with the raw attributes kept: the same bytes again.
    otlp_fastlogs.keep_raw(True)
    try:
        kept = decode_logs(parse_request("logs", body, "protobuf"), 99).events
    finally:
        otlp_fastlogs.keep_raw(False)
    assert all(isinstance(e.attrs, otlp_fastlogs.RawAttrs) for e in kept)
    again = decode_logs(parse_request("logs", encode_forwarded(kept), "protobuf"), 99).events
    assert [(e.name, e.time_ns, e.process, dict(e.attrs)) for e in again] == [
        (e.name, e.time_ns, e.process, dict(e.attrs)) for e in decoded
    ]


def test_the_direct_encoder_writes_what_the_standard_classes_read() -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    attrs = {
        "s": "ünïcode",
        "t": True,
        "f": False,
        "i": -(1 << 63),
        "j": (1 << 63) - 1,
        "big": 1 << 70,
        "d": -0.5,
        "b": b"\x00\xff",
        "l": [1, "x", [2.5, {"k": None, "v": [True]}]],
        "m": {"a": {"b": {}}, "e": []},
        "none": None,
    }
    body = encode_forwarded([Event(ev.EVENT_HOLD_START, 7, _proc(1), attrs)])
    got = json_format.MessageToDict(ExportLogsServiceRequest.FromString(body))
    record = got["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert record["eventName"] == ev.EVENT_HOLD_START
    assert record["timeUnixNano"] == "7"
    decoded = decode_logs(parse_request("logs", body, "protobuf"), 99).events[0].attrs
    expected = {k: v for k, v in attrs.items() if v is not None}
    expected["big"] = str(1 << 70)
    expected["l"] = [1, "x", [2.5, {"v": [True]}]]
    assert {k: v for k, v in decoded.items() if k != ev.ATTR_EVENT_NAME} == expected
