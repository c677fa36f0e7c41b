"""Starting demo worker processes and hearing what they do.

Each worker is ``python -m lockscope.demo.worker ROLE ...``; a reader thread turns its
stdout lines (JSON) into :class:`Message` objects on one shared queue, so the demo waits
on the workers and polls the agent from a single thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["Message", "Worker", "WorkerPool"]


@dataclass(frozen=True)
class Message:
    """One line a worker printed (``event`` is ``"exit"`` when its stdout closed)."""

    worker: Worker
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


class Worker:
    """One worker process."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        inbox: queue.Queue[Message],
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.events: list[Message] = []
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lockscope.demo.worker", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(env),
                text=True,
                bufsize=1,
            )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout, inbox), name=f"demo-{name}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str], inbox: queue.Queue[Message]) -> None:
        for line in stream:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get("event"), str):
                event = data.pop("event")
                inbox.put(Message(self, event, data))
        inbox.put(Message(self, "exit"))

    @property
    def exited(self) -> bool:
        """Whether the process has ended."""
        return self.proc.poll() is not None

    def seen(self, event: str) -> Message | None:
        """The first message ``event`` received from this worker, if any."""
        return next((m for m in self.events if m.event == event), None)

    def send(self, line: str) -> None:
        """Write one command line to the worker's stdin (ignored once it has exited)."""
        stdin = self.proc.stdin
        if stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            stdin.write(line + "\n")
            stdin.flush()

    def signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has already ended."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stderr_tail(self, lines: int = 15) -> str:
        """The end of the worker's stderr, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; reap the process."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5.0)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class WorkerPool:
    """The workers of one demo run, their shared message queue and their environment."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.workers: list[Worker] = []

    def start(self, name: str, argv: Sequence[str]) -> Worker:
        """Start a worker whose ``OTEL_SERVICE_NAME`` is ``name``."""
        env = {**self.env, "OTEL_SERVICE_NAME": name}
        worker = Worker(name, argv, env, self.log_dir, self.inbox)
        self.workers.append(worker)
        return worker

    def next_message(self, timeout: float) -> Message | None:
        """The next message from any worker, or None after ``timeout`` seconds."""
        try:
            message = self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        message.worker.events.append(message)
        return message

    def stop_all(self) -> None:
        """Stop every worker still running."""
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    @staticmethod
    def wait_exit(worker: Worker, timeout: float) -> int | None:
        """The worker's exit code, or None if it is still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while worker.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(0.05)
        return worker.proc.poll()
