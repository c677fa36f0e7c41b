"""Cumulative lock metrics, aggregated in process: counts and bucketed durations by template.

A measurement is a dict look-up and two list increments (``bisect`` into fixed buckets),
so the hot path never touches the OpenTelemetry SDK; exporters read :meth:`snapshot`.
The number of distinct templates is capped (principle 6): past ``max_templates`` new ones
are counted under ``{other}``.
"""

from __future__ import annotations

import time
from bisect import bisect_left

__all__ = ["BOUNDS", "OTHER", "LockStats", "StatsSnapshot"]

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


class LockStats:
    """Cumulative since :meth:`reset` (the process start, or a fork)."""

    def __init__(self, max_templates: int = 1000) -> None:
        self.max_templates = max_templates
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
        self._templates: set[str] = set()

    def _key(self, template: str, system: str) -> Key:
        if template not in self._templates:
            if len(self._templates) >= self.max_templates:
                return (OTHER, system)
            self._templates.add(template)
        return (template, system)

    def acquired(self, template: str, system: str, outcome: str, waited: float) -> None:
        """One acquire call ended (``waited`` seconds)."""
        key = self._key(template, system)
        counts = self.acquisitions
        akey = (key[0], key[1], outcome)
        counts[akey] = counts.get(akey, 0) + 1
        hist = self.waits.get(key)
        if hist is None:
            hist = self.waits[key] = [0] * (_SUM + 1)
        hist[bisect_left(BOUNDS, waited)] += 1
        hist[_SUM] += waited

    def held(self, template: str, system: str, seconds: float, lost: bool = False) -> None:
        """One hold ended after ``seconds``."""
        key = self._key(template, system)
        hist = self.holds.get(key)
        if hist is None:
            hist = self.holds[key] = [0] * (_SUM + 1)
        hist[bisect_left(BOUNDS, seconds)] += 1
        hist[_SUM] += seconds
        if lost:
            self.lost[key] = self.lost.get(key, 0) + 1

    def bulk(self, template: str, system: str, outcome: str, count: int, waits_zero: int) -> None:
        """``count`` acquisitions at once, ``waits_zero`` of them without waiting."""
        key = self._key(template, system)
        akey = (key[0], key[1], outcome)
        self.acquisitions[akey] = self.acquisitions.get(akey, 0) + count
        hist = self.waits.get(key)
        if hist is None:
            hist = self.waits[key] = [0] * (_SUM + 1)
        hist[0] += waits_zero

    def bulk_holds(
        self, template: str, system: str, hist: list[float], before: list[float] | None
    ) -> None:
        """Add the growth of a lock's own hold histogram (``hist`` since ``before``)."""
        key = self._key(template, system)
        mine = self.holds.get(key)
        if mine is None:
            mine = self.holds[key] = [0] * (_SUM + 1)
        for i, value in enumerate(hist):
            mine[i] += value - (before[i] if before is not None else 0)

    def bind(self, template: str, system: str) -> tuple[LockStats, dict[str, int], list[float],
                                                       list[float]]:  # fmt: skip
        """Direct references for one (template, system): (self, acquisitions by outcome,
        wait histogram, hold histogram).  Callers cache it per lock (hot path: no look-ups)."""
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
        return self, by_outcome, waits, holds

    def snapshot(self) -> StatsSnapshot:
        """Copies of the cumulative figures."""
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
