"""The violation detector (lockscope.agent.detect_violation): overlapping holds and fencing
tokens going backwards."""

from __future__ import annotations

from agent_helpers import S, World
from lockscope import events as ev


# -- violations -----------------------------------------------------------------------------------
def test_overlapping_holds_after_pause_past_lease() -> None:
    # 1 holds A with a 1 s lease, is SIGSTOPped; 2 takes A after the lease; 1 resumes and
    # still reports A in its heartbeat: both believed they held A at once.
    w = World()
    since1 = w.now
    w.heartbeat(1, holds=[])
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + S, ev.ATTR_LOCK_TOKEN: 5})
    w.advance(2)
    w.hold("2.1", "A", since=w.now - S // 5, **{ev.ATTR_LOCK_TOKEN: 6})  # reported after 0.2 s
    assert w.active("violations") == []
    w.advance(0.5)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since1, **{ev.ATTR_LOCK_TOKEN: 5})])
    [v] = w.active("violations")
    assert v["reason"] == "overlapping_holds"
    assert v["lock"] == "A"
    assert {v["pid"], v["other"]["pid"]} == {1001, 1002}
    assert w.state.violations.counters.violations == {"A": 1}


def test_sequential_holds_with_lost_release_are_no_violation() -> None:
    w = World()
    w.hold("1.1", "A")  # its hold.end is lost
    w.advance(1)
    w.hold("2.1", "A")
    w.advance(1)
    w.heartbeat(2, holds=[w.entry("2.1", "A", w.hold_since("2.1", "A") or 0)])
    assert w.active("violations") == []


def test_readers_overlapping_is_no_violation_but_reader_and_writer_is() -> None:
    w = World()
    w.hold("1.1", "RW", mode="read")
    w.hold("2.1", "RW", mode="read")
    w.advance(1)
    w.heartbeat(1, holds=[w.entry("1.1", "RW", w.hold_since("1.1", "RW") or 0, mode="read")])
    assert w.active("violations") == []
    w.hold("3.1", "RW", mode="write", since=w.now - S // 5)
    w.advance(1)
    w.heartbeat(1, holds=[w.entry("1.1", "RW", w.hold_since("1.1", "RW") or 0, mode="read")])
    assert len(w.active("violations")) == 1


def test_fencing_token_going_backwards() -> None:
    w = World()
    w.hold("1.1", "A", **{ev.ATTR_LOCK_TOKEN: 10})
    w.release("1.1", "A")
    w.advance(1)
    w.hold("2.1", "A", **{ev.ATTR_LOCK_TOKEN: 11})
    w.release("2.1", "A")
    assert w.active("violations") == []
    w.advance(1)
    w.hold("3.1", "A", **{ev.ATTR_LOCK_TOKEN: 3})  # e.g. the Redis server lost its counter
    [v] = w.active("violations")
    assert v["reason"] == "fencing_token_backwards"
    assert (v["token"], v["other"]["token"]) == (3, 11)


def test_fencing_tokens_delivered_out_of_order_are_fine() -> None:
    w = World()
    t0 = w.now
    w.advance(1)
    w.hold("2.1", "A", since=w.now, **{ev.ATTR_LOCK_TOKEN: 11})
    w.hold("1.1", "A", since=t0, **{ev.ATTR_LOCK_TOKEN: 10})  # older hold, arrives late
    assert [v for v in w.active("violations") if v["reason"] == "fencing_token_backwards"] == []
