"""Lock metrics, aggregated in process: counts and bucketed durations by template.

This module only aggregates; :mod:`.metrics_export` sends the figures.  On the hot path a
measurement is an append of the duration to a list bound to the lock's template (and a
count, for an acquire that did not acquire); the reporter thread buckets the durations
(``bisect`` into fixed buckets) and counts the acquisitions among them before each
export, so the hot path never touches the OpenTelemetry SDK; the exporter reads
:meth:`LockStats.snapshot`.
The number of distinct templates is capped (principle 6): past ``max_templates`` new ones
are counted under ``{other}``.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["BOUNDS", "OTHER", "LockStats", "StatsSnapshot", "TemplateStats"]

BOUNDS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip
"""Histogram bucket upper bounds, seconds: in-process microseconds to lease minutes."""
OTHER = "{other}"
_SUM = len(BOUNDS) + 1

Key = tuple[str, str]
StatsSnapshot = tuple[
    int, dict[tuple[str, str, str], int], dict[Key, int], dict[Key, list[float]],
    dict[Key, list[float]],
]  # fmt: skip
"""(start unix ns, acquisitions by (template, system, outcome), lost by (template, system),
wait and hold histograms: bucket counts then the sum as the last item)."""


@dataclass(slots=True, eq=False)
class TemplateStats:
    """One lock template's live figures inside a :class:`LockStats` (see :meth:`LockStats.bind`)."""

    stats: LockStats
    """The LockStats these belong to (a reset or a fork makes a new one)."""
    outcomes: dict[str, int]
    """Acquire calls by outcome."""
    waits: list[float]
    """Wait histogram: a count per bucket of :data:`BOUNDS` (and one above), then the sum."""
    holds: list[float]
    """Hold histogram, the same shape."""
    wait_ns: list[int]
    """Waits (ns) not yet bucketed: the caller's thread appends, :meth:`LockStats.fold`
    buckets them on the reporter's (a ``bisect`` less per lock operation).  A wait that
    acquired is appended as is and counted as an acquisition by the fold; one of another
    outcome is counted in :attr:`outcomes` at once and appended as ``~ns`` (negative)."""
    hold_ns: list[int]
    """Holds (ns) not yet bucketed, the same way."""


class LockStats:
    """Cumulative since :meth:`reset` (the process start, or a fork)."""

    def __init__(self, max_templates: int = 1000) -> None:
        self.max_templates = max_templates
        self._folding = threading.Lock()  # one fold at a time (the reporter, an exit flush)
        self.reset()

    def reset(self) -> None:
        """Start from zero (a forked child)."""
        self.start_ns = time.time_ns()
        self.acquisitions: dict[tuple[str, str, str], int] = {}
        self.lost: dict[Key, int] = {}
        self.waits: dict[Key, list[float]] = {}
        self.holds: dict[Key, list[float]] = {}
        self.by_outcome: dict[Key, dict[str, int]] = {}
        """Acquisitions counted through :meth:`bind` (merged by :meth:`snapshot`)."""
        self.wait_ns: dict[Key, list[int]] = {}
        self.hold_ns: dict[Key, list[int]] = {}
        """Durations appended through :meth:`bind`, bucketed by :meth:`fold`."""
        self._templates: set[str] = set()

    def _key(self, template: str, system: str) -> Key:
        if template not in self._templates:
            if len(self._templates) >= self.max_templates:
                return (OTHER, system)
            self._templates.add(template)
        return (template, system)

    def fold_in_process(self, template: str, system: str, durations: list[int]) -> None:
        """Count an in-process lock's holds, from their durations in ns: each positive one
        is also an acquisition that did not wait; a negated one was counted when it
        waited (see ``InProcessLock._durations``)."""
        bound = self.bind(template, system)
        fast = 0
        holds = bound.holds
        for ns in durations:
            if ns >= 0:
                fast += 1
            else:
                ns = -ns
            seconds = ns / 1e9
            holds[bisect_left(BOUNDS, seconds)] += 1
            holds[_SUM] += seconds
        if fast:
            outcomes = bound.outcomes
            outcomes["acquired"] = outcomes.get("acquired", 0) + fast
            bound.waits[0] += fast

    def bind(self, template: str, system: str) -> TemplateStats:
        """Direct references to one (template, system)'s figures; callers cache it per lock
        (hot path: no look-ups)."""
        key = self._key(template, system)
        by_outcome = self.by_outcome.get(key)
        if by_outcome is None:
            by_outcome = self.by_outcome[key] = {}
        waits = self.waits.get(key)
        if waits is None:
            waits = self.waits[key] = [0] * (_SUM + 1)
        holds = self.holds.get(key)
        if holds is None:
            holds = self.holds[key] = [0] * (_SUM + 1)
        wait_ns = self.wait_ns.setdefault(key, [])
        hold_ns = self.hold_ns.setdefault(key, [])
        return TemplateStats(self, by_outcome, waits, holds, wait_ns, hold_ns)

    def fold(self) -> None:
        """Bucket the durations appended since the last fold (the reporter's thread, and
        before every :meth:`snapshot`).  Safe against the caller's threads appending
        meanwhile: only the items counted first are taken, each list operation atomic."""
        with self._folding:
            self._fold()

    def _fold(self) -> None:
        for pending, hists in ((self.wait_ns, self.waits), (self.hold_ns, self.holds)):
            waits = pending is self.wait_ns
            for key, durations in list(pending.items()):
                n = len(durations)
                if not n:
                    continue
                batch = durations[:n]
                del durations[:n]
                hist = hists[key]
                acquired = 0
                for ns in batch:
                    if ns < 0:  # a wait of another outcome, counted already (~ns)
                        ns = ~ns
                    else:
                        acquired += 1
                    seconds = ns / 1e9
                    hist[bisect_left(BOUNDS, seconds)] += 1
                    hist[_SUM] += seconds
                if waits and acquired:
                    # Only this (under self._folding) writes self.acquisitions.
                    counted = (key[0], key[1], "acquired")
                    self.acquisitions[counted] = self.acquisitions.get(counted, 0) + acquired

    def snapshot(self) -> StatsSnapshot:
        """Copies of the cumulative figures."""
        self.fold()
        acquisitions = dict(self.acquisitions)
        for (template, system), outcomes in list(self.by_outcome.items()):
            for outcome, count in list(outcomes.items()):
                key = (template, system, outcome)
                acquisitions[key] = acquisitions.get(key, 0) + count
        return (
            self.start_ns,
            acquisitions,
            dict(self.lost),
            {k: list(v) for k, v in list(self.waits.items())},
            {k: list(v) for k, v in list(self.holds.items())},
        )
