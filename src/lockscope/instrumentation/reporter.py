"""The reporter: the shim's background threads, never the caller's.

``lockscope-reporter`` wakes every ``report_after / 4`` seconds (so a wait is queued at most
``1.25 x report_after`` after it began), finds the waits and holds that have lasted
``report_after``, asks the lock library who holds an awaited lock where that is cheap (on
``lockscope-probe``, bounded to 50 ms per tick), queues the events, sends heartbeat
snapshots and exports the lock metrics.

Heartbeat cadence follows contention.  A process with nothing reported sends a snapshot
every ``LOCKSCOPE_HEARTBEAT`` (1 s).  One that has reported a wait sends one every
``report_after`` (at least 0.1 s apart) while it waits: in a deadlock the agent needs
each participant's word from after the cycle closed (see the agent's evidence rule), and
this brings it within ``report_after`` instead of up to a heartbeat.  One that has
reported a hold (and no wait) sends one every ``_BUSY_HEARTBEAT`` (0.4 s) and announces
that interval, so the agent presumes it dead, and calls its holds orphaned, about 1.2 s
after it stopped.  A newly reported wait, and the first events after an empty snapshot,
come with a snapshot at once (at most one per 0.1 s).  Each snapshot announces the
longest gap until the next one (``lockscope.heartbeat.interval``); the gap after a
snapshot is never longer than the previous one announced, so slowing down never outruns
the agent's liveness timeout.

``lockscope-sender`` drains the event queue in batches of up to 512 records and POSTs them
to ``LOCKSCOPE_ENDPOINT/v1/logs``.  A failed batch is retried with exponential backoff
(honouring ``Retry-After`` on 429/503, capped at 30 s) up to 4 attempts, then dropped and
counted; meanwhile the queue (``LOCKSCOPE_QUEUE_SIZE``, 10,000 events) drops new events
and counts them.  At exit the reporter sends a last snapshot marked as a clean exit
(``lockscope.process.exiting``) listing every hold still held, and the sender gets one
second to flush what is queued.  Every event carries ``lockscope.seq``, its number in this
process's send order.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from lockscope import events
from lockscope.instrumentation.otlp_export import Transport, encode_events
from lockscope.instrumentation.recorder import Recorder, Wait

__all__ = ["Reporter"]

_log = logging.getLogger("lockscope.instrumentation")
_BATCH = 512
_ATTEMPTS = 4
_MAX_BACKOFF = 30.0
_PROBE_BUDGET = 0.05
Probe = Callable[[Wait], bool | None]
"""An adapter's holder look-up; ``False``: not everything known yet, look again later."""
_BUSY_HEARTBEAT = 0.4
"""Seconds between snapshots (at most) while the process has a reported hold or wait."""
_MIN_GAP_NS = 100_000_000
"""Snapshots are at least 0.1 s apart (but the first): a short ``report_after`` (tests use
0.02) or a burst of reported waits must not turn them into a flood."""


class _Signal:
    """A wake-up flag built on the raw ``_thread`` lock (never an instrumented one)."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        got = self._lock.acquire(True, max(0.0, timeout))
        return got


class _Prober:
    """Runs the adapters' holder look-ups on its own thread, so a hung server costs the
    reporter at most the probe budget."""

    def __init__(self) -> None:
        self._jobs: collections.deque[tuple[list[tuple[Wait, Probe]], _Signal]]
        self._jobs = collections.deque()
        self._wake = _Signal()
        self._busy = False
        self._thread: threading.Thread | None = None

    def run(self, jobs: list[tuple[Wait, Probe]], budget: float) -> None:
        if not jobs or self._busy:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="lockscope-probe", daemon=True)
            self._thread.start()
        done = _Signal()
        self._busy = True
        self._jobs.append((jobs, done))
        self._wake.set()
        done.wait(budget)

    def _loop(self) -> None:
        while True:
            self._wake.wait(3600.0)
            while self._jobs:
                jobs, done = self._jobs.popleft()
                for wait, probe in jobs:
                    try:
                        complete = probe(wait) is not False
                    except Exception:
                        complete = True  # a failing server is not asked again and again
                        _log.debug("lockscope: holder look-up failed", exc_info=True)
                    wait.probed = complete
                self._busy = False
                done.set()


class Reporter:
    """Owns the reporter and sender threads of one process."""

    def __init__(
        self,
        recorder: Recorder,
        transport: Transport,
        resource: Callable[[], Mapping[str, Any]],
        *,
        report_after: float,
        heartbeat: float,
        probes: Callable[[Wait], Probe | None],
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self.transport = transport
        self.resource = resource
        self.report_after = report_after
        self.heartbeat = heartbeat
        self.interval = max(0.005, min(report_after / 4, heartbeat))
        self._probes = probes
        self._tick = tick
        self._prober = _Prober()
        self._stop = False
        self._wake_reporter = _Signal()
        self._wake_sender = _Signal()
        self._threads: list[threading.Thread] = []
        self._metrics_body: bytes | None = None
        self.sent = 0
        """Events the endpoint accepted."""
        self.failed_posts = 0
        self._announced = False
        self._seq = 0
        """``lockscope.seq`` of the last event encoded (this incarnation's send order)."""
        self._idle = True
        """The last snapshot listed nothing."""
        self._promised = heartbeat
        """The interval the last snapshot announced."""
        self._next_beat = 0
        self._last_beat = 0

    def start(self) -> None:
        """Start both threads (again, in a forked child)."""
        self._stop = False
        self._announced = False
        self._seq = 0  # a forked child is a new incarnation (new service.instance.id)
        self._idle = True
        self._promised = self.heartbeat
        self._threads = [
            threading.Thread(target=self._report_loop, name="lockscope-reporter", daemon=True),
            threading.Thread(target=self._send_loop, name="lockscope-sender", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, flush_timeout: float = 1.0) -> None:
        """Report what is due, then give the sender ``flush_timeout`` seconds to send it."""
        if self._stop:
            return
        try:
            self.scan(heartbeat=True, final=True)
        except Exception:
            _log.debug("lockscope: final scan failed", exc_info=True)
        self._stop = True
        self._wake_reporter.set()
        self._wake_sender.set()
        deadline = time.monotonic() + flush_timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def stopping(self) -> bool:
        """Whether :meth:`stop` has been called (from another thread)."""
        return self._stop

    # -- reporter thread ----------------------------------------------------------------
    def _report_loop(self) -> None:
        self._next_beat = time.perf_counter_ns() + int(self.heartbeat * 1e9)
        next_clock = time.monotonic() + 10.0
        while not self._stop:
            self._wake_reporter.wait(self.interval)
            if self.stopping():
                break
            try:
                beat = time.perf_counter_ns() >= self._next_beat
                if time.monotonic() >= next_clock:
                    next_clock = time.monotonic() + 10.0
                    self.recorder.sync_clock()
                self.scan(heartbeat=beat)
                if self._tick is not None:
                    self._tick()
            except Exception:
                self.recorder.errors += 1
                _log.debug("lockscope: reporter tick failed", exc_info=True)

    def scan(self, *, heartbeat: bool, final: bool = False) -> None:
        """One reporter tick: long waits (with holder look-ups), old holds, heartbeat
        (``final``: the exit snapshot, with every hold however young)."""
        recorder = self.recorder
        now = time.perf_counter_ns()
        due = recorder.due_waits(now)
        if due:
            self._prober.run(self._probe_jobs(due), _PROBE_BUDGET)
            _add_code_locations(due)
        elif heartbeat:
            # A look-up that ran past the budget (a loaded host, a slow server) finishes
            # on the probe thread and the snapshots carry it; one that found the waiter
            # not yet queued, or never ran (the probe thread was busy), runs again here,
            # so the agent learns the holder and the ticket while the wait lasts.
            again = [w for w in list(recorder.waits) if w.reported and not w.probed]
            if again:
                self._prober.run(self._probe_jobs(again), _PROBE_BUDGET)
        recorder.report(now + recorder.report_after_ns if final else now, due)
        if due or (self._idle and recorder.pending()):
            # A newly reported wait comes with a snapshot: its holds were stamped with
            # when they were taken, and a deadlock's evidence needs them asserted after
            # the cycle closed (this wait may be the one that closed it).  So does the
            # first report after an empty snapshot: a process that dies before its next
            # regular one is then presumed dead on the busy timeout (and, the first
            # time, is known at all).  At most one per _MIN_GAP_NS, though.
            if not self._announced or now - self._last_beat >= _MIN_GAP_NS:
                heartbeat = True
            elif self._next_beat > self._last_beat + _MIN_GAP_NS:
                self._next_beat = self._last_beat + _MIN_GAP_NS
        if heartbeat:
            self._announced = True
            waits, holds = recorder.snapshot()
            busy = min(self.heartbeat, _BUSY_HEARTBEAT)
            if waits:
                gap, announce = max(_MIN_GAP_NS / 1e9, min(busy, self.report_after)), busy
            elif holds:
                gap = announce = busy
            else:
                gap = announce = self.heartbeat
            gap = min(gap, self._promised)
            self._promised = announce
            self._idle = not waits and not holds
            sent = self._last_beat = time.perf_counter_ns()
            self._next_beat = sent + int(gap * 1e9)
            recorder.emit(
                events.EVENT_HEARTBEAT,
                sent,
                {
                    events.ATTR_SCHEMA_VERSION: events.SCHEMA_VERSION,
                    events.ATTR_HEARTBEAT_INTERVAL: announce,
                    events.ATTR_DROPPED: recorder.dropped,
                    events.ATTR_WAITS: waits,
                    events.ATTR_HOLDS: holds,
                    **({events.ATTR_EXITING: True} if final else {}),
                },
            )
        if recorder.pending():
            self._wake_sender.set()

    def _probe_jobs(self, waits: list[Wait]) -> list[tuple[Wait, Probe]]:
        jobs = []
        for wait in waits:
            probe = self._probes(wait)
            if probe is None:
                wait.probed = True  # nothing to look up: never asked again
            else:
                jobs.append((wait, probe))
        return jobs

    def submit(self, body: bytes) -> None:
        """Hand an encoded metrics request to the sender (the latest replaces an unsent one:
        the figures are cumulative)."""
        self._metrics_body = body
        self._wake_sender.set()

    # -- sender thread ------------------------------------------------------------------
    def _send_loop(self) -> None:
        last = False
        while True:
            stopping = self._stop
            if not stopping:
                self._wake_sender.wait(self.heartbeat)
            body, self._metrics_body = self._metrics_body, None
            if body is not None and not self.transport.post("/v1/metrics", body).ok:
                self.failed_posts += 1
            batch = self.recorder.drain(_BATCH)
            while batch:
                self._send(batch)
                if self._stop and not stopping:
                    stopping = True
                batch = self.recorder.drain(_BATCH)
            if stopping or self._stop:
                if last or (self._metrics_body is None and not self.recorder.pending()):
                    return
                last = True  # one more pass: the exit flush queued more while this one sent

    def _send(self, batch: list[tuple[str, int, dict[str, Any]]]) -> None:
        # Numbered in queue order, which is the order the events happened in this process:
        # the agent orders them by this, not by timestamps a stepped clock can reorder.
        first_seq = self._seq + 1
        self._seq += len(batch)
        try:
            body = encode_events(batch, self.resource(), first_seq)
        except Exception:
            self.recorder.errors += 1
            self.recorder.dropped += len(batch)
            _log.debug("lockscope: encoding failed", exc_info=True)
            return
        delay = 0.1
        for attempt in range(_ATTEMPTS):
            result = self.transport.post("/v1/logs", body)
            if result.ok:
                self.sent += len(batch)
                return
            self.failed_posts += 1
            if not result.retryable or attempt == _ATTEMPTS - 1 or self._stop:
                break
            pause = min(_MAX_BACKOFF, result.retry_after if result.retry_after else delay)
            delay = min(_MAX_BACKOFF, delay * 2)
            if self._sleep_unless_stopping(pause):
                break
        self.recorder.dropped += len(batch)

    def _sleep_unless_stopping(self, pause: float) -> bool:
        """Sleep ``pause`` seconds unless stopping; True if stopping."""
        deadline = time.monotonic() + pause
        while not self._stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        return True


def _thread_frames() -> dict[int, Any]:
    """``sys._current_frames()``, made safe on CPython 3.11.

    There a garbage collection that starts inside the call can deadlock the whole process:
    it holds the runtime's thread-list lock while it allocates, and collecting a dead
    thread's objects needs that lock, with the GIL held (CPython gh-106883, fixed in 3.12
    by pausing the collector around the call).  The soak (benchmarks/soak.py) froze an
    instrumented app that way.  So pause it here too, unless the app turned it off.
    """
    if sys.version_info >= (3, 12) or not gc.isenabled():
        return sys._current_frames()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        gc.enable()


def _add_code_locations(waits: list[Wait]) -> None:
    """Where each long-waiting thread is waiting (its live frame; cheap, on report only)."""
    from lockscope.instrumentation.spans import caller_location, is_library_frame

    frames = _thread_frames() if any(w.task is None for w in waits) else {}
    for wait in waits:
        where = None
        if wait.task is not None:
            try:
                # A suspended coroutine's frames have no f_back: walk the task's stack.
                for frame in reversed(wait.task.get_stack()):
                    if not is_library_frame(frame.f_code.co_filename):
                        code = frame.f_code
                        where = (code.co_filename, frame.f_lineno, code.co_qualname)
                        break
            except Exception:
                where = None
        else:
            frame = frames.get(wait.actor)
            if frame is not None:
                where = caller_location(frame)
        if where is not None:
            wait.code = where
