"""``GET /metrics``: the agent's Prometheus exposition (the metric names are
public contract: docs/exports.md).

Nothing is counted on the hot path for this endpoint: a custom prometheus-client collector
builds every family at scrape time, on the agent's event loop (so it reads the live state
without locking), from three sources:

- the **agent state** (:class:`~lockscope.agent.state.AgentState`): gauges such as
  ``lockscope_lock_waiters`` and ``lockscope_deadlocks_active``, and the detectors' counters;
- the **shim's OTLP metrics** merged per process (:class:`~lockscope.agent.metrics_store.
  MetricsStore`): ``lockscope_lock_acquisitions_total`` and the wait/hold histograms.  The
  store carries a process's totals forward across its counter resets (a lower cumulative
  value, a later start time) and keeps a restarted process's old series (it has a new
  ``service.instance.id``) in the sum, so no ``_total`` ever goes backwards;
- the **OTLP receiver's** counters (:class:`~lockscope.agent.otlp_stats.ReceiverStats`).

Lock labels (docs/design.md, principle 6: bounded everything). ``lock`` is always the
lock-name *template* (``order:{id}``). At most ``max_lock_labels`` distinct values are exposed
(default ``Limits.max_label_values``); the first ones seen keep their own series for the
life of the agent, every later one is folded into ``lock="__other__"`` (values added up), so
a series never changes meaning between scrapes and a counter never drops. How many values
are folded is exposed as ``lockscope_agent_lock_labels{state="folded"}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from lockscope import __version__
from lockscope import events as ev
from lockscope.agent.app_keys import (
    METRICS_STORE_KEY,
    RECEIVER_STATS_KEY,
    STATE_KEY,
)
from lockscope.agent.detect_stale import REASONS
from lockscope.agent.export_alertmanager import AlertExporter, exporter_of
from lockscope.agent.findings import DEADLOCK, KINDS, ORDER_INVERSION
from lockscope.agent.metrics_store import HistogramTotal, MetricsStore
from lockscope.agent.otlp_stats import ReceiverStats
from lockscope.agent.state import AgentState
from lockscope.agent.web_metrics_guards import hostile_input_metrics
from lockscope.agent.web_metrics_labels import OTHER_LOCK, DroppedTotals, LabelCap

__all__ = [
    "METRICS_PATH",
    "OTHER_LOCK",
    "LabelCap",
    "LockscopeCollector",
    "redact_url",
    "setup_metrics_route",
]

METRICS_PATH: Final = "/metrics"

_SIGNALS: Final = ("logs", "traces", "metrics")
_STALE_REASONS: Final = REASONS


def _labels(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    return dict(pairs)


class LockscopeCollector(Collector):
    """Builds every lockscope metric family from the live agent at scrape time.

    Call :meth:`collect` on the thread that owns the state (the agent's event loop).
    """

    def __init__(
        self,
        state: AgentState,
        stats: ReceiverStats,
        store: MetricsStore,
        max_lock_labels: int | None = None,
        alerts: Callable[[], AlertExporter | None] | None = None,
    ) -> None:
        self.state = state
        self.alerts = alerts
        self.stats = stats
        self.store = store
        limit = max_lock_labels or state.config.limits.max_label_values
        self.lock_label = LabelCap(limit)
        self._dropped = DroppedTotals()
        self.extra: list[Callable[[], Iterable[Metric]]] = []
        """More families from other parts of the agent (the database watchers' up gauge)."""

    def collect(self) -> Iterator[Metric]:
        """Yield the families (see docs/exports.md for the list)."""
        yield from self._shim_metrics()
        yield from self._state_metrics()
        yield from self._agent_metrics()
        for families in self.extra:
            yield from families()

    # -- from the shims' OTLP metrics --------------------------------------------------------
    def _shim_metrics(self) -> Iterator[Metric]:
        sums = self.store.sums()
        acquisitions: dict[tuple[str, str, str], float] = {}
        lost_from_shim: dict[str, float] = {}
        for (name, pairs), value in sums.items():
            labels = _labels(pairs)
            lock = self.lock_label(labels.get(ev.ATTR_LOCK_TEMPLATE, "unknown"))
            if name == ev.METRIC_ACQUISITIONS:
                key = (
                    lock,
                    labels.get(ev.ATTR_LOCK_SYSTEM, "unknown"),
                    labels.get(ev.ATTR_OUTCOME, "unknown"),
                )
                acquisitions[key] = acquisitions.get(key, 0.0) + value
            elif name == ev.METRIC_LOCKS_LOST:
                lost_from_shim[lock] = lost_from_shim.get(lock, 0.0) + value
        family_c = CounterMetricFamily(
            "lockscope_lock_acquisitions",
            "Lock acquire attempts reported by instrumented processes, by lock-name template, "
            "lock system and result (acquired, timeout, busy, cancelled, error).",
            labels=["lock", "system", "result"],
        )
        for (lock, system, result), value in sorted(acquisitions.items()):
            family_c.add_metric([lock, system, result], value)
        yield family_c

        histograms: dict[str, dict[tuple[str, str], HistogramTotal]] = {
            ev.METRIC_WAIT_DURATION: {},
            ev.METRIC_HOLD_DURATION: {},
        }
        for (name, pairs), total in self.store.histograms().items():
            target = histograms.get(name)
            if target is None:
                continue
            labels = _labels(pairs)
            series = (
                self.lock_label(labels.get(ev.ATTR_LOCK_TEMPLATE, "unknown")),
                labels.get(ev.ATTR_LOCK_SYSTEM, "unknown"),
            )
            if series in target:
                target[series].add(total)
            else:
                target[series] = total.copy()
        yield _histogram(
            "lockscope_lock_wait_seconds",
            "Time lock acquire calls spent waiting, in seconds, by lock-name template and system.",
            histograms[ev.METRIC_WAIT_DURATION],
        )
        yield _histogram(
            "lockscope_lock_hold_seconds",
            "Time locks were held, in seconds, by lock-name template and system.",
            histograms[ev.METRIC_HOLD_DURATION],
        )

        # Lost locks reach the agent twice: the shim's counter (every loss) and the
        # lock.lost event (reported holds only).  The larger of the two never double counts
        # and is still monotonic, since both are.
        lost: dict[str, float] = dict(lost_from_shim)
        for template, n in self.state.stale.counters.locks_lost.items():
            lock = self.lock_label(template)
            lost[lock] = max(lost.get(lock, 0.0), float(n))
        yield _series(
            CounterMetricFamily(
                "lockscope_locks_lost",
                "Holds whose holder found the lock lost (lease expired, taken over, session lost).",
                labels=["lock"],
            ),
            lost,
        )

    def _per_lock(self, by_template: Mapping[str, int]) -> dict[str, int]:
        """Counts per lock-name template summed per lock label (the cap folds templates)."""
        per_lock: dict[str, int] = {}
        for template, n in by_template.items():
            lock = self.lock_label(template)
            per_lock[lock] = per_lock.get(lock, 0) + n
        return per_lock

    # -- from the agent state ----------------------------------------------------------------
    def _state_metrics(self) -> Iterator[Metric]:
        state = self.state
        yield _series(
            GaugeMetricFamily(
                "lockscope_lock_waiters",
                "Actors waiting for a lock right now (waits longer than report_after), "
                "by lock-name template.",
                labels=["lock"],
            ),
            self._per_lock(state.waiters_by_lock()),
        )

        counters = state.deadlocks.counters
        yield CounterMetricFamily(
            "lockscope_deadlocks_detected",
            "Deadlocks detected (cycles in the wait-for graph no participant can leave).",
            value=counters.detected_total,
        )
        active = state.active_counts()
        yield GaugeMetricFamily(
            "lockscope_deadlocks_active",
            "Deadlocks active right now.",
            value=active.get(DEADLOCK, 0),
        )
        yield CounterMetricFamily(
            "lockscope_deadlock_candidates_rejected",
            "Wait-for cycles that graph reduction showed could still make progress "
            "(false-positive candidates, not reported as deadlocks).",
            value=counters.candidates_rejected_total,
        )
        yield _series(
            CounterMetricFamily(
                "lockscope_deadlocks_resolved",
                "Deadlocks that ended, by why (wait_ended, process_dead, released...).",
                labels=["reason"],
            ),
            counters.resolved_total,
        )
        yield _series(
            GaugeMetricFamily(
                "lockscope_stale_holders",
                "Active stale-holder findings by reason: max_hold (held too long), orphaned "
                "(holder stopped heartbeating), lease_expired (holder outlived its lease).",
                labels=["reason"],
            ),
            state.stale_holders_by_reason(),
            always=_STALE_REASONS,
        )
        yield _series(
            CounterMetricFamily(
                "lockscope_mutual_exclusion_violations",
                "Mutual-exclusion violations: two holders of one exclusive lock at once, or a "
                "fencing token that went backwards, by lock-name template.",
                labels=["lock"],
            ),
            self._per_lock(state.violations.counters.violations),
        )

        yield GaugeMetricFamily(
            "lockscope_lock_order_inversions",
            "Active lock-order inversions: cycles in the merged lock-order graph "
            "(potential deadlocks, as Linux lockdep reports them).",
            value=active.get(ORDER_INVERSION, 0),
        )
        family_g = GaugeMetricFamily(
            "lockscope_findings_active",
            "Active findings by kind (deadlock, stale_holder, violation, order_inversion).",
            labels=["kind"],
        )
        for kind in KINDS:
            family_g.add_metric([kind], active.get(kind, 0))
        yield family_g

        yield GaugeMetricFamily(
            "lockscope_agent_reporting_processes",
            "Instrumented processes reporting to this agent (heartbeating) right now.",
            value=state.reporting_processes(),
        )
        yield GaugeMetricFamily(
            "lockscope_agent_locks", "Locks tracked (with a reported hold or wait).",
            value=state.lock_count,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lockscope_agent_holds", "Reported holds tracked.", value=state.hold_count
        )
        yield GaugeMetricFamily(
            "lockscope_agent_waits", "Reported waits tracked.", value=state.wait_count
        )
        dropped_now = {p.info.instance: int(p.dropped or 0) for p in state.processes()}
        yield CounterMetricFamily(
            "lockscope_shim_events_dropped",
            "Events instrumented processes dropped before sending (queue full, agent slow "
            "or unreachable), as reported in their heartbeats.",
            value=self._dropped.update(dropped_now),
        )

    # -- the agent itself --------------------------------------------------------------------
    def _agent_metrics(self) -> Iterator[Metric]:
        stats = self.stats
        yield _series(
            CounterMetricFamily(
                "lockscope_agent_events_received",
                "OTLP records received, by signal (logs, traces, metrics): log records, spans "
                "and metric data points, including ignored and rejected ones.",
                labels=["signal"],
            ),
            stats.received,
            always=_SIGNALS,
        )
        yield _series(
            CounterMetricFamily(
                "lockscope_agent_events_rejected",
                "OTLP requests or records the agent rejected, by reason (decode_error, "
                "too_large, invalid, limit...).",
                labels=["reason"],
            ),
            stats.rejected,
        )
        yield from hostile_input_metrics(stats, self.state.counters)
        yield _series(
            CounterMetricFamily(
                "lockscope_agent_records_ignored",
                "OTLP records that were not for lockscope (other logs, spans, metrics), by signal.",
                labels=["signal"],
            ),
            stats.ignored,
            always=_SIGNALS,
        )
        yield _series(
            CounterMetricFamily(
                "lockscope_agent_limits_hit",
                "Times a documented agent limit refused something new, by limit name.",
                labels=["limit"],
            ),
            self.state.counters.limits_hit,
        )
        yield CounterMetricFamily(
            "lockscope_agent_metric_points_dropped",
            "Shim metric points dropped because the metric series limit was reached.",
            value=self.store.dropped_points,
        )
        family_g = GaugeMetricFamily(
            "lockscope_agent_lock_labels",
            "Distinct lock-name templates used as the lock label: kept (own series) and "
            'folded into lock="__other__" because of the cap.',
            labels=["state"],
        )
        family_g.add_metric(["kept"], self.lock_label.kept)
        family_g.add_metric(["folded"], self.lock_label.folded)
        yield family_g
        yield GaugeMetricFamily(
            "lockscope_agent_lock_labels_limit",
            "The cap on distinct lock label values.",
            value=self.lock_label.limit,
        )
        family_g = GaugeMetricFamily(
            "lockscope_build_info",
            "lockscope version of this agent (always 1).",
            labels=["version"],
        )
        family_g.add_metric([__version__], 1)
        yield family_g
        yield from self._alert_metrics()

    def _alert_metrics(self) -> Iterator[Metric]:
        exporter = self.alerts() if self.alerts is not None else None
        if exporter is None:
            return
        sent = CounterMetricFamily(
            "lockscope_agent_alerts_sent",
            "Alerts Alertmanager accepted from this agent (re-sends included), per Alertmanager.",
            labels=["alertmanager"],
        )
        errors = CounterMetricFamily(
            "lockscope_agent_alert_errors",
            "Failed pushes to Alertmanager (unreachable, timeout, 5xx); retried with backoff.",
            labels=["alertmanager"],
        )
        rejected = CounterMetricFamily(
            "lockscope_agent_alerts_rejected",
            "Alerts Alertmanager refused as invalid (4xx); not retried.",
            labels=["alertmanager"],
        )
        pending = GaugeMetricFamily(
            "lockscope_agent_alerts_pending",
            "Alert changes not yet delivered, per Alertmanager.",
            labels=["alertmanager"],
        )
        waiting = exporter.pending()
        for target in exporter.targets:
            url = [redact_url(target.url)]
            sent.add_metric(url, target.sent)
            errors.add_metric(url, target.errors)
            rejected.add_metric(url, target.rejected)
            pending.add_metric(url, waiting.get(target.url, 0))
        yield from (sent, errors, rejected, pending)
        yield CounterMetricFamily(
            "lockscope_agent_alerts_dropped",
            "Resolved alerts dropped undelivered because the alert memory cap was reached.",
            value=exporter.dropped,
        )


def redact_url(url: str) -> str:
    """The URL without user info, so a password in --alertmanager-url never becomes a label."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _go_float(value: float) -> str:
    # Prometheus's own formatting of le bounds (prometheus_client.utils.floatToGoString).
    return repr(float(value)) if not value.is_integer() else f"{value:.1f}"


def _series(
    family: CounterMetricFamily | GaugeMetricFamily,
    values: Mapping[str, float],
    always: Iterable[str] = (),
) -> Metric:
    """``family`` (one label) with a series per key of ``values``, sorted; keys in
    ``always`` are there even when ``values`` lacks them (at 0)."""
    for key in sorted(set(always) | set(values)):
        family.add_metric([key], values.get(key, 0))
    return family


def _histogram(
    name: str, documentation: str, series: Mapping[tuple[str, str], HistogramTotal]
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["lock", "system"])
    for (lock, system), total in sorted(series.items()):
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(total.bounds, total.bucket_counts, strict=False):
            running += n
            if math.isinf(bound):
                continue
            buckets.append((_go_float(bound), running))
        buckets.append(("+Inf", total.count))
        family.add_metric([lock, system], buckets, total.sum)
    return family


@dataclass(slots=True)
class _Exporter:
    collector: LockscopeCollector | None = None
    handler: Handler | None = None


_EXPORTER_KEY = web.AppKey("lockscope.metrics_exporter", _Exporter)


def setup_metrics_route(app: web.Application, max_lock_labels: int | None = None) -> None:
    """Serve ``GET /metrics`` on ``app`` (the agent's HTTP app, which must carry the keys of
    :mod:`lockscope.agent.app_keys` by the time it starts)."""
    exporter = _Exporter()
    app[_EXPORTER_KEY] = exporter

    async def start(app: web.Application) -> None:
        registry = CollectorRegistry(auto_describe=False)
        collector = LockscopeCollector(
            app[STATE_KEY],
            app[RECEIVER_STATS_KEY],
            app[METRICS_STORE_KEY],
            max_lock_labels,
            alerts=lambda: exporter_of(app),
        )
        registry.register(collector)
        exporter.collector = collector
        exporter.handler = make_aiohttp_handler(registry)

    async def handler(request: web.Request) -> web.StreamResponse:
        if exporter.handler is None:
            raise web.HTTPServiceUnavailable(text="metrics not ready\n")
        return await exporter.handler(request)

    app.on_startup.append(start)
    app.router.add_get(METRICS_PATH, handler)


def collector_of(app: web.Application) -> LockscopeCollector | None:
    """The collector serving ``app``'s ``/metrics`` (None before start-up)."""
    return app[_EXPORTER_KEY].collector
