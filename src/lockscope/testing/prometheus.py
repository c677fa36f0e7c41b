"""Throw-away Prometheus and Alertmanager servers for tests (Debian packages ``prometheus``
and ``prometheus-alertmanager``).

Both listen on a free loopback port with their data in a private directory::

    with AlertmanagerServer() as am, PrometheusServer() as prom:
        prom.scrape(["127.0.0.1:9477"])          # rewrite the scrape config and reload
        prom.query("lockscope_deadlocks_active")   # the HTTP API's result list
        am.alerts()                               # GET /api/v2/alerts

With pytest, the ``prometheus_server`` and ``alertmanager_server`` fixtures (session scope)
come from lockscope's plugin.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Unpack

from lockscope.testing.server import Server, ServerOptions

__all__ = ["AlertmanagerServer", "PrometheusServer"]


def _http(url: str, data: bytes | None = None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body.strip() else None


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class _PrometheusProjectServer(Server):
    """What Prometheus and Alertmanager share: one binary, an HTTP API at :attr:`url` with
    a readiness endpoint, and the same listen-address and log-level flags."""

    def __init__(self, binary: str, **options: Unpack[ServerOptions]) -> None:
        super().__init__(**options)
        self.binary = binary

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    def own_flags(self) -> list[str]:
        """The command-line flags this server needs besides the shared ones."""
        return []

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            *self.own_flags(),
            f"--web.listen-address={self.address}",
            "--log.level=warn",
        ]

    def ready(self) -> bool:
        return _ok(self.url + "/-/ready")


class AlertmanagerServer(_PrometheusProjectServer):
    """prometheus-alertmanager, clustering off, one do-nothing receiver by default.

    ``config`` replaces the whole alertmanager.yml.  Alerts live in memory: after
    :meth:`stop`/:meth:`kill` and :meth:`start` the server comes back empty, which is what
    an agent's re-sending must cope with.
    """

    name = "alertmanager"
    package = "prometheus-alertmanager"
    default_startup_timeout = 30.0

    DEFAULT_CONFIG = (
        "route:\n"
        "  receiver: blackhole\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "receivers:\n"
        "  - name: blackhole\n"
    )

    def __init__(
        self,
        *,
        binary: str = "prometheus-alertmanager",
        config: str | None = None,
        **options: Unpack[ServerOptions],
    ) -> None:
        """Prepare an Alertmanager; its :attr:`url` is the value for ``--alertmanager-url``."""
        super().__init__(binary, **options)
        self.config = config or self.DEFAULT_CONFIG

    def initialise(self) -> None:
        (self.base_dir / "alertmanager.yml").write_text(self.config, encoding="utf-8")
        (self.base_dir / "data").mkdir(exist_ok=True)

    def own_flags(self) -> list[str]:
        return [
            f"--config.file={self.base_dir / 'alertmanager.yml'}",
            f"--storage.path={self.base_dir / 'data'}",
            "--cluster.listen-address=",
        ]

    def alerts(self, **filters: str) -> list[Any]:
        """``GET /api/v2/alerts``: every alert Alertmanager holds that has not resolved
        (resolved alerts drop out of this list); ``filters`` are label matchers, e.g.
        ``alerts(alertname="LockDeadlock")``."""
        query: list[tuple[str, str]] = [
            ("silenced", "true"),
            ("inhibited", "true"),
            ("unprocessed", "true"),
        ]
        query += [("filter", f'{k}="{v}"') for k, v in filters.items()]
        result: list[Any] = _http(f"{self.url}/api/v2/alerts?{urllib.parse.urlencode(query)}")
        return result

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """``POST /api/v2/alerts`` (as Prometheus or the agent does)."""
        _http(self.url + "/api/v2/alerts", json.dumps(alerts).encode())


class PrometheusServer(_PrometheusProjectServer):
    """prometheus with a 1 s scrape interval, lifecycle API on, TSDB in the base directory.

    :meth:`scrape` points it at targets (rewrites the config and reloads); ``rule_files``
    are loaded too (evaluated every second).
    """

    name = "prometheus"
    package = "prometheus"

    def __init__(
        self,
        *,
        binary: str = "prometheus",
        rule_files: Iterable[str | os.PathLike[str]] = (),
        alertmanagers: Iterable[str] = (),
        **options: Unpack[ServerOptions],
    ) -> None:
        super().__init__(binary, **options)
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.alertmanagers = list(alertmanagers)
        self.targets: list[str] = []

    @property
    def config_path(self) -> Path:
        """The prometheus.yml this server runs with."""
        return self.base_dir / "prometheus.yml"

    def _write_config(self) -> None:
        # JSON is YAML: no YAML library needed to write the config.
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": "lockscope",
                    "scrape_interval": "1s",
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        if self.alertmanagers:
            hosts = [u.split("://", 1)[-1] for u in self.alertmanagers]
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": hosts}]}]}
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def initialise(self) -> None:
        self._write_config()

    def own_flags(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.base_dir / 'data'}",
            "--web.enable-lifecycle",
        ]

    def scrape(self, targets: Iterable[str]) -> None:
        """Scrape ``targets`` (``host:port``, path ``/metrics``) from now on; reloads."""
        self.targets = list(targets)
        self._write_config()
        if self.running:
            _http(self.url + "/-/reload", b"")

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>?params``; returns ``data`` or raises ``RuntimeError`` with
        Prometheus's error message."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = _http(url)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"prometheus {path}: HTTP {exc.code}: {detail}") from None
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        """An instant query's result list (``/api/v1/query``)."""
        data = self.api("query", query=expr)
        result: list[Any] = data["result"]
        return result

    def targets_health(self) -> list[str]:
        """``health`` of each active scrape target (``up``, ``down``, ``unknown``)."""
        data = self.api("targets")
        return [t["health"] for t in data["activeTargets"]]
