"""Shard agents: forward what the fleet-wide view needs to one or more detector agents.

A fleet larger than one agent is split by *process*: each app sends to one shard agent
(its ``LOCKSCOPE_ENDPOINT``, or a Collector's ``loadbalancing`` exporter keyed by resource).
A shard is a full agent for its own processes (heartbeats and liveness, metrics, stale and
orphaned holders, and every finding among its own processes).  Deadlocks, mutual-exclusion
violations and lock-order inversions can span shards, so each shard also forwards, over
OTLP/HTTP like an app, the little a detector needs to see them (TiKV's deadlock detector
gets wait-for entries from every node the same way):

* every lock event it applied (``wait.*``, ``hold.*``, ``lock.lost``): the shims already
  send only waits and holds older than ``report_after`` and the holds of a reported
  waiter, so these follow contention;
* a heartbeat only while it lists a wait or a hold, plus one empty heartbeat after the
  process's last entry ended (so the detector heals what the shard healed), and again for
  every process after anything was dropped on the way (a lost event heals there too);
* each lock-order pair once per shard (not once per process), re-sent after the detector
  was unreachable (it may have restarted);
* never OTLP metrics or spans' other content, never idle processes' empty heartbeats.

Each event keeps its process's resource, so the detector's graph, evidence rule and finding
ids are those of one agent that saw every process: a finding is never invented by the
split, and both tiers name it with the same stable id (Alertmanager deduplicates).  One
queue and one sender task per detector (two detectors give HA); a detector that is down
or slow costs only its own bounded queue, whose drops are counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from lockscope import events as ev
from lockscope.agent import otlp_fastlogs
from lockscope.agent.background import cancel_and_wait
from lockscope.agent.model import Event
from lockscope.agent.otlp_encode import encode_events

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "ForwardCounters",
    "ForwardFilter",
    "Forwarder",
    "ShardForwarding",
    "encode_forwarded",
]

log = logging.getLogger("lockscope.agent.shard")

DEFAULT_QUEUE_SIZE: Final = 100_000
"""Events queued per detector before new ones are dropped (and counted)."""
BATCH: Final = 1024
"""Events per forwarded request."""
ATTEMPTS: Final = 4
TIMEOUT: Final = 2.0
MAX_PAIRS: Final = 100_000
"""Distinct lock-order pairs remembered for re-sending (the rest are forwarded once)."""
SCOPE: Final = "lockscope.agent.shard"

_LOCK_EVENTS: Final = frozenset(
    {
        ev.EVENT_WAIT_START,
        ev.EVENT_WAIT_END,
        ev.EVENT_HOLD_START,
        ev.EVENT_HOLD_END,
        ev.EVENT_HOLD_EXTEND,
        ev.EVENT_LOCK_LOST,
    }
)
_PAIR_KEYS: Final = (
    ev.ATTR_ORDER_FIRST,
    ev.ATTR_ORDER_FIRST_MODE,
    ev.ATTR_ORDER_SYSTEM_FIRST,
    ev.ATTR_ORDER_SECOND,
    ev.ATTR_ORDER_SECOND_MODE,
    ev.ATTR_ORDER_SYSTEM_SECOND,
)


class ForwardFilter:
    """Decides, per applied event, whether the detectors need it (see the module doc).

    ``dirty`` holds the processes whose last forwarded state may not be empty: a process
    leaves it with the first empty heartbeat forwarded after its entries ended.
    :meth:`resync` (after a detector may have lost events) makes every known process dirty
    again and returns the remembered order pairs to re-send.
    """

    def __init__(self, max_pairs: int = MAX_PAIRS) -> None:
        self.dirty: set[str] = set()
        self._known: set[str] = set()
        self._pairs: dict[tuple[Any, ...], Event] = {}
        self._max_pairs = max_pairs
        self.skipped_heartbeats = 0
        self.skipped_pairs = 0

    def wants(self, event: Event) -> bool:
        """Whether to forward ``event`` (an event the shard's state accepted)."""
        name = event.name
        instance = event.process.instance
        if name in _LOCK_EVENTS:
            self.dirty.add(instance)
            self._known.add(instance)
            return True
        if name == ev.EVENT_HEARTBEAT:
            attrs = event.attrs
            if attrs.get(ev.ATTR_HOLDS) or attrs.get(ev.ATTR_WAITS):
                self.dirty.add(instance)
                self._known.add(instance)
                return True
            if instance in self.dirty:
                self.dirty.discard(instance)  # this empty snapshot clears the detector
                return True
            self.skipped_heartbeats += 1
            return False
        if name == ev.EVENT_ORDER_PAIR:
            key = tuple(event.attrs.get(k) for k in _PAIR_KEYS)
            if key in self._pairs:
                self.skipped_pairs += 1
                return False
            if len(self._pairs) < self._max_pairs:
                self._pairs[key] = event
            return True
        return True  # an event name this version does not know: let the detector judge

    def resync(self) -> list[Event]:
        """Something was dropped: heal every process on the next heartbeat, re-send pairs."""
        self.dirty |= self._known
        return list(self._pairs.values())

    def forget(self, instance: str) -> None:
        """The shard forgot a dead process."""
        self.dirty.discard(instance)
        self._known.discard(instance)


def encode_forwarded(events: Iterable[Event]) -> bytes:
    """Events as one ``ExportLogsServiceRequest``, each under its own process's resource
    (so the detector sees the original process).  The order is kept exactly, across
    processes too (two processes' holds of one lock are judged by it)."""
    return encode_events(events, SCOPE)


@dataclass(slots=True)
class ForwardCounters:
    """What one detector link did (``GET /api/v1/forwarding``)."""

    url: str
    forwarded: int = 0
    """Events the detector accepted."""
    dropped: int = 0
    """Events dropped: queue full, or a request that failed every attempt."""
    failed_posts: int = 0
    requests: int = 0
    queued: int = 0
    last_error: str | None = None
    seconds_encoding: float = 0.0
    """Shard CPU spent encoding forwarded requests (per-tier cost)."""

    def to_json(self) -> dict[str, Any]:
        """API form."""
        return {
            "url": self.url,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "failed_posts": self.failed_posts,
            "requests": self.requests,
            "queued": self.queued,
            "last_error": self.last_error,
            "seconds_encoding": round(self.seconds_encoding, 6),
        }


@dataclass(slots=True)
class Forwarder:
    """One detector link: a bounded queue drained by one sender task, in order."""

    url: str
    on_recover: Any
    """Called with this forwarder after a post succeeded following a drop or a failed post
    (the detector may have lost events, or restarted): the shard resyncs it."""
    queue_size: int = DEFAULT_QUEUE_SIZE
    headers: Mapping[str, str] = field(default_factory=dict)
    counters: ForwardCounters = field(init=False)
    _queue: deque[Event] = field(init=False)
    _wake: asyncio.Event = field(init=False)
    _task: asyncio.Task[None] | None = None
    _session: aiohttp.ClientSession | None = None
    _stop: bool = False
    _suspect: bool = False

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.counters = ForwardCounters(self.url)
        self._queue = deque()
        self._wake = asyncio.Event()

    @property
    def queued(self) -> int:
        """Events waiting to be sent now."""
        return len(self._queue)

    def put(self, event: Event) -> None:
        """Queue one event (never blocks; full queue: drop and count)."""
        if len(self._queue) >= self.queue_size:
            self.counters.dropped += 1
            self._suspect = True
            return
        self._queue.append(event)
        self._wake.set()

    async def start(self) -> None:
        """Start the sender task (inside the agent's event loop)."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self._run(), name=f"lockscope-forward {self.url}")

    async def stop(self, flush_timeout: float = 1.0) -> None:
        """Give queued events ``flush_timeout`` seconds, then stop."""
        self._stop = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_timeout)
            except TimeoutError:
                await cancel_and_wait(self._task)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._stop:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(queue), BATCH)
            batch = [queue.popleft() for _ in range(n)]
            self.counters.queued = len(queue)
            started = time.process_time()
            body = encode_forwarded(batch)
            self.counters.seconds_encoding += time.process_time() - started
            if await self._post(body):
                self.counters.forwarded += n
                if self._suspect:
                    self._suspect = False
                    self.on_recover(self)
            else:
                self.counters.dropped += n

    async def _post(self, body: bytes) -> bool:
        assert self._session is not None
        delay = 0.1
        headers = {"Content-Type": "application/x-protobuf", **self.headers}
        for attempt in range(ATTEMPTS):
            self.counters.requests += 1
            try:
                async with self._session.post(
                    self.url + "/v1/logs", data=body, headers=headers
                ) as response:
                    await response.read()
                    if response.status < 300:
                        return True
                    error = f"HTTP {response.status}"
                    retryable = response.status in (429, 502, 503, 504)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                retryable = True
            self.counters.failed_posts += 1
            self._suspect = True
            if self.counters.last_error != error:
                log.warning("forwarding to %s failed: %s", self.url, error)
            self.counters.last_error = error
            if not retryable or attempt == ATTEMPTS - 1 or self._stop:
                return False
            await asyncio.sleep(delay)
            delay *= 2
        return False


class ShardForwarding:
    """The shard side: the filter plus one :class:`Forwarder` per detector URL.

    :meth:`tap` is the receiver's event tap (called for every event the state applied).
    """

    def __init__(
        self,
        urls: Iterable[str],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.filter = ForwardFilter()
        self.forwarders = [
            Forwarder(url, self._recovered, queue_size, dict(headers or {})) for url in urls
        ]
        if not self.forwarders:
            raise ValueError("a shard needs at least one detector URL to forward to")
        self.received = 0
        """Events the tap saw (what the shard applied)."""
        self.selected = 0
        """Events the filter chose to forward (each goes to every detector)."""
        self.resyncs = 0

    def tap(self, event: Event) -> None:
        """Forward ``event`` to every detector if the filter wants it."""
        self.received += 1
        if not self.filter.wants(event):
            return
        self.selected += 1
        for forwarder in self.forwarders:
            forwarder.put(event)

    def _recovered(self, forwarder: Forwarder) -> None:
        # Every process heals on its next heartbeat (the other detectors get one extra
        # empty heartbeat per process, harmless); this detector gets the pairs again.
        self.resyncs += 1
        for pair in self.filter.resync():
            forwarder.put(pair)

    def forget(self, instance: str) -> None:
        """Hook for ``AgentState.on_process_forgotten``."""
        self.filter.forget(instance)

    async def start(self) -> None:
        """Start every detector link (and keep records' raw attributes for forwarding)."""
        otlp_fastlogs.keep_raw(True)
        for forwarder in self.forwarders:
            await forwarder.start()

    async def stop(self) -> None:
        """Flush (briefly) and stop every link."""
        await asyncio.gather(*(f.stop() for f in self.forwarders))
        otlp_fastlogs.keep_raw(False)

    def status(self) -> dict[str, Any]:
        """``GET /api/v1/forwarding``: what the shard saw, chose and delivered."""
        for forwarder in self.forwarders:
            forwarder.counters.queued = forwarder.queued
        return {
            "role": "shard",
            "received": self.received,
            "selected": self.selected,
            "skipped_heartbeats": self.filter.skipped_heartbeats,
            "skipped_order_pairs": self.filter.skipped_pairs,
            "resyncs": self.resyncs,
            "detectors": [f.counters.to_json() for f in self.forwarders],
        }
