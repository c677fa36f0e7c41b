"""Hostile clients for ``benchmarks/soak.py --only hostile``: each runs on its own thread
against a real agent and counts what it tried.

- :class:`Flood`: heartbeats of fake processes (one each, 500 per request), never seen
  again: what filled the process table in issue 14.
- :class:`Forger`: for every process of the given services, a heartbeat carrying its
  ``service.instance.id``, dated an hour ahead, listing nothing; also the same with a
  stale and an absurd ``lockscope.seq``.
- :class:`Slowloris`: connections that send their headers a byte at a time, reopened when
  the agent closes them.
- :class:`BigNames`: holds with 1 MB lock names and owners from a few fake processes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

from lockscope.agent.model import Event, ProcessInfo
from lockscope.testing.agent import encode_logs

HOUR_NS = 3600 * 1_000_000_000


def _post(url: str, events: list[Event]) -> int:
    req = urllib.request.Request(
        url + "/v1/logs",
        data=encode_logs(events),
        headers={"Content-Type": "application/x-protobuf"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _heartbeat(info: ProcessInfo, t_ns: int, **extra: Any) -> Event:
    attrs: dict[str, Any] = {
        "lockscope.holds": [],
        "lockscope.waits": [],
        "lockscope.heartbeat.interval": 1.0,
        **extra,
    }
    return Event("lockscope.heartbeat", t_ns, info, attrs)


class _Client(threading.Thread):
    def __init__(self, otlp_url: str) -> None:
        super().__init__(daemon=True, name=type(self).__name__)
        self.otlp_url = otlp_url
        self.stop_event = threading.Event()
        self.counts: Counter[str] = Counter()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(15)


class Flood(_Client):
    def __init__(self, otlp_url: str, rate: int = 5000) -> None:
        super().__init__(otlp_url)
        self.rate = rate

    def run(self) -> None:
        n = 0
        while not self.stop_event.wait(0.1):
            batch = [
                _heartbeat(ProcessInfo("flood", "nowhere", 1, f"flood-{n + i}"), time.time_ns())
                for i in range(self.rate // 10)
            ]
            n += len(batch)
            status = _post(self.otlp_url, batch)
            self.counts["fake_processes"] += len(batch)
            self.counts[f"status_{status}"] += 1


class Forger(_Client):
    def __init__(self, otlp_url: str, http_url: str, services: set[str]) -> None:
        super().__init__(otlp_url)
        self.http_url = http_url
        self.services = services

    def _targets(self) -> list[ProcessInfo]:
        try:
            with urllib.request.urlopen(self.http_url + "/api/v1/processes", timeout=5) as r:
                doc = json.load(r)
        except OSError:
            return []
        return [
            ProcessInfo(p["service"], p["host"], p["pid"], p["instance"])
            for p in doc["processes"]
            if p["service"] in self.services and p.get("alive", True)
        ]

    def run(self) -> None:
        targets: list[ProcessInfo] = []
        refreshed = 0.0
        while not self.stop_event.wait(0.2):
            if time.monotonic() - refreshed > 2.0:
                targets, refreshed = self._targets(), time.monotonic()
            future = time.time_ns() + HOUR_NS
            forged = []
            for info in targets:
                forged.append(_heartbeat(info, future))  # the reported attack: no seq
                forged.append(_heartbeat(info, future, **{"lockscope.seq": 1}))
                forged.append(_heartbeat(info, future, **{"lockscope.seq": 2**62}))
            if forged:
                _post(self.otlp_url, forged)
                self.counts["forged_heartbeats"] += len(forged)


class Slowloris(_Client):
    def __init__(self, urls: list[str], connections: int = 200) -> None:
        super().__init__(urls[0])
        self.urls = urls
        self.connections = connections

    def _open(self, url: str) -> socket.socket | None:
        host, _, port = url.split("://")[1].partition(":")
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"POST /v1/logs HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            self.counts["refused"] += 1
            return None
        self.counts["opened"] += 1
        return s

    def run(self) -> None:
        socks: list[tuple[str, socket.socket | None]] = [
            (self.urls[i % len(self.urls)], None) for i in range(self.connections)
        ]
        while not self.stop_event.wait(0.3):
            for i, (url, s) in enumerate(socks):
                if s is None:
                    socks[i] = (url, self._open(url))
                    continue
                try:
                    s.send(b"X")
                except OSError:
                    self.counts["closed_by_agent"] += 1
                    s.close()
                    socks[i] = (url, self._open(url))
        for _url, s in socks:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


class BigNames(_Client):
    def run(self) -> None:
        n = 0
        big = "B" * 1_000_000
        while not self.stop_event.wait(2.0):
            info = ProcessInfo("bignames", "nowhere", 2, f"big-{n % 4}")
            attrs = {
                "lockscope.lock.system": "redis",
                "lockscope.lock.namespace": "ns",
                "lockscope.lock.name": f"{n}:{big}",
                "lockscope.lock.owner": big,
                "lockscope.actor.id": f"thread:{n}",
                "lockscope.since": time.time_ns(),
            }
            _post(self.otlp_url, [Event("lockscope.hold.start", time.time_ns(), info, attrs)])
            self.counts["oversized_holds"] += 1
            n += 1
