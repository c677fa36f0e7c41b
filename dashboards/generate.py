#!/usr/bin/env python3
"""Generate lockscope's Grafana dashboards with grafana-foundation-sdk.

    python dashboards/generate.py           # (re)write dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if a committed JSON file is stale

The JSON files are committed next to this script and are what Grafana provisions
(dashboards/provisioning/lockscope.yaml); tests/test_dashboards.py checks that they equal
this script's output and evaluates every Prometheus query against a live agent.

Conventions: stable ``uid``, ``id`` null (Grafana assigns it), a ``datasource`` variable
(type prometheus) used by every Prometheus query, a ``job`` variable (the scrape job of
the agents), rate windows ``$__rate_interval``.  The wait-for graph panel reads the agent's
``/api/v1/graph?format=nodegraph`` through the Infinity data source
(yesoreyeram-infinity-datasource), chosen by the ``infinity`` variable, at the URL in the
``agent_url`` variable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    nodegraph,
    piechart,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    TextBoxVariable,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
INFINITY_TYPE = "yesoreyeram-infinity-datasource"
INFINITY = DataSourceRef(type_val=INFINITY_TYPE, uid="${infinity}")
JOB = 'job=~"$job"'
TAGS = ["lockscope", "locks"]
RUNBOOK = "https://github.com/lockscope/lockscope/blob/main/docs/runbook.md"


# -- the Infinity query (no builder in the SDK: a small Dataquery of our own) ---------------
class _InfinityDataquery(cogvariants.Dataquery):
    def __init__(self, ref_id: str, frame: str) -> None:
        self.ref_id = ref_id
        self.frame = frame

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": INFINITY.to_json(),
            "type": "json",
            "source": "url",
            "parser": "backend",
            "format": f"node-graph-{self.frame}",
            "url": "${agent_url}/api/v1/graph?format=nodegraph",
            "url_options": {"method": "GET", "data": ""},
            "root_selector": self.frame,
        }


class InfinityNodeGraphQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """One frame (``nodes`` or ``edges``) of the agent's Node Graph endpoint."""

    def __init__(self, frame: str) -> None:
        self._query = _InfinityDataquery(frame, frame)

    def build(self) -> cogvariants.Dataquery:
        return self._query


# -- helpers ---------------------------------------------------------------------------------
def prom(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> PromQuery:
    query = PromQuery().expr(expr).ref_id(ref).datasource(PROMETHEUS)
    if legend:
        query = query.legend_format(legend)
    return query.instant() if instant else query.range()


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def datasource_variables(d: Dashboard, lock: bool = False) -> Dashboard:
    d = d.with_variable(
        DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    ).with_variable(
        QueryVariable("job")
        .label("Job")
        .datasource(PROMETHEUS)
        .query("label_values(lockscope_build_info, job)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    if lock:
        d = d.with_variable(
            QueryVariable("lock")
            .label("Lock")
            .description("Lock-name template (the lock label)")
            .datasource(PROMETHEUS)
            .query(f"label_values(lockscope_lock_acquisitions_total{{{JOB}}}, lock)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
    return d


def lockscope_dashboard(title: str, uid: str, description: str) -> Dashboard:
    """A dashboard with the settings both lockscope dashboards share."""
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
    )


def sibling_link(title: str) -> DashboardLink:
    """A link to the other lockscope dashboard(s), carrying variables and time range."""
    return (
        DashboardLink(title)
        .type("dashboards")
        .tags(["lockscope"])
        .include_vars(True)
        .keep_time(True)
    )


Panel = (
    stat.Panel | timeseries.Panel | piechart.Panel | bargauge.Panel | table.Panel | nodegraph.Panel
)


class _Board:
    """Adds rows and panels to a dashboard, numbering them in order (rows count too)."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self._last_id = 0

    def _next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def row(self, title: str) -> None:
        self.dashboard.with_row(Row(title).id(self._next_id()))

    def add(self, panel: Panel, datasource: DataSourceRef = PROMETHEUS) -> None:
        self.dashboard.with_panel(panel.id(self._next_id()).datasource(datasource))


def quantiles(metric: str, selector: str) -> list[PromQuery]:
    return [
        prom(
            f"histogram_quantile({q}, sum by (le) "
            f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


# -- panels both dashboards show, for a series selector ---------------------------------------
def times_in_range(title: str, metric: str, selector: str, color: str, span: int) -> stat.Panel:
    """How often counter ``metric`` went up in the time range; 0, not "no data", if never."""
    return (
        stat.Panel().title(title).span(span).height(5)
        .with_target(
            prom(f"sum(increase({metric}{{{selector}}}[$__range])) or vector(0)", instant=True)
        )
        .thresholds(thresholds((None, "green"), (1, color)))
        .decimals(0)
    )  # fmt: skip


def acquisition_rate(selector: str) -> timeseries.Panel:
    return (
        timeseries.Panel().title("Acquisition rate by result").span(12).height(8)
        .unit("ops")
        .with_target(
            prom(f"sum by (result) (rate(lockscope_lock_acquisitions_total{{{selector}}}"
                 "[$__rate_interval]))", "{{result}}")
        )
    )  # fmt: skip


def time_quantiles(what: str, selector: str) -> timeseries.Panel:
    """p50/p90/p99 of ``lockscope_lock_<what>_seconds`` (what: wait or hold)."""
    return (
        timeseries.Panel().title(f"{what.capitalize()} time quantiles").span(12).height(8)
        .unit("s")
        .targets(quantiles(f"lockscope_lock_{what}_seconds", selector))
    )  # fmt: skip


# -- the overview ------------------------------------------------------------------------------
def overview() -> Dashboard:
    """Fleet-wide: acquisitions, waits and holds, contention, findings, agent health."""
    d = (
        lockscope_dashboard(
            "lockscope: locks overview",
            "lockscope-overview",
            "Lock acquisitions, waits, holds and the agent's findings, fleet-wide.",
        )
        .link(sibling_link("Per lock").as_dropdown(False))
        .link(DashboardLink("Runbook").type("link").url(RUNBOOK).target_blank(True))
    )
    d = (
        datasource_variables(d)
        .with_variable(
            TextBoxVariable("agent_url")
            .label("Agent URL (for the wait-for graph)")
            .default_value("http://127.0.0.1:9477")
        )
        .with_variable(DatasourceVariable("infinity").label("Infinity").type(INFINITY_TYPE))
    )
    board = _Board(d)

    board.row("Findings")
    board.add(
        stat.Panel().title("Active deadlocks").span(4).height(5)
        .description("Deadlocks active right now (lockscope_deadlocks_active).")
        .with_target(prom(f"sum(lockscope_deadlocks_active{{{JOB}}})", instant=True))
        .thresholds(thresholds((None, "green"), (1, "red")))
    )  # fmt: skip
    board.add(
        stat.Panel().title("Deadlocks detected").span(4).height(5)
        .description("Deadlocks detected in the time range.")
        .with_target(
            prom(f"sum(increase(lockscope_deadlocks_detected_total{{{JOB}}}[$__range]))",
                 instant=True)
        )
        .thresholds(thresholds((None, "green"), (1, "orange")))
        .decimals(0)
    )  # fmt: skip
    board.add(
        stat.Panel().title("Stale holders").span(4).height(5)
        .description("Active stale-holder findings by reason.")
        .with_target(
            prom(f"sum by (reason) (lockscope_stale_holders{{{JOB}}})", "{{reason}}",
                 instant=True)
        )
        .thresholds(thresholds((None, "green"), (1, "orange")))
    )  # fmt: skip
    board.add(
        times_in_range("Mutual-exclusion violations",
                       "lockscope_mutual_exclusion_violations_total", JOB, "red", span=4)
        .description("Violations in the time range: overlapping holds or fencing tokens "
                     "going backwards.")
    )  # fmt: skip
    board.add(
        stat.Panel().title("Lock-order inversions").span(4).height(5)
        .description("Active lock-order inversions (potential deadlocks).")
        .with_target(prom(f"sum(lockscope_lock_order_inversions{{{JOB}}})", instant=True))
        .thresholds(thresholds((None, "green"), (1, "orange")))
    )  # fmt: skip
    board.add(
        times_in_range("Locks lost", "lockscope_locks_lost_total", JOB, "orange", span=4)
        .description("Holds found lost in the time range (lease expired, taken over).")
    )  # fmt: skip
    board.add(
        nodegraph.Panel().title("Wait-for graph (live)").span(24).height(12)
        .description("The agent's live wait-for graph: actors and locks, red on a deadlock "
                     "cycle, orange for stale holders. Needs the Infinity data source plugin "
                     "(yesoreyeram-infinity-datasource) allowed to reach $agent_url.")
        .with_target(InfinityNodeGraphQuery("nodes"))
        .with_target(InfinityNodeGraphQuery("edges")),
        INFINITY,
    )  # fmt: skip

    board.row("Acquisitions")
    board.add(acquisition_rate(JOB))
    board.add(
        piechart.Panel().title("Acquisition outcomes").span(6).height(8)
        .with_target(
            prom(f"sum by (result) (increase(lockscope_lock_acquisitions_total{{{JOB}}}"
                 "[$__range]))", "{{result}}", instant=True)
        )
    )  # fmt: skip
    board.add(
        timeseries.Panel().title("Acquire errors by system").span(6).height(8)
        .unit("ops")
        .with_target(
            prom("sum by (system) (rate(lockscope_lock_acquisitions_total"
                 f'{{{JOB},result="error"}}[$__rate_interval]))', "{{system}}")
        )
    )  # fmt: skip
    board.add(time_quantiles("wait", JOB))
    board.add(time_quantiles("hold", JOB))

    board.row("Contention")
    board.add(
        bargauge.Panel().title("Top contended locks (wait seconds per second)")
        .span(12).height(9).unit("s")
        .description("Time spent waiting for each lock per second of wall time: the locks "
                     "work queues on.")
        .with_target(
            prom("topk(10, sum by (lock) (rate(lockscope_lock_wait_seconds_sum"
                 f"{{{JOB}}}[$__rate_interval])))", "{{lock}}", instant=True)
        )
    )  # fmt: skip
    board.add(
        timeseries.Panel().title("Waiters by lock").span(12).height(9)
        .description("Actors waiting longer than report_after, per lock.")
        .with_target(prom(f"sum by (lock) (lockscope_lock_waiters{{{JOB}}})", "{{lock}}"))
    )  # fmt: skip
    board.add(
        table.Panel().title("Locks by p99 wait").span(24).height(8)
        .with_target(
            prom("histogram_quantile(0.99, sum by (lock, system, le) "
                 f"(rate(lockscope_lock_wait_seconds_bucket{{{JOB}}}[$__rate_interval])))",
                 instant=True)
        )
        .unit("s")
    )  # fmt: skip

    board.row("Agent")
    board.add(
        stat.Panel().title("Agents up").span(4).height(5)
        .with_target(prom(f"sum(up{{{JOB}}})", instant=True))
        .thresholds(thresholds((None, "red"), (1, "green")))
    )  # fmt: skip
    board.add(
        stat.Panel().title("Reporting processes").span(4).height(5)
        .with_target(prom(f"sum(lockscope_agent_reporting_processes{{{JOB}}})", instant=True))
    )  # fmt: skip
    board.add(
        timeseries.Panel().title("Records received by signal").span(8).height(5)
        .unit("ops")
        .with_target(
            prom(f"sum by (signal) (rate(lockscope_agent_events_received_total{{{JOB}}}"
                 "[$__rate_interval]))", "{{signal}}")
        )
    )  # fmt: skip
    board.add(
        timeseries.Panel().title("Events dropped and rejected").span(8).height(5)
        .unit("ops")
        .with_target(
            prom(f"sum(rate(lockscope_shim_events_dropped_total{{{JOB}}}[$__rate_interval]))",
                 "dropped by shims", "A")
        )
        .with_target(
            prom(f"sum by (reason) (rate(lockscope_agent_events_rejected_total{{{JOB}}}"
                 "[$__rate_interval]))", "rejected: {{reason}}", "B")
        )
    )  # fmt: skip
    board.add(
        timeseries.Panel().title("Tracked by the agent").span(8).height(5)
        .with_target(prom(f"sum(lockscope_agent_locks{{{JOB}}})", "locks", "A"))
        .with_target(prom(f"sum(lockscope_agent_holds{{{JOB}}})", "holds", "B"))
        .with_target(prom(f"sum(lockscope_agent_waits{{{JOB}}})", "waits", "C"))
    )  # fmt: skip
    board.add(
        timeseries.Panel().title("Lock label values").span(8).height(5)
        .description("Distinct lock templates with their own series, and folded into "
                     'lock="__other__" by the cap.')
        .with_target(prom(f"sum by (state) (lockscope_agent_lock_labels{{{JOB}}})",
                          "{{state}}"))
    )  # fmt: skip
    return board.dashboard


# -- one lock ----------------------------------------------------------------------------------
def per_lock() -> Dashboard:
    """Drill-down for one lock template: rate, outcomes, waits, holds, waiters, findings."""
    sel = f'{JOB},lock="$lock"'
    d = lockscope_dashboard(
        "lockscope: lock $lock",
        "lockscope-lock",
        "One lock template: acquisitions, waits, holds, waiters and findings.",
    ).link(sibling_link("Overview"))
    board = _Board(datasource_variables(d, lock=True))
    board.add(
        stat.Panel().title("Acquisitions").span(6).height(5).unit("ops")
        .with_target(
            prom(f"sum(rate(lockscope_lock_acquisitions_total{{{sel}}}[$__rate_interval]))",
                 instant=True)
        )
    )  # fmt: skip
    board.add(
        stat.Panel().title("Waiters now").span(6).height(5)
        .with_target(prom(f"sum(lockscope_lock_waiters{{{sel}}}) or vector(0)", instant=True))
        .thresholds(thresholds((None, "green"), (5, "orange"), (20, "red")))
    )  # fmt: skip
    board.add(
        times_in_range("Violations", "lockscope_mutual_exclusion_violations_total", sel, "red",
                       span=6)
    )  # fmt: skip
    board.add(times_in_range("Lost", "lockscope_locks_lost_total", sel, "orange", span=6))
    board.add(acquisition_rate(sel))
    board.add(
        timeseries.Panel().title("Waiters").span(12).height(8)
        .with_target(prom(f"sum(lockscope_lock_waiters{{{sel}}}) or vector(0)", "waiters"))
    )  # fmt: skip
    board.add(time_quantiles("wait", sel))
    board.add(time_quantiles("hold", sel))
    board.add(
        timeseries.Panel().title("Mean wait and hold").span(24).height(7).unit("s")
        .with_target(
            prom(f"sum(rate(lockscope_lock_wait_seconds_sum{{{sel}}}[$__rate_interval])) / "
                 f"sum(rate(lockscope_lock_wait_seconds_count{{{sel}}}[$__rate_interval]))",
                 "mean wait", "A")
        )
        .with_target(
            prom(f"sum(rate(lockscope_lock_hold_seconds_sum{{{sel}}}[$__rate_interval])) / "
                 f"sum(rate(lockscope_lock_hold_seconds_count{{{sel}}}[$__rate_interval]))",
                 "mean hold", "B")
        )
    )  # fmt: skip
    return board.dashboard


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "lockscope-overview.json": overview,
    "lockscope-lock.json": per_lock,
}


def render(builder: Dashboard) -> str:
    """The dashboard as provisioning-ready JSON text (``id`` null, keys sorted)."""
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    data["id"] = None
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(factory()) for name, factory in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a JSON file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)} (run python dashboards/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
