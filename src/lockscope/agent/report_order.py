"""Ordering a process's reports without trusting its clock.

A heartbeat is the full truth about its process: what it does not list is removed.  So
which heartbeat is the newest decides what a process is waiting for, and that must not
depend on the sender's wall clock alone: a clock stepped back (NTP, a VM restore) made
every later heartbeat look old, and a forged heartbeat dated an hour ahead made the real
ones look old on purpose; either hid a live deadlock.

The rules (:func:`heartbeat_is_newest`):

* A process that numbers its events (``lockscope.seq``, lockscope's shim) is ordered by
  that number only.  A heartbeat is the newest, and may remove what it does not list, when
  its number is above every heartbeat number seen from that process and not implausibly
  far above it: at most ``SEQ_SLACK`` plus ``SEQ_RATE`` per second since the last one
  arrived.  Timestamps play no part, so a clock step is harmless.
* A heartbeat without a number from a process that numbers its events, one with a number
  at or below the newest (reordered, or a second sender), or one implausibly far ahead is
  *assert-only*: what it lists is added or refreshed, nothing is removed, and it does not
  move the process's order.  Adding cannot hide anything.
* A process that never numbers its events (other senders) is ordered by timestamps, with
  every timestamp first limited to ``max_clock_ahead`` past the agent's receive time
  (:meth:`AgentState.apply <lockscope.agent.state.AgentState.apply>`), so a forged
  future date buys at most that much.

Reports in the name of a numbered process without a plausible number are refused whole
(:func:`not_from_this_process`), so they cannot keep it looking alive either.  What a
client holding the token can still do to another process (docs/reliability.md):
impersonate it (there is no per-process credential): add waits and holds to it, end a
wait or hold it names exactly (``since``), and, if it guesses the process's current
sequence number closely, send a heartbeat that removes the process's waits until its
next real heartbeat restores them.
"""

from __future__ import annotations

from typing import Final

from lockscope.agent.graph import Process

__all__ = ["SEQ_RATE", "SEQ_SLACK", "heartbeat_is_newest", "not_from_this_process", "seen"]

SEQ_SLACK: Final = 10_000
"""Sequence numbers a process may skip between two heartbeats whatever the time (events
numbered in batches that then failed to post)."""
SEQ_RATE: Final = 20_000
"""...plus this many per second since its last heartbeat arrived (a busy shim sends at
most a few thousand events a second; batches lost while the agent was away still count)."""
_NS: Final = 1_000_000_000


def _implausible(proc: Process, seq: int, now_ns: int) -> bool:
    elapsed = max(0, now_ns - proc.seq_seen_at_ns)
    return seq - proc.seq_seen > SEQ_SLACK + SEQ_RATE * elapsed // _NS


def seen(proc: Process, seq: object, now_ns: int) -> None:
    """Record an applied numbered report of ``proc`` (from then on it numbers its events)."""
    if seq.__class__ is int and isinstance(seq, int) and seq > proc.seq_seen:
        proc.seq_seen, proc.seq_seen_at_ns = seq, now_ns


def not_from_this_process(proc: Process, seq: object, now_ns: int) -> str | None:
    """Why a report in the name of ``proc``, a process that numbers its events, cannot be
    its own (None: it can).  Such a report is refused whole: it must not keep the process
    looking alive, nor bring a dead one back.  ``unsequenced``: no number;
    ``implausible_sequence``: too far ahead of the highest number seen; ``stale_report``:
    not newer than its newest heartbeat while the process is presumed dead (a late report
    of a live process, reordered on the way, is fine)."""
    if seq.__class__ is not int or not isinstance(seq, int) or seq <= 0:
        return "unsequenced"
    if _implausible(proc, seq, now_ns):
        return "implausible_sequence"
    if seq <= proc.seq_mark and not proc.alive:
        return "stale_report"
    return None


def heartbeat_is_newest(proc: Process, seq: int | None, t_ns: int, now_ns: int) -> str:
    """Decide how to apply a heartbeat of ``proc`` (and record it when it is the newest).

    Returns ``"newest"`` (apply it fully: it may remove what it does not list) or the
    reason it is assert-only: ``"stale_heartbeat"`` (not newer than the newest),
    ``"unsequenced"`` (no number from a process that numbers its events) or
    ``"implausible_sequence"`` (too far ahead).  ``t_ns`` is the heartbeat's (bounded)
    timestamp, used only for processes that do not number their events.
    """
    if seq is not None and seq > 0:
        if proc.seq_seen and _implausible(proc, seq, now_ns):
            return "implausible_sequence"
        if seq <= proc.seq_mark:
            return "stale_heartbeat"
        proc.seq_mark, proc.seq_mark_at_ns = seq, now_ns
        seen(proc, seq, now_ns)
        return "newest"
    if proc.seq_seen:
        return "unsequenced"
    if t_ns < proc.last_heartbeat_ns:
        return "stale_heartbeat"
    return "newest"
