"""The agent's metrics store (lockscope.agent.metrics_store) as the agent uses it: a
forgotten process's series go, its totals stay."""

from __future__ import annotations

import time

from lockscope import events as ev


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
        metric.sum.aggregation_temporality = 2  # cumulative
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
