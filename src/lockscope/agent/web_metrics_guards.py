"""The agent's own metrics about hostile or broken input it defended against: strings cut,
connections closed, processes evicted at the process limit, future timestamps (see
docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lockscope.agent.otlp_stats import ReceiverStats
from lockscope.agent.store_records import StoreCounters

__all__ = ["hostile_input_metrics"]


def _by_label(
    family: CounterMetricFamily, values: dict[str, int], always: tuple[str, ...] = ()
) -> CounterMetricFamily:
    for label in sorted({*values, *always}):
        family.add_metric([label], values.get(label, 0))
    return family


def hostile_input_metrics(stats: ReceiverStats, counters: StoreCounters) -> Iterator[Metric]:
    """The families (docs/exports.md)."""
    yield _by_label(
        CounterMetricFamily(
            "lockscope_agent_strings_truncated",
            "Strings in events cut to limits.max_string_length, by field (lock_name, "
            "owner, code, actor, service, host, instance, other...).",
            labels=["field"],
        ),
        dict(stats.truncated),
    )
    yield _by_label(
        CounterMetricFamily(
            "lockscope_agent_connections_closed",
            "Client connections the agent closed itself, by reason (header_timeout: "
            "no complete request in time; limit: over the connection limit).",
            labels=["reason"],
        ),
        dict(stats.connections_closed),
        always=("header_timeout", "limit"),
    )
    yield GaugeMetricFamily(
        "lockscope_agent_connections",
        "Client connections open now on both listeners.",
        value=stats.connections_open,
    )
    yield CounterMetricFamily(
        "lockscope_agent_processes_evicted",
        "Processes with no waits and no holds forgotten to admit a new one at "
        "limits.max_processes (a flood of fake processes, or a limit below the fleet).",
        value=counters.processes_evicted,
    )
    yield CounterMetricFamily(
        "lockscope_agent_future_timestamps",
        "Events without a sequence number dated more than max_clock_ahead after "
        "they arrived (counted as dated that far ahead).",
        value=counters.future_timestamps,
    )
