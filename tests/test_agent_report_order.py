"""Issue 14 item 1: no sender's clock can hide a live process.

Each test is the attack as reported (a clock stepped back after running ahead, a forged
heartbeat dated an hour ahead listing nothing), on a real AgentState, asserting that the
live waits and holds stay and the deadlock is found and stays found.  The same attacks
against real instrumented processes: tests/test_reliability_hostile.py."""

from __future__ import annotations

from typing import Any

from agent_helpers import S, World, proc
from lockscope import events as ev
from lockscope.agent.model import Event, RejectedEvent


class Sender:
    """One process of the fleet as lockscope's shim reports it: every event numbered
    (``lockscope.seq``), timestamps from its own (possibly wrong) clock."""

    def __init__(self, w: World, n: int, clock_offset: float = 0.0, numbered: bool = True):
        self.w = w
        self.n = n
        self.offset = int(clock_offset * S)
        self.numbered = numbered
        self.seq = 0
        self.holds: dict[str, int] = {}
        self.wait: tuple[str, int] | None = None

    def clock(self) -> int:
        return self.w.now + self.offset

    def _send(self, name: str, attrs: dict[str, Any]) -> None:
        self.seq += 1
        if self.numbered:
            attrs[ev.ATTR_SEQUENCE] = self.seq
        self.w.state.apply(Event(name, self.clock(), proc(self.n), attrs))

    def _lock(self, lock: str, since: int) -> dict[str, Any]:
        return {
            ev.ATTR_ACTOR_ID: "thread:1",
            ev.ATTR_SINCE: since,
            ev.ATTR_LOCK_SYSTEM: "redis",
            ev.ATTR_LOCK_NAMESPACE: "ns",
            ev.ATTR_LOCK_NAME: lock,
        }

    def hold(self, lock: str) -> None:
        since = self.clock()
        self.holds[lock] = since
        self._send(ev.EVENT_HOLD_START, self._lock(lock, since))

    def block_on(self, lock: str) -> None:
        since = self.clock()
        self.wait = (lock, since)
        self._send(ev.EVENT_WAIT_START, self._lock(lock, since))

    def heartbeat(self) -> None:
        holds = [self._lock(lock, since) for lock, since in self.holds.items()]
        waits = [self._lock(*self.wait)] if self.wait else []
        attrs = {ev.ATTR_HOLDS: holds, ev.ATTR_WAITS: waits, ev.ATTR_HEARTBEAT_INTERVAL: 1.0}
        self._send(ev.EVENT_HEARTBEAT, attrs)


def forged_heartbeat(w: World, n: int, ahead: float = 3600.0, **extra: Any) -> str | None:
    """What the attacker sent: the victim's instance id, dated ``ahead`` s in the future,
    listing nothing.  Returns the reason it was refused (None: applied)."""
    attrs = {ev.ATTR_HOLDS: [], ev.ATTR_WAITS: [], ev.ATTR_HEARTBEAT_INTERVAL: 1.0, **extra}
    try:
        w.state.apply(Event(ev.EVENT_HEARTBEAT, w.now + int(ahead * S), proc(n), attrs))
    except RejectedEvent as exc:
        return exc.reason
    return None


def deadlocked(w: World) -> bool:
    return w.keys("1.1", "2.1") in w.deadlocks()


def tracked(w: World, n: int) -> tuple[int, int]:
    """(holds, waits) the agent has for process ``n``."""
    holds = waits = 0
    for a in w.state.actors():
        if a.process.info.instance == f"inst-{n}":
            holds += len(a.holds)
            waits += a.wait is not None
    return holds, waits


def start_deadlock(w: World, a: Sender, b: Sender) -> None:
    a.hold("A")
    b.hold("B")
    a.heartbeat()
    b.heartbeat()
    w.advance(0.3)
    a.block_on("B")
    b.block_on("A")


def test_numbered_heartbeats_dated_backwards_still_count() -> None:
    """A process whose clock ran 120 s ahead and was then stepped back: its later
    heartbeats are older by date than the one before (the agent used to ignore them all as
    stale, for as long as the clock had been ahead).  By number they are newer: they
    heal a release whose hold.end was lost, and report what is new."""
    w = World()
    a = Sender(w, 1, clock_offset=120.0)
    a.hold("A")
    a.heartbeat()
    w.advance(0.5)
    a.offset = 0  # NTP steps the clock back
    del a.holds["A"]  # released; the hold.end never arrived
    a.heartbeat()
    assert tracked(w, 1) == (0, 0)
    a.hold("C")
    a.heartbeat()
    assert tracked(w, 1) == (1, 0)
    assert w.state.counters.events_ignored.get("stale_heartbeat", 0) == 0


def test_forged_future_heartbeat_does_not_resolve_a_live_deadlock() -> None:
    """The report: two processes in a found deadlock, then one heartbeat per victim with its
    service.instance.id, dated +1 h, listing nothing: the deadlock resolved (wait_ended)
    and the agent showed 0 holds and 0 waits while both were alive and stuck."""
    w = World()
    a, b = Sender(w, 1), Sender(w, 2)
    start_deadlock(w, a, b)
    w.advance(0.5)
    a.heartbeat()
    b.heartbeat()
    assert deadlocked(w)
    for n in (1, 2):
        assert forged_heartbeat(w, n) == "unsequenced"
        assert forged_heartbeat(w, n, **{ev.ATTR_SEQUENCE: 1}) is None  # stale: adds nothing
        assert forged_heartbeat(w, n, **{ev.ATTR_SEQUENCE: 2**62}) == "implausible_sequence"
    assert deadlocked(w)
    assert tracked(w, 1) == (1, 1)
    assert tracked(w, 2) == (1, 1)
    # ...and the real heartbeats that follow are applied as before
    w.advance(1.0)
    a.heartbeat()
    b.heartbeat()
    assert deadlocked(w)
    assert w.state.counters.events_ignored.get("stale_heartbeat", 0) >= 2


def test_forged_reports_do_not_keep_a_dead_process_alive() -> None:
    """A forger sending heartbeats in a dead process's name (no number, a stale or an
    absurd one) neither keeps it looking alive nor brings it back: its deadlock resolves
    and its holds become orphaned as for any dead process."""
    w = World()
    a, b = Sender(w, 1), Sender(w, 2)
    start_deadlock(w, a, b)
    w.advance(0.5)
    a.heartbeat()
    b.heartbeat()
    assert deadlocked(w)
    for _ in range(8):  # process 1 is dead: only the forger speaks for it
        w.advance(0.5)
        b.heartbeat()
        forged_heartbeat(w, 1)
        forged_heartbeat(w, 1, **{ev.ATTR_SEQUENCE: 1})
        forged_heartbeat(w, 1, **{ev.ATTR_SEQUENCE: 2**62})
    assert not deadlocked(w)
    assert [f["reason"] for f in w.active("stale_holders")] == ["orphaned"]


def test_a_real_heartbeat_right_after_a_forged_one_restores_an_unnumbered_process() -> None:
    """A sender that does not number its events is ordered by timestamps, each limited to
    ``max_clock_ahead`` past the receive time: a forged heartbeat dated +1 h empties it,
    but its next real heartbeat after that bound brings everything back."""
    w = World()
    a, b = Sender(w, 1, numbered=False), Sender(w, 2, numbered=False)
    start_deadlock(w, a, b)
    w.advance(0.5)
    a.heartbeat()
    b.heartbeat()
    assert deadlocked(w)
    forged_heartbeat(w, 1)
    ahead = w.state.config.max_clock_ahead
    w.advance(ahead + 0.5)
    a.heartbeat()
    b.heartbeat()
    assert tracked(w, 1) == (1, 1)
    assert deadlocked(w)


def test_numbers_order_reordered_heartbeats() -> None:
    """A heartbeat delivered after a newer one (reordered) cannot remove what the newer
    one lists, even with a later timestamp."""
    w = World()
    a = Sender(w, 1)
    a.hold("A")
    a.heartbeat()  # seq 2: lists A
    old_attrs = {ev.ATTR_HOLDS: [], ev.ATTR_WAITS: [], ev.ATTR_SEQUENCE: 1}
    w.state.apply(Event(ev.EVENT_HEARTBEAT, w.now + S, proc(1), old_attrs))
    assert tracked(w, 1) == (1, 0)


def test_a_forgery_before_the_first_numbered_heartbeat_is_refused_too() -> None:
    """A process numbers its events from its first report on, before its first heartbeat:
    a forged heartbeat then (no number, an absurd one) must not empty it nor take over
    its order."""
    w = World()
    a = Sender(w, 1)
    a.hold("A")  # seq 1, no heartbeat yet
    assert forged_heartbeat(w, 1) == "unsequenced"
    assert forged_heartbeat(w, 1, **{ev.ATTR_SEQUENCE: 2**62}) == "implausible_sequence"
    assert tracked(w, 1) == (1, 0)
    a.heartbeat()  # seq 2: still this process's newest
    a.hold("B")
    a.heartbeat()
    assert tracked(w, 1) == (2, 0)
