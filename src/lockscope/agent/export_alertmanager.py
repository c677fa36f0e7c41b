"""Findings as Alertmanager alerts (API v2, ``POST /api/v2/alerts``).

The four finding kinds become ``LockDeadlock``, ``LockStaleHolder``,
``LockMutualExclusionViolation`` and ``LockOrderInversion`` alerts, pushed as soon as the
state reports them (it calls :meth:`AlertExporter.on_finding` synchronously from the event
that completed the finding), to **every** ``--alertmanager-url`` (as Prometheus does: an
Alertmanager cluster deduplicates, a load balancer in front of it would not).

Labels identify the finding, never the agent (``alertname``, ``kind``, ``id``, ``lock``,
``system``, ``service``, ``reason``, ``severity``): a finding's id is derived from what it is
about, so two agents fed the same events in an HA pair send identical label sets, and
Alertmanager shows one alert.  Annotations: ``summary``, ``description`` (naming the cycle,
holder, tokens...), ``services`` (every service of the finding), ``runbook_url`` (an
anchor in docs/runbook.md, or ``--runbook-url``) and ``finding_url`` (the finding's page in
the agent's web view); ``generatorURL`` is the same page.

Alerts route per service: every alert's ``service`` label holds **one** service.  A finding
that involves several services (a deadlock across two teams, a mutual-exclusion violation
between two services, an inversion of lock order between them) raises one alert per
service, all with the finding's ``id``, each with the ``lock`` label of that service's part:
the locks its participants hold in the cycle (a deadlock), the lock it holds (a violation),
the locks it takes in the inverted order (an inversion).  So a route ``service="payments"``
matches the payments team's alert, and grouping by ``id`` keeps one notification per
receiver.

Delivery, per Alertmanager:

- every change (new, resolved) is sent at once; every active alert is re-sent every
  ``resend_interval`` (30 s) with ``endsAt`` four intervals ahead, so Alertmanager keeps it
  firing while the agent lives and resolves it by itself if the agent dies;
- a resolved finding is sent with ``endsAt`` = the time it resolved, and re-sent for
  ``resolved_retention`` (5 min) so an Alertmanager restarted meanwhile learns it too;
- while an Alertmanager is unreachable or answers 5xx/429, the changes wait and are retried
  with exponential backoff and jitter (0.5 s doubling to 30 s); when it is back it gets the
  current state of every alert, so nothing is lost.  A 4xx other than 429 means the batch
  itself is invalid: it is logged and counted, not retried forever;
- memory is bounded: active alerts are bounded by the finding store, resolved ones are kept
  only until delivered and ``resolved_retention`` has passed, with a hard cap
  (``max_alerts``) that drops the oldest resolved alert first (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from lockscope.agent.app_keys import ALERTMANAGER_URLS_KEY, STATE_KEY
from lockscope.agent.background import cancel_and_wait
from lockscope.agent.export_alert_labels import (
    SEVERITY,
    alert_label_sets,
    alert_labels,
    describe,
    finding_services,
    runbook_link,
    summary,
)
from lockscope.agent.findings import Finding
from lockscope.agent.findings import rfc3339 as _rfc3339

__all__ = [
    "ALERT_EXPORTER_KEY",
    "ALERT_OPTIONS_KEY",
    "DEFAULT_RUNBOOK_URL",
    "SEVERITY",
    "AlertExporter",
    "AlertOptions",
    "alert_label_sets",
    "alert_labels",
    "alert_options",
    "bind_http_url",
    "finding_path",
    "finding_services",
    "runbook_link",
    "setup_alertmanager",
]

log = logging.getLogger("lockscope.agent.alerts")

DEFAULT_RUNBOOK_URL: Final = "https://github.com/lockscope/lockscope/blob/main/docs/runbook.md"
_NS: Final = 1_000_000_000
_MAX_BATCH: Final = 500
"""Alerts per POST: keeps each request well under Alertmanager's default body limit."""


def finding_path(kind: str, finding_id: str) -> str:
    """Path of a finding's page in the agent's web view."""
    return f"/findings/{kind}/{finding_id}"


@dataclass(slots=True)
class AlertOptions:
    """How alerts are built and sent; set with :func:`alert_options`."""

    external_url: str | None = None
    """Base URL people use to reach this agent's web view (``--external-url``); default:
    the URL the HTTP listener is bound to."""
    runbook_url: str = DEFAULT_RUNBOOK_URL
    """The runbook alerts link to (``--runbook-url``): ``{alertname}`` in it is replaced by
    the alert's name in lower case, else ``#alertname`` is appended (docs/runbook.md's
    anchors)."""
    resend_interval: float = 30.0
    """Seconds between re-sends of every active alert (``endsAt`` four intervals ahead)."""
    resolved_retention: float = 300.0
    """Seconds a resolved alert is still re-sent, for an Alertmanager restarted meanwhile."""
    timeout: float = 10.0
    """Seconds one POST to an Alertmanager may take."""
    backoff_initial: float = 0.5
    """First pause after a failed POST; it doubles (with jitter) up to ``backoff_max``."""
    backoff_max: float = 30.0
    """Longest pause between retries of a failing Alertmanager."""
    max_alerts: int = 20_000
    """Alerts kept at most; past it, the oldest resolved one is dropped (counted)."""
    bound_url: str | None = None
    """Filled in by the agent once the HTTP listener is bound (:func:`bind_http_url`)."""

    @property
    def base_url(self) -> str:
        """Where finding links point."""
        return (self.external_url or self.bound_url or "http://127.0.0.1:9477").rstrip("/")


@dataclass(slots=True, eq=False)
class _Alert:
    key: str
    """``finding-id/service`` (one alert per service of a finding), or the finding id
    alone when it names no service."""
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str
    starts_at_ns: int
    resolved_at_ns: int | None = None
    version: int = 0

    def payload(self, now_ns: int, ends_ahead_ns: int) -> dict[str, Any]:
        ends = self.resolved_at_ns if self.resolved_at_ns is not None else now_ns + ends_ahead_ns
        return {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": _rfc3339(self.starts_at_ns),
            "endsAt": _rfc3339(ends),
            "generatorURL": self.generator_url,
        }


@dataclass(slots=True)
class TargetStats:
    """What one Alertmanager got (exposed on ``/metrics``)."""

    url: str
    sent: int = 0
    """Alerts accepted (re-sends included)."""
    errors: int = 0
    """Failed POSTs (connection errors, timeouts, error statuses)."""
    rejected: int = 0
    """Alerts in batches Alertmanager refused as invalid (4xx), not retried."""
    last_success_ns: int = 0


@dataclass(slots=True, eq=False)
class _Target:
    url: str
    stats: TargetStats
    pending: dict[str, int] = field(default_factory=dict)
    """Alert id -> version that still has to reach this Alertmanager."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    next_resend: float = 0.0
    task: asyncio.Task[None] | None = None


class AlertExporter:
    """Keeps the alert for each finding and delivers it to each Alertmanager.

    Create it on the agent's event loop, then :meth:`start`; feed it with
    :meth:`on_finding` (subscribed to the state by :func:`setup_alertmanager`).
    """

    def __init__(self, urls: Sequence[str], options: AlertOptions | None = None) -> None:
        self.options = options or AlertOptions()
        self._alerts: dict[str, _Alert] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        """Finding id -> the keys of its alerts (one per service)."""
        self._targets = [
            _Target(url.rstrip("/"), TargetStats(url.rstrip("/"))) for url in dict.fromkeys(urls)
        ]
        self._session: aiohttp.ClientSession | None = None
        self.dropped = 0
        """Resolved alerts dropped undelivered because of ``max_alerts``."""

    @property
    def targets(self) -> list[TargetStats]:
        """Per-Alertmanager counters."""
        return [t.stats for t in self._targets]

    def pending(self) -> dict[str, int]:
        """Alerts waiting for delivery, per Alertmanager URL."""
        return {t.url: len(t.pending) for t in self._targets}

    def __len__(self) -> int:
        return len(self._alerts)

    # -- input ---------------------------------------------------------------------------
    def on_finding(self, finding: Finding) -> None:
        """A finding was added or resolved: (re)build its alerts (one per service) and queue
        them everywhere."""
        keys = self._keys.get(finding.id, ())
        alerts = [self._alerts[k] for k in keys if k in self._alerts]
        if not alerts or (finding.active and any(a.resolved_at_ns is not None for a in alerts)):
            for k in keys:  # a re-activated finding: its alerts again, versions moving on
                self._alerts.pop(k, None)
            fresh = self._build(finding)
            for alert in fresh:
                old = next((a for a in alerts if a.key == alert.key), None)
                alert.version = old.version + 1 if old is not None else 0
                self._alerts[alert.key] = alert
            self._keys[finding.id] = tuple(a.key for a in fresh)
            alerts = fresh
            self._bound()
        elif not finding.active:
            for alert in alerts:
                alert.resolved_at_ns = finding.resolved_at_ns
                alert.version += 1
        else:
            return
        for target in self._targets:
            for alert in alerts:
                target.pending[alert.key] = alert.version
            target.wake.set()

    def _build(self, finding: Finding) -> list[_Alert]:
        opts = self.options
        link = opts.base_url + finding_path(finding.kind, finding.id)
        everything = alert_labels(finding)
        annotations = {
            "summary": summary(finding, everything),
            "description": describe(finding),
            "services": ", ".join(finding_services(finding)),
            "runbook_url": runbook_link(opts.runbook_url, everything["alertname"]),
            "finding_url": link,
        }
        return [
            _Alert(
                f"{finding.id}/{labels['service']}" if "service" in labels else finding.id,
                labels,
                annotations,
                link,
                finding.detected_at_ns,
            )
            for labels in alert_label_sets(finding)
        ]

    def _bound(self) -> None:
        if len(self._alerts) <= self.options.max_alerts:
            return
        for key, alert in list(self._alerts.items()):
            if alert.resolved_at_ns is not None:
                del self._alerts[key]
                for target in self._targets:
                    target.pending.pop(key, None)
                self._forget_key(key)
                self.dropped += 1
                if len(self._alerts) <= self.options.max_alerts:
                    return

    def _forget_key(self, key: str) -> None:
        finding_id = key.split("/", 1)[0]
        left = tuple(k for k in self._keys.get(finding_id, ()) if k != key)
        if left:
            self._keys[finding_id] = left
        else:
            self._keys.pop(finding_id, None)

    # -- delivery ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the HTTP client and start one sender task per Alertmanager."""
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        for target in self._targets:
            target.task = asyncio.create_task(self._run(target), name=f"alerts {target.url}")

    async def stop(self) -> None:
        """Stop the sender tasks and close the client (pending alerts are not flushed:
        Alertmanager resolves them by ``endsAt`` unless another agent keeps them alive)."""
        for target in self._targets:
            if target.task is not None:
                target.task.cancel()
        for target in self._targets:
            if target.task is not None:
                await cancel_and_wait(target.task)
                target.task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        target.next_resend = loop.time()
        while True:
            now = loop.time()
            delay = target.next_resend - now
            if backoff:
                delay = backoff
            elif target.pending:
                delay = 0.0
            if delay > 0:
                target.wake.clear()
                with contextlib.suppress(TimeoutError):
                    if backoff:
                        await asyncio.sleep(delay)
                    else:
                        await asyncio.wait_for(target.wake.wait(), delay)
            full = loop.time() >= target.next_resend
            try:
                ok = await self._send(target, full)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert delivery to %s failed unexpectedly", target.url)
                ok = False
            if ok:
                backoff = 0.0
                if full:
                    target.next_resend = loop.time() + self.options.resend_interval
                self._collect_garbage()
            else:
                target.stats.errors += 1
                base = backoff * 2 if backoff else self.options.backoff_initial
                backoff = min(self.options.backoff_max, base) * random.uniform(0.8, 1.2)

    async def _send(self, target: _Target, full: bool) -> bool:
        now_ns = time.time_ns()
        retention = int(self.options.resolved_retention * _NS)
        if full:
            ids = [
                fid
                for fid, a in self._alerts.items()
                if a.resolved_at_ns is None
                or fid in target.pending
                or now_ns - a.resolved_at_ns < retention
            ]
        else:
            ids = [fid for fid in target.pending if fid in self._alerts]
        if not ids:
            target.pending.clear()
            return True
        versions = {fid: self._alerts[fid].version for fid in ids}
        ahead = int(4 * self.options.resend_interval * _NS)
        for start in range(0, len(ids), _MAX_BATCH):
            chunk = ids[start : start + _MAX_BATCH]
            body = [
                self._alerts[fid].payload(now_ns, ahead) for fid in chunk if fid in self._alerts
            ]
            status = await self._post(target, body)
            if status is None or status == 429 or status >= 500:
                return False
            if status >= 400:
                target.stats.rejected += len(body)
                log.error(
                    "Alertmanager %s refused %d alert(s): HTTP %d", target.url, len(body), status
                )
            else:
                target.stats.sent += len(body)
                target.stats.last_success_ns = now_ns
            for fid in chunk:
                if target.pending.get(fid) == versions[fid]:
                    del target.pending[fid]
        return True

    async def _post(self, target: _Target, body: list[dict[str, Any]]) -> int | None:
        assert self._session is not None
        try:
            async with self._session.post(target.url + "/api/v2/alerts", json=body) as response:
                await response.read()
                if response.status >= 300:
                    log.warning("Alertmanager %s answered HTTP %d", target.url, response.status)
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("Alertmanager %s unreachable: %s", target.url, exc or type(exc).__name__)
            return None

    def _collect_garbage(self) -> None:
        now_ns = time.time_ns()
        retention = int(self.options.resolved_retention * _NS)
        for fid, alert in list(self._alerts.items()):
            if (
                alert.resolved_at_ns is not None
                and now_ns - alert.resolved_at_ns >= retention
                and not any(fid in t.pending for t in self._targets)
            ):
                del self._alerts[fid]
                self._forget_key(fid)


# -- wiring into the agent's HTTP app -------------------------------------------------------
@dataclass(slots=True)
class _Holder:
    exporter: AlertExporter | None = None
    unsubscribe: Any = None


ALERT_OPTIONS_KEY = web.AppKey("lockscope.alert_options", AlertOptions)
ALERT_EXPORTER_KEY = web.AppKey("lockscope.alert_exporter", _Holder)


def setup_alertmanager(app: web.Application) -> None:
    """Start an :class:`AlertExporter` with the app when ``ALERTMANAGER_URLS_KEY`` is
    non-empty (``--alertmanager-url``), subscribed to the state; stop it at cleanup."""
    app[ALERT_OPTIONS_KEY] = AlertOptions()
    holder = app[ALERT_EXPORTER_KEY] = _Holder()

    async def start(app: web.Application) -> None:
        urls = app.get(ALERTMANAGER_URLS_KEY, ())
        if not urls:
            return
        exporter = AlertExporter(urls, app[ALERT_OPTIONS_KEY])
        state = app[STATE_KEY]
        for finding in state.findings(active_only=True):
            exporter.on_finding(finding)
        holder.unsubscribe = state.subscribe_findings(exporter.on_finding)
        await exporter.start()
        holder.exporter = exporter
        log.info("alerting Alertmanager(s): %s", ", ".join(urls))

    async def stop(app: web.Application) -> None:
        if holder.unsubscribe is not None:
            holder.unsubscribe()
            holder.unsubscribe = None
        if holder.exporter is not None:
            await holder.exporter.stop()
            holder.exporter = None

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def alert_options(**options: Any) -> Any:
    """An ``http_setup`` hook that sets :class:`AlertOptions` fields, e.g.
    ``AgentRunner(http_setup=[alert_options(external_url="https://lockscope.example")])``."""

    def setup(app: web.Application) -> None:
        current = app.get(ALERT_OPTIONS_KEY)
        if current is None:
            raise RuntimeError("alert_options() needs setup_alertmanager() first")
        for name, value in options.items():
            if not hasattr(current, name):
                raise TypeError(f"unknown alert option {name!r}")
            setattr(current, name, value)

    return setup


def bind_http_url(app: web.Application, url: str) -> None:
    """Tell the exporter where the HTTP listener ended up (the default link base).

    A wildcard address (``0.0.0.0``, ``::``) is no use in a link: the host's name is used
    instead; set ``--external-url`` when people reach the agent through another name.
    """
    options = app.get(ALERT_OPTIONS_KEY)
    if options is None:
        return
    parts = urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):
        netloc = socket.getfqdn()
        if parts.port is not None:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    options.bound_url = url


def exporter_of(app: web.Application) -> AlertExporter | None:
    """The running exporter of ``app`` (None when no Alertmanager is configured)."""
    holder = app.get(ALERT_EXPORTER_KEY)
    return holder.exporter if holder is not None else None
