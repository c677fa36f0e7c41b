"""``/metrics`` families of a shard agent's forwarding (:mod:`.shard_forward`).

Built at scrape time from the counters ``GET /api/v1/forwarding`` shows, so the links to
the detector agents can be alerted on like the rest of the agent: one series per detector
(label ``detector``: its OTLP URL without user info), plus the shard's own totals.  Only a
shard agent (``--forward-to``) exposes them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lockscope.agent.shard_forward import ShardForwarding
from lockscope.agent.web_metrics import redact_url

__all__ = ["forwarding_metrics"]


def forwarding_metrics(forwarding: ShardForwarding) -> Iterator[Metric]:
    """The ``lockscope_agent_forward*`` families (see docs/exports.md)."""
    label = ["detector"]
    forwarded = CounterMetricFamily(
        "lockscope_agent_forwarded_events",
        "Events a detector agent accepted from this shard, per detector.",
        labels=label,
    )
    dropped = CounterMetricFamily(
        "lockscope_agent_forward_dropped_events",
        "Events not delivered to a detector (queue full, or every attempt failed).",
        labels=label,
    )
    requests = CounterMetricFamily(
        "lockscope_agent_forward_requests",
        "Requests posted to a detector, retries included.",
        labels=label,
    )
    failures = CounterMetricFamily(
        "lockscope_agent_forward_failures",
        "Posts to a detector that failed (unreachable, timeout, non-2xx); retried with backoff.",
        labels=label,
    )
    queued = GaugeMetricFamily(
        "lockscope_agent_forward_queued_events",
        "Events waiting to be sent to a detector.",
        labels=label,
    )
    for forwarder in forwarding.forwarders:
        c = forwarder.counters
        url = [redact_url(c.url)]
        forwarded.add_metric(url, c.forwarded)
        dropped.add_metric(url, c.dropped)
        requests.add_metric(url, c.requests)
        failures.add_metric(url, c.failed_posts)
        queued.add_metric(url, forwarder.queued)
    yield from (forwarded, dropped, requests, failures, queued)
    yield CounterMetricFamily(
        "lockscope_agent_forward_selected_events",
        "Applied events this shard chose to forward (each goes to every detector).",
        value=forwarding.selected,
    )
    yield CounterMetricFamily(
        "lockscope_agent_forward_resyncs",
        "Times a detector link recovered and was sent the remembered state again.",
        value=forwarding.resyncs,
    )
