"""Helpers for the second-round target tests: app processes running tests/reach_worker.py
under the shim, and the agent's JSON API."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from reliability_helpers import get_json, letters, until

HB = 0.5
WORKER = str(Path(__file__).with_name("reach_worker.py"))
_names = itertools.count()

__all__ = ["HB", "Api", "App", "get_json", "letters", "started", "unique", "until"]


def unique(prefix: str) -> str:
    """A lock-name stem no other test uses, without digits (templates stay distinct)."""
    return f"{prefix}{letters(next(_names))}"


class App:
    """One ``reach_worker.py`` process under the shim, reporting to ``endpoint``."""

    def __init__(self, endpoint: str, service: str = "reach") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSCOPE_", "OTEL_"))}
        env.update(
            {
                "LOCKSCOPE_ENDPOINT": endpoint,
                "LOCKSCOPE_HEARTBEAT": str(HB),
                "LOCKSCOPE_METRICS_EXPORT": "none",
                "OTEL_SERVICE_NAME": service,
                "PYTHONPATH": str(Path(__file__).parent),
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env,
        )  # fmt: skip
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.replies.put(json.loads(line))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, op: str, **fields: Any) -> int:
        cid = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "id": cid, **fields}) + "\n")
        self.proc.stdin.flush()
        return cid

    def reply(self, cid: int | None, *events: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first reply to command ``cid`` whose event is one of ``events``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if line["id"] == cid and line["event"] in events:
                    self.seen.remove(line)
                    return line
                if line["id"] == cid and line["event"] == "error":
                    raise AssertionError(f"app {self.pid}: {line}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"app {self.pid}: no {events} for {cid} within {timeout} s")
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.replies.get(timeout=min(left, 0.2)))

    def acquire(self, actor: str, key: str, lock: dict[str, Any], timeout: float = 30) -> None:
        cid = self.send("acquire", actor=actor, key=key, timeout=timeout, **lock)
        self.reply(cid, "acquired", timeout=timeout + 30)

    def start_acquire(self, actor: str, key: str, lock: dict[str, Any], timeout: float) -> int:
        cid = self.send("acquire", actor=actor, key=key, timeout=timeout, **lock)
        self.reply(cid, "waiting")
        return cid

    def release(self, actor: str, key: str) -> str:
        cid = self.send("release", actor=actor, key=key)
        return str(self.reply(cid, "released", "lost", "error")["event"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("exit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def started(apps: list[App]) -> list[App]:
    for app in apps:
        app.reply(None, "ready", timeout=60)
    return apps


class Api:
    """The agent's JSON API."""

    def __init__(self, http_url: str) -> None:
        self.http_url = http_url

    def get(self, path: str) -> Any:
        return get_json(self.http_url + path)

    def lock(self, name: str) -> dict[str, Any] | None:
        url = self.http_url + "/api/v1/locks/" + urllib.parse.quote(name, safe="")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def holding(self, name: str, pid: int) -> bool:
        lock = self.lock(name)
        return lock is not None and any(h["pid"] == pid for h in lock["holders"])

    def findings(self, kind: str, status: str = "all") -> list[dict[str, Any]]:
        return list(self.get(f"/api/v1/{kind}?status={status}")[kind.replace("-", "_")])

    def deadlock_on(self, locks: set[str]) -> dict[str, Any] | None:
        for d in self.findings("deadlocks", "active"):
            if set(d["locks"]) == locks:
                return d
        return None

    def dead(self, pid: int) -> bool:
        procs = self.get("/api/v1/processes")["processes"]
        return any(p["pid"] == pid and not p["alive"] for p in procs)
