"""The store's records: its counters, tombstones of ended holds and waits, and its timers
(process liveness deadlines, lease ends, forgetting)."""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lockscope import events as ev
from lockscope.agent.graph import READ, SEMAPHORE, Hold
from lockscope.agent.model import Code, attr_code

__all__ = [
    "StoreCounters",
    "Timers",
    "TombstoneKey",
    "Tombstones",
    "code_of",
    "conflicting",
    "inc",
]

TombstoneKey = tuple[str, str, str, int]
"""``(kind, actor key, lock key, since)``; kind ``h`` (hold) or ``w`` (wait)."""


@dataclass(slots=True)
class StoreCounters:
    """Monotonic counters for the metrics exporter (dicts are label value -> count)."""

    events_applied: dict[str, int] = field(default_factory=dict)
    """By event name."""
    events_ignored: dict[str, int] = field(default_factory=dict)
    """Valid events that changed nothing, by why: ``tombstoned`` (late start of an ended
    hold/wait), ``older_than_heartbeat``, ``superseded`` (older than what is known),
    ``stale_heartbeat`` (an older snapshot than the newest applied); heartbeats that could
    only add (:mod:`lockscope.agent.report_order`): ``stale_heartbeat`` for a numbered
    process too, ``unsequenced`` (no number from a process that numbers its events),
    ``implausible_sequence`` (a number too far ahead)."""
    heartbeat_entries_rejected: int = 0
    healed: dict[str, int] = field(default_factory=dict)
    """Holds/waits removed because a heartbeat no longer listed them (lost end events)."""
    limits_hit: dict[str, int] = field(default_factory=dict)
    """By limit name (``max_locks``, ``max_holds``, ...)."""
    processes_presumed_dead: int = 0
    future_timestamps: int = 0
    """Events dated more than ``max_clock_ahead`` past their arrival (counted as that)."""
    processes_evicted: int = 0
    """Processes reporting nothing dropped to admit a new one at ``max_processes``."""
    processes_exited: int = 0
    """Processes whose last snapshot said they exit (gone, not dead)."""


def inc(counter: dict[str, int], key: str, n: int = 1) -> None:
    """Add ``n`` to ``counter[key]``."""
    counter[key] = counter.get(key, 0) + n


_codes: dict[tuple[str, int, str], Code | None] = {}
_CODES = 4096
"""Code locations remembered: a fleet's lock call sites are few."""


def code_of(attrs: Mapping[str, Any]) -> Code | None:
    """:func:`~lockscope.agent.model.attr_code`, remembered for the usual shape (a string
    file and function, an integer line): each new hold or wait reads one."""
    get = attrs.get
    key = (get(ev.ATTR_CODE_FILE), get(ev.ATTR_CODE_LINE), get(ev.ATTR_CODE_FUNCTION))
    if key[0].__class__ is not str or key[1].__class__ is not int or key[2].__class__ is not str:
        return attr_code(attrs)
    try:
        return _codes[key]  # type: ignore[index]  # the types were just checked
    except KeyError:
        code = _codes[key] = attr_code(attrs)  # type: ignore[index]
        if len(_codes) > _CODES:
            _codes.clear()
        return code


def conflicting(a: Hold, b: Hold) -> bool:
    """Whether two holds of one lock by different actors must never overlap."""
    if a.mode == SEMAPHORE or b.mode == SEMAPHORE:
        return False
    return not (a.mode == READ and b.mode == READ)


class Tombstones:
    """Ended holds and waits, remembered until they expire (oldest first when full)."""

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._expiry: OrderedDict[TombstoneKey, int] = OrderedDict()
        self._healed: dict[TombstoneKey, int] = {}
        """Tombstones left by a heartbeat that did not list the hold or wait -> that
        heartbeat's time: a newer heartbeat listing it again brings it back."""

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, key: TombstoneKey, expires_ns: int) -> bool:
        """Remember ``key`` until ``expires_ns``; False if the oldest had to make room."""
        room = True
        if len(self._expiry) >= self._max:
            oldest, _expiry = self._expiry.popitem(last=False)
            self._healed.pop(oldest, None)
            room = False
        self._expiry[key] = expires_ns
        self._healed.pop(key, None)
        return room

    def healed(self, key: TombstoneKey, at_ns: int) -> None:
        """The tombstone ``key`` was left by a snapshot taken at ``at_ns``."""
        self._healed[key] = at_ns

    def covers(self, key: TombstoneKey, asserted_ns: int) -> bool:
        """Whether the hold or wait ended (or a snapshot dropped it) and evidence asserted
        at ``asserted_ns`` is not newer than that.

        A heartbeat lists only what was already reported when it was taken; delivered
        after the report of a new wait or hold (reordered), it drops that entry.  Evidence
        asserted after that heartbeat (the next snapshot listing it) brings it back:
        otherwise a reordered pair would hide a live wait, and a deadlock, for
        ``tombstone_ttl``.
        """
        if key not in self._expiry:
            return False
        healed_at = self._healed.get(key)
        if healed_at is not None and asserted_ns > healed_at:
            del self._expiry[key]
            del self._healed[key]
            return False
        return True

    def expire(self, now_ns: int) -> None:
        """Forget the tombstones whose time has come."""
        tombs = self._expiry
        while tombs:
            key, expiry = next(iter(tombs.items()))
            if expiry > now_ns:
                break
            tombs.popitem(last=False)
            self._healed.pop(key, None)

    def check_invariants(self) -> None:
        """Every healed mark has its tombstone; the size is within the limit."""
        assert set(self._healed) <= set(self._expiry), "healed mark without a tombstone"
        assert len(self._expiry) <= self._max, "tombstones over limit"


class Timers:
    """Two heaps: liveness checks by process instance, and other timers by kind."""

    def __init__(self) -> None:
        self._liveness: list[tuple[int, int, str]] = []
        self._timers: list[tuple[int, int, str, Any]] = []
        self._seq = itertools.count()

    def check_liveness(self, when_ns: int, instance: str) -> None:
        """Check process ``instance``'s liveness at ``when_ns``."""
        heapq.heappush(self._liveness, (when_ns, next(self._seq), instance))

    def due_liveness(self, now_ns: int) -> Iterator[tuple[int, str]]:
        """Pop the due liveness checks: ``(scheduled time, instance)``."""
        heap = self._liveness
        while heap and heap[0][0] <= now_ns:
            wake, _, instance = heapq.heappop(heap)
            yield wake, instance

    def liveness_scheduled(self) -> set[tuple[int, str]]:
        """Every pending ``(time, instance)`` liveness check (for invariant checks)."""
        return {(wake, instance) for wake, _, instance in self._liveness}

    def add(self, when_ns: int, kind: str, payload: Any) -> None:
        """Fire timer ``(kind, payload)`` at ``when_ns``."""
        heapq.heappush(self._timers, (when_ns, next(self._seq), kind, payload))

    def due(self, now_ns: int) -> Iterator[tuple[str, Any]]:
        """Pop the due timers: ``(kind, payload)``."""
        heap = self._timers
        while heap and heap[0][0] <= now_ns:
            _, _, kind, payload = heapq.heappop(heap)
            yield kind, payload
