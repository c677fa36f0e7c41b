"""Shared by tests/test_reliability_*.py and benchmarks/soak.py: a real ``lockscope agent``
process, HTTP helpers that carry a token and trust a CA, and a self-signed certificate."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
LOCKSCOPE = [sys.executable, "-m", "lockscope"]
READY_LINE = re.compile(r"OTLP on (https?://\S+), HTTP on (https?://\S+)")


def until(predicate: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until truthy; return its value (so never ``None``) or fail after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class AgentProcess:
    """``lockscope agent ARGS`` in a subprocess on free loopback ports (restartable on the
    same ports)."""

    def __init__(
        self, *args: str, env: Mapping[str, str] | None = None, nofile: int | None = None
    ) -> None:
        self.args = list(args)
        self.nofile = nofile
        """RLIMIT_NOFILE of the agent process (None: inherited)."""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKSCOPE_")}
        # The agent's state file is this instance's own, kept across restart(): no test
        # sees another's saved state.
        state_dir = tempfile.mkdtemp(prefix="lockscope-agent-state-")
        self.env["LOCKSCOPE_AGENT_STATE_FILE"] = os.path.join(state_dir, "agent.sqlite")
        self.env.update(env or {})
        self.stderr: list[str] = []
        self.otlp_url = self.http_url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, otlp: str = "127.0.0.1:0", http: str = "127.0.0.1:0") -> AgentProcess:
        """Start; waits for the ready line and records the bound URLs."""
        self.proc = subprocess.Popen(
            [*LOCKSCOPE, "agent", "--otlp", otlp, "--http", http, *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=self.env,
            preexec_fn=self._limit_files if self.nofile is not None else None,
        )
        lines: queue.Queue[str] = queue.Queue()
        proc = self.proc

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)
                self.stderr.append(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            match = READY_LINE.search(line)
            if match:
                self.otlp_url, self.http_url = match.group(1), match.group(2)
                return self
        raise AssertionError(f"agent did not start: {''.join(self.stderr)}")

    def _limit_files(self) -> None:
        import resource

        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def restart(self) -> None:
        """Kill (SIGKILL: no goodbye) and start again on the same ports."""
        self.kill()
        self.start(self.otlp_url.split("://")[1], self.http_url.split("://")[1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return "".join(self.stderr)


def request(
    url: str,
    *,
    token: str | None = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns status, headers and body (errors included)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, **kw: Any) -> Any:
    status, _, body = request(url, **kw)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def self_signed_cert(directory: Path, hosts: Sequence[str] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """A self-signed certificate (with IP/DNS subjectAltNames) and its key, by openssl."""
    cert, key = directory / "agent.pem", directory / "agent-key.pem"
    san = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=lockscope-test",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (from /proc, Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in a Prometheus exposition matching ``labels``."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
        found = True
    return total if found else 0.0


def letters(i: int) -> str:
    """``i`` in base 26 letters: distinct names the digit/uuid collapse cannot fold."""
    out = ""
    while True:
        i, r = divmod(i, 26)
        out = chr(97 + r) + out
        if not i:
            return out


def cardinality_attack(
    otlp_url: str,
    http_url: str,
    pid: int,
    names: int,
    batch: int = 5_000,
    processes: int = 50,
    token: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Post ``names`` distinct lock names as holds (to the state) and as metric series
    (to the lock label), then read the agent's /metrics and its RSS."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from lockscope import events as ev
    from lockscope.agent.model import Event, ProcessInfo
    from lockscope.testing.agent import encode_logs

    protobuf = {"Content-Type": "application/x-protobuf"}
    rss_before = rss_bytes(pid)
    peak = rss_before
    now = time.time_ns()
    started = time.monotonic()
    slowest = 0.0
    for start in range(0, names, batch):
        holds = []
        metrics = ExportMetricsServiceRequest()
        rm = metrics.resource_metrics.add()
        proc = ProcessInfo(
            "attacker",
            "host",
            90_000 + start // batch % processes,
            f"atk-{start // batch % processes}",
        )
        for key, value in (
            (ev.RES_SERVICE_NAME, proc.service),
            (ev.RES_SERVICE_INSTANCE, proc.instance),
            (ev.RES_PROCESS_PID, proc.pid),
        ):
            kv = rm.resource.attributes.add(key=key)
            if isinstance(value, int):
                kv.value.int_value = value
            else:
                kv.value.string_value = value
        metric = rm.scope_metrics.add().metrics.add(name=ev.METRIC_ACQUISITIONS)
        metric.sum.aggregation_temporality = 2  # cumulative
        metric.sum.is_monotonic = True
        for i in range(start, min(names, start + batch)):
            name = "attack:" + letters(i)
            holds.append(
                Event(
                    ev.EVENT_HOLD_START,
                    now,
                    proc,
                    {
                        ev.ATTR_LOCK_SYSTEM: "redis",
                        ev.ATTR_LOCK_NAMESPACE: "ns",
                        ev.ATTR_LOCK_NAME: name,
                        ev.ATTR_LOCK_MODE: "exclusive",
                        ev.ATTR_ACTOR_ID: f"thread:{i % 64}",
                        ev.ATTR_SINCE: now,
                    },
                )
            )
            point = metric.sum.data_points.add(
                start_time_unix_nano=now, time_unix_nano=now, as_int=1
            )
            for key, value in (
                (ev.ATTR_LOCK_TEMPLATE, name),
                (ev.ATTR_LOCK_SYSTEM, "redis"),
                (ev.ATTR_OUTCOME, "acquired"),
            ):
                point.attributes.add(key=key).value.string_value = value
        for path, data in (
            ("/v1/logs", encode_logs(holds)),
            ("/v1/metrics", metrics.SerializeToString()),
        ):
            sent = time.monotonic()
            status, _, body = request(
                otlp_url + path, data=data, headers=protobuf, token=token, timeout=600
            )
            assert status == 200, (status, body[:200])
            slowest = max(slowest, time.monotonic() - sent)
        peak = max(peak, rss_bytes(pid))
        done = min(names, start + batch)
        if progress is not None and done % 50_000 < batch:
            progress(
                f"{done} names, {time.monotonic() - started:.0f} s, "
                f"RSS {rss_bytes(pid) / 2**20:.0f} MiB, slowest request {slowest:.2f} s"
            )
    elapsed = time.monotonic() - started
    status, _, body = request(http_url + "/metrics", token=token, timeout=600)
    assert status == 200
    text = body.decode()
    label_values = set(re.findall(r'[{,]lock="((?:[^"\\]|\\.)*)"', text))
    rss_after = rss_bytes(pid)
    return {
        "names": names,
        "seconds": round(elapsed, 1),
        "names_per_second": round(names / elapsed),
        "lock_label_values": len(label_values),
        "limits_hit": metric_value(text, "lockscope_agent_limits_hit_total"),
        "rejected": metric_value(text, "lockscope_agent_events_rejected_total"),
        "metric_points_dropped": metric_value(text, "lockscope_agent_metric_points_dropped_total"),
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": max(peak, rss_after),
        "rss_growth_bytes": max(peak, rss_after) - rss_before,
        "slowest_request_seconds": round(slowest, 2),
    }


class FaultProxy:
    """An OTLP/HTTP hop between shims and an agent that misbehaves on demand.

    ``mode``: ``"pass"`` (forward), ``"black_hole"`` (read the request, never answer),
    ``"slow"`` (answer after ``delay`` seconds, forwarding), ``"status"`` (answer
    ``status`` with ``retry_after``, forward nothing).  In ``pass`` mode, ``drop`` is the
    probability that a lock event (log record) is lost, and with ``reorder`` the records
    of each request are shuffled and requests are forwarded in random order, in windows of
    ``reorder_window`` seconds; the shim always gets 200, as from a Collector that lost
    data after accepting it.  Counts are in :attr:`counts`.
    """

    def __init__(self, upstream: str | None = None, seed: int = 1) -> None:
        import http.server
        import random

        self.upstream = upstream
        self.mode = "pass"
        self.delay = 0.0
        self.status = 500
        self.retry_after: str | None = None
        self.drop = 0.0
        self.reorder = False
        self.reorder_window = 0.05
        self.keep_metrics = True
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, dict[str, str], bytes]] = []
        self._stop = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("content-type", "authorization", "content-encoding")
                }
                status, retry_after = proxy._handle(self.path, headers, body)
                if status is None:
                    proxy._stop.wait(3600)
                    self.close_connection = True
                    return
                self.send_response(status)
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._forward_loop, daemon=True),
        ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int | None, str | None]:
        self.counts["requests"] += 1
        mode = self.mode
        if mode == "black_hole":
            self.counts["black_holed"] += 1
            return None, None
        if mode == "status":
            self.counts[f"answered_{self.status}"] += 1
            return self.status, self.retry_after
        if mode == "slow":
            time.sleep(self.delay)  # the fault itself: this hop is slow
        if path.endswith("/v1/logs") and (self.drop or self.reorder):
            body = self._mangle(body)
        if self.upstream is None:
            return 200, None
        if self.reorder and path.endswith("/v1/logs"):
            with self._lock:
                self._pending.append((path, headers, body))
            return 200, None
        return self._forward(path, headers, body), None

    def _mangle(self, body: bytes) -> bytes:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )

        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                records = list(scope_logs.log_records)
                kept = [r for r in records if self._random.random() >= self.drop]
                self.counts["records"] += len(records)
                self.counts["records_dropped"] += len(records) - len(kept)
                if self.reorder:
                    self._random.shuffle(kept)
                del scope_logs.log_records[:]
                scope_logs.log_records.extend(kept)
        return bytes(request.SerializeToString())

    def _forward(self, path: str, headers: dict[str, str], body: bytes) -> int:
        import http.client
        from urllib.parse import urlsplit

        assert self.upstream is not None
        parts = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=30
        )
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            self.counts[f"forwarded_{response.status}"] += 1
            return response.status
        except OSError:
            self.counts["upstream_down"] += 1
            return 503
        finally:
            conn.close()

    def _forward_loop(self) -> None:
        while not self._stop.wait(self.reorder_window):
            with self._lock:
                batch, self._pending = self._pending, []
            self._random.shuffle(batch)
            for path, headers, body in batch:
                self._forward(path, headers, body)


WORKER = str(Path(__file__).with_name("reliability_worker.py"))


class Worker:
    """``reliability_worker.py MODE CFG`` under the shim (``lockscope instrument``)."""

    def __init__(
        self,
        mode: str,
        cfg: Mapping[str, Any],
        endpoint: str,
        *,
        heartbeat: float = 0.5,
        report_after: float = 0.05,
        service: str = "reliability",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
        env.update(
            {
                "LOCKSCOPE_ENDPOINT": endpoint,
                "LOCKSCOPE_HEARTBEAT": str(heartbeat),
                "LOCKSCOPE_REPORT_AFTER": str(report_after),
                "LOCKSCOPE_METRICS_EXPORT": "none",
                "OTEL_SERVICE_NAME": service,
                **(extra_env or {}),
            }
        )
        self.proc = subprocess.Popen(
            [*LOCKSCOPE, "instrument", "--", sys.executable, WORKER, mode, json.dumps(dict(cfg))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                err = (
                    self.proc.stderr.read()
                    if self.proc.poll() is not None and self.proc.stderr
                    else ""
                )
                raise AssertionError(f"worker {self.pid}: no {event!r} within {timeout} s {err}")
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if line.get("event") == event:
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout)


def findings(http_url: str, kind: str, token: str | None = None) -> list[dict[str, Any]]:
    """All findings of ``kind`` (deadlocks, stale-holders, violations, order-inversions)."""
    key = kind.replace("-", "_")
    return list(get_json(f"{http_url}/api/v1/{kind}", token=token)[key])
