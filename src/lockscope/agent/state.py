"""The agent's state: the store with the standard detectors attached.

:class:`AgentState` is a :class:`~lockscope.agent.store.LockStore` (the facts and their
healing) that owns the :class:`~lockscope.agent.findings.FindingStore` and attaches the
four standard detectors, each with its own policy:

* ``deadlocks``  - :class:`~lockscope.agent.detect_deadlock.DeadlockDetector`
* ``stale``      - :class:`~lockscope.agent.detect_stale.StaleHolderDetector`
* ``violations`` - :class:`~lockscope.agent.detect_violation.ViolationDetector`
* ``order``      - :class:`~lockscope.agent.detect_order.OrderDetector`

It is pure (no I/O, no threads): the receiver calls :meth:`apply` for each decoded event and
:meth:`tick` about every 100 ms; the HTTP side reads the store, the findings and the
counters (the JSON documents are :mod:`lockscope.agent.web_api`'s).  Call it from one
thread (the agent's event loop).  A further detector is attached with :meth:`attach`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.detect_deadlock import DeadlockDetector
from lockscope.agent.detect_order import OrderDetector
from lockscope.agent.detect_stale import REASONS, StaleHolderDetector
from lockscope.agent.detect_violation import ViolationDetector
from lockscope.agent.findings import STALE_HOLDER, Finding, FindingStore
from lockscope.agent.graph import to_networkx
from lockscope.agent.model import Event, ProcessInfo, RejectedEvent
from lockscope.agent.report_order import not_from_this_process, seen
from lockscope.agent.store import NS, LockStore, StoreCounters

__all__ = ["AgentState", "RejectedEvent", "StateCounters"]

StateCounters = StoreCounters
"""Deprecated name of :class:`~lockscope.agent.store.StoreCounters`."""


class AgentState(LockStore):
    """The store, the findings and the standard detectors."""

    def __init__(
        self, config: AgentConfig | None = None, clock: Callable[[], int] = time.time_ns
    ) -> None:
        config = config or AgentConfig()
        super().__init__(config, clock)
        self._max_ahead_ns = int(config.max_clock_ahead * NS)
        limits = config.limits
        self.finding_store = findings = FindingStore(limits.max_findings)
        self.deadlocks = DeadlockDetector(
            findings,
            budget=limits.max_explore,
            confirm_after_ns=int(config.confirm_after * NS),
            evidence_timeout_ns=int(config.evidence_timeout * NS),
        )
        self.stale = StaleHolderDetector(findings, config)
        self.violations = ViolationDetector(findings, config)
        self.order = OrderDetector(findings, limits.max_order_pairs, config.order_self_pairs)
        for detector in (self.deadlocks, self.stale, self.violations, self.order):
            self.attach(detector)

    def apply(self, event: Event, now_ns: int | None = None) -> None:
        """:meth:`LockStore.apply`; an unnumbered event dated more than ``max_clock_ahead``
        after it arrived counts as dated that far ahead (a fast or forged clock cannot make
        the process's later reports look old), and a report in the name of a process that
        numbers its events but carrying no plausible number is refused (it would keep a
        dead process looking alive): :mod:`lockscope.agent.report_order`."""
        now = self._clock() if now_ns is None else now_ns
        info = event.process
        proc = (
            self.procs.get(info.instance)
            if info.__class__ is ProcessInfo or isinstance(info, ProcessInfo)
            else None
        )
        late: tuple[int, int] | None = None
        seq = event.attrs.get(ev.ATTR_SEQUENCE)
        if proc is not None and proc.seq_seen:
            refused = not_from_this_process(proc, seq, now)
            if refused:
                raise RejectedEvent(f"report without a plausible {ev.ATTR_SEQUENCE}", refused)
            if isinstance(seq, int) and seq <= proc.seq_mark:
                # Older than the newest heartbeat (reordered, or replayed by someone else):
                # applied, but it says nothing about whether the process is alive now.
                late = (proc.last_seen_ns, proc.deadline_ns)
        t = event.time_ns
        # Numbered reports are ordered by their numbers (report_order), not their dates.
        if (
            t.__class__ is int
            and t > now + self._max_ahead_ns
            and ev.ATTR_SEQUENCE not in event.attrs
        ):
            self.counters.future_timestamps += 1
            event = Event(event.name, now + self._max_ahead_ns, event.process, event.attrs)
        try:
            super().apply(event, now)
        finally:
            if late is not None and proc is not None:
                proc.last_seen_ns, proc.deadline_ns = late
        if seq is not None:
            created = proc or self.procs.get(info.instance)
            if created is not None:
                seen(created, seq, now)

    def subscribe_findings(self, callback: Callable[[Finding], None]) -> Callable[[], None]:
        """Call ``callback(finding)`` whenever a finding is added or resolved (synchronously,
        from :meth:`apply`/:meth:`tick`); returns an unsubscribe function."""
        return self.finding_store.subscribe(callback)

    def findings(self, active_only: bool = False) -> Iterator[Finding]:
        """Every kept finding (for the Alertmanager exporter and ``lockscope status``)."""
        for f in self.finding_store:
            if f.active or not active_only:
                yield f

    def active_counts(self) -> dict[str, int]:
        """Active findings per kind (``lockscope_deadlocks_active``,
        ``lockscope_lock_order_inversions``...)."""
        return dict(self.finding_store.active_count)

    def stale_holders_by_reason(self) -> dict[str, int]:
        """Active stale-holder findings per reason (``lockscope_stale_holders{reason}``)."""
        out = dict.fromkeys(REASONS, 0)
        for f in self.finding_store.of_kind(STALE_HOLDER):
            if f.active and f.reason is not None:
                out[f.reason] = out.get(f.reason, 0) + 1
        return out

    def to_networkx(self) -> Any:
        """The live graph as a ``networkx.MultiDiGraph`` (see :func:`graph.to_networkx`)."""
        return to_networkx(list(self.actors()), list(self.locks()))
