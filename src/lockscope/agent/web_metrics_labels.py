"""Bounded label values and monotonic totals for the Prometheus exporter
(:mod:`lockscope.agent.web_metrics`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from lockscope.agent.store import OTHER_LABEL as STATE_OTHER_LABEL

__all__ = ["OTHER_LOCK", "DroppedTotals", "LabelCap"]

OTHER_LOCK: Final = "__other__"
"""The ``lock`` label value that collects every template beyond the cap."""


class LabelCap:
    """Admits at most ``limit`` distinct label values, first come first served, for good.

    Sticky on purpose: a value that got its own series keeps it, a value that was folded
    stays folded, so the series set only grows and summed counters stay monotonic.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()
        self._folded: set[str] = set()
        self._max_folded_tracked = max(limit, 1) * 10

    def __call__(self, value: str) -> str:
        """The label value to expose for ``value``."""
        if value in self._kept:
            return value
        if value in (STATE_OTHER_LABEL, OTHER_LOCK):
            return OTHER_LOCK
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        # Remembered only to count them; bounded so a label flood cannot grow memory.
        if len(self._folded) < self._max_folded_tracked:
            self._folded.add(value)
        return OTHER_LOCK

    @property
    def kept(self) -> int:
        """Distinct values with their own series."""
        return len(self._kept)

    @property
    def folded(self) -> int:
        """Distinct values folded into ``__other__`` (counted up to 10x the limit)."""
        return len(self._folded)


@dataclass(slots=True)
class DroppedTotals:
    """Events the shims dropped, summed over processes without ever going backwards.

    Each heartbeat carries its process's running count; a process that is forgotten (or
    restarts under a new instance id) must not take its count away from the total.
    """

    last: dict[str, int] = field(default_factory=dict)
    retired: int = 0

    def update(self, current: Mapping[str, int]) -> int:
        for instance, value in list(self.last.items()):
            if instance not in current:
                self.retired += value
                del self.last[instance]
        for instance, value in current.items():
            previous = self.last.get(instance, 0)
            if value < previous:  # the shim's counter restarted: keep what it had
                self.retired += previous
            self.last[instance] = value
        return self.retired + sum(self.last.values())
