"""The order detector (lockscope.agent.detect_order): lock-order inversions in the merged
order graph."""

from __future__ import annotations

from typing import Any

from agent_helpers import World
from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.web_api import (
    api_order_inversions,
)


# -- lock-order inversions ------------------------------------------------------------------------
def pair(
    w: World, process: int, first: str, second: str, fm: str = "exclusive", sm: str = "exclusive"
) -> None:
    attrs: dict[str, Any] = {
        ev.ATTR_ORDER_FIRST: first,
        ev.ATTR_ORDER_SECOND: second,
        ev.ATTR_ORDER_FIRST_MODE: fm,
        ev.ATTR_ORDER_SECOND_MODE: sm,
        ev.ATTR_ORDER_SYSTEM_FIRST: "redis",
        ev.ATTR_ORDER_SYSTEM_SECOND: "redis",
    }
    w.state.apply(w.event(ev.EVENT_ORDER_PAIR, f"{process}.1", attrs))


def test_ab_ba_seen_at_different_times_is_an_inversion() -> None:
    w = World()
    pair(w, 1, "account:{id}", "ledger")
    w.advance(3600)
    assert w.active("order_inversions") == []
    pair(w, 2, "ledger", "account:{id}")
    [inv] = w.active("order_inversions")
    assert sorted(inv["locks"]) == ["account:{id}", "ledger"]
    assert inv["reason"] == "order_inversion"
    assert inv["pid"] == 1002
    assert {p["pid"] for p in inv["pairs"]} == {1001, 1002}
    pair(w, 3, "ledger", "account:{id}")  # the same pair again: no new finding
    assert len(api_order_inversions(w.state)["order_inversions"]) == 1
    assert w.deadlocks() == []  # potential, not actual


def test_three_lock_order_cycle() -> None:
    w = World()
    pair(w, 1, "a", "b")
    pair(w, 2, "b", "c")
    assert w.active("order_inversions") == []
    pair(w, 3, "c", "a")
    [inv] = w.active("order_inversions")
    assert sorted(inv["locks"]) == ["a", "b", "c"]


def test_read_read_orderings_are_not_inversions() -> None:
    w = World()
    pair(w, 1, "a", "b", "read", "read")
    pair(w, 2, "b", "a", "read", "read")
    assert w.active("order_inversions") == []
    # read-held a then write b, vs read-held b then read a: b conflicts, a does not
    pair(w, 3, "a", "b", "read", "write")
    pair(w, 4, "b", "a", "read", "read")
    assert w.active("order_inversions") == []


def test_mixed_modes_that_conflict_at_every_lock_are_an_inversion() -> None:
    w = World()
    pair(w, 1, "a", "b", "read", "read")
    pair(w, 2, "b", "a", "write", "write")
    assert len(w.active("order_inversions")) == 1


def test_same_template_pair_ignored_unless_configured() -> None:
    w = World()
    pair(w, 1, "order:{id}", "order:{id}")
    assert w.active("order_inversions") == []
    w2 = World(AgentConfig(order_self_pairs=True))
    pair(w2, 1, "order:{id}", "order:{id}")
    assert len(w2.active("order_inversions")) == 1
