"""The stale-holder detector (lockscope.agent.detect_stale): max_hold, orphaned, lease
expired, lost locks, and processes that exit (gone, not dead; exited_holding)."""

from __future__ import annotations

from agent_helpers import S, World, proc
from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.web_api import (
    api_processes,
    api_stale_holders,
)


# -- stale holders ------------------------------------------------------------------------------
def test_max_hold_reported_when_holder_still_asserts_it() -> None:
    w = World(AgentConfig(max_hold=10, max_hold_overrides={"report:*": 0, "fast:{id}": 2}))
    since = w.now
    w.hold("1.1", "slow")
    w.hold("1.2", "report:1")
    w.hold("1.3", "fast:7", **{ev.ATTR_LOCK_TEMPLATE: "fast:{id}"})
    w.advance(3)
    w.heartbeat(
        1,
        holds=[
            w.entry("1.1", "slow", since),
            w.entry("1.2", "report:1", since),
            w.entry("1.3", "fast:7", since, **{ev.ATTR_LOCK_TEMPLATE: "fast:{id}"}),
        ],
    )
    assert [s["lock"] for s in w.active("stale_holders")] == ["fast:7"]
    w.advance(8)
    w.heartbeat(
        1,
        holds=[
            w.entry("1.1", "slow", since),
            w.entry("1.2", "report:1", since),
            w.entry("1.3", "fast:7", since, **{ev.ATTR_LOCK_TEMPLATE: "fast:{id}"}),
        ],
    )
    stale = w.active("stale_holders")
    assert sorted(s["lock"] for s in stale) == ["fast:7", "slow"]
    assert {s["reason"] for s in stale} == {"max_hold"}
    # released: resolved
    w.release("1.1", "slow")
    assert [s["lock"] for s in w.active("stale_holders")] == ["fast:7"]
    assert w.state.stale_holders_by_reason()["max_hold"] == 1


def test_max_hold_not_reported_for_a_hold_whose_release_was_lost() -> None:
    w = World(AgentConfig(max_hold=2))
    w.heartbeat(1)
    w.hold("1.1", "A")
    w.advance(2.5)  # the hold.end was lost; the holder no longer asserts the hold
    assert w.active("stale_holders") == []
    w.heartbeat(1)
    assert w.active("stale_holders") == []
    assert w.state.hold_count == 0


def test_orphaned_holder_when_process_stops_heartbeating() -> None:
    w = World()
    w.heartbeat(1, interval=0.5)
    w.hold("1.1", "A", system="redis")
    w.hold("1.2", "T", system="threading")
    w.advance(1.0)
    assert w.active("stale_holders") == []
    w.advance(0.6)  # 3 x 0.5 s silent
    [s] = w.active("stale_holders")
    assert (s["reason"], s["lock"]) == ("orphaned", "A")  # in-process locks die with it
    assert api_processes(w.state)["processes"][0]["alive"] is False
    # the process comes back (it was SIGSTOPped): the finding resolves
    w.heartbeat(1, holds=[w.entry("1.1", "A", since=w.hold_since("1.1", "A") or 0)])
    assert w.active("stale_holders") == []
    assert api_processes(w.state)["processes"][0]["alive"] is True


def test_orphaned_hold_dropped_when_lease_runs_out_or_another_takes_it() -> None:
    w = World()
    w.heartbeat(1)
    w.heartbeat(2)
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 10 * S})
    w.hold("2.1", "B")
    w.advance(3.1)  # both silent: two orphans
    assert len(w.active("stale_holders")) == 2
    w.hold("3.1", "B")  # someone else got B: 2's hold is evidently gone
    assert [s["lock"] for s in w.active("stale_holders")] == ["A"]
    w.advance(7.5)  # A's lease ran out (+ grace)
    assert w.active("stale_holders") == []
    assert w.state.hold_count == 1


def test_lease_expired_while_holder_still_reports_it() -> None:
    w = World(AgentConfig(lease_grace=0.5))
    expires = w.now + 2 * S
    since = w.now
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: expires})
    w.advance(2.2)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since, **{ev.ATTR_LOCK_EXPIRES_AT: expires})])
    assert w.active("stale_holders") == []  # within grace
    w.advance(0.5)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since, **{ev.ATTR_LOCK_EXPIRES_AT: expires})])
    [s] = w.active("stale_holders")
    assert s["reason"] == "lease_expired"
    assert s["expires_at"].endswith("Z")


def test_lock_lost_event_is_lease_expired_and_counted() -> None:
    w = World()
    since = w.now
    w.hold("1.1", "order:42")
    w.advance(1)
    w.send(ev.EVENT_LOCK_LOST, "1.1", "order:42", since=since)
    [s] = w.active("stale_holders")
    assert s["reason"] == "lease_expired"
    assert s["lock"] == "order:42"
    assert w.state.stale.counters.locks_lost == {"order:{id}": 1}
    assert w.state.hold_count == 0
    w.advance(301)  # one-shot findings expire after finding_ttl
    assert w.active("stale_holders") == []


def test_lock_lost_after_lease_expired_finding_is_one_finding() -> None:
    # The agent sees the hold outlive its lease, then the holder says it lost the lock:
    # one lost lock is one stale-holder finding (one alert), kept until finding_ttl.
    w = World(AgentConfig(lease_grace=0.5))
    expires = w.now + 1 * S
    since = w.now
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: expires})
    w.advance(2)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since, **{ev.ATTR_LOCK_EXPIRES_AT: expires})])
    [seen] = w.active("stale_holders")
    w.send(ev.EVENT_LOCK_LOST, "1.1", "A", since=since)
    assert w.state.hold_count == 0
    [after] = w.active("stale_holders")
    assert after["id"] == seen["id"]
    assert after["detail"] == "the holder lost the lock"
    assert len(api_stale_holders(w.state)["stale_holders"]) == 1
    w.advance(301)
    assert w.active("stale_holders") == []


def test_lock_lost_after_lease_expiry_stays_active_until_its_ttl() -> None:
    w = World()
    since = w.now
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + S})
    w.advance(3)
    w.send(ev.EVENT_LOCK_LOST, "1.1", "A", since=since)
    [s] = w.active("stale_holders")
    assert s["detail"] == "the holder lost the lock"
    w.advance(299)
    assert len(w.active("stale_holders")) == 1
    w.advance(2)
    assert w.active("stale_holders") == []


# -- processes that exit -------------------------------------------------------------
def test_clean_exit_is_gone_not_dead_and_leaves_no_finding() -> None:
    w = World()
    w.heartbeat(1)
    w.hold("1.1", "A")
    w.release("1.1", "A")
    w.heartbeat(1, exiting=True)
    [p] = api_processes(w.state)["processes"]
    assert (p["alive"], p["exited"]) == (False, True)
    assert w.state.counters.processes_exited == 1
    assert w.state.counters.processes_presumed_dead == 0
    assert w.state.reporting_processes() == 0
    w.advance(10)  # no liveness timeout turns it into a dead process
    assert w.state.counters.processes_presumed_dead == 0
    assert w.active("stale_holders") == []


def test_exit_holding_a_lease_is_stale_until_the_lease_ends() -> None:
    w = World(AgentConfig(evidence_timeout=0, lease_grace=0.5))
    w.heartbeat(1)
    lease_end = w.now + 3 * S
    extra = {ev.ATTR_LOCK_EXPIRES_AT: lease_end}
    held = w.entry("1.1", "job:7", w.now, **extra)
    inproc = w.entry("1.2", "cache", w.now, system="threading")
    w.heartbeat(1, holds=[held, inproc], exiting=True)
    [s] = w.active("stale_holders")
    assert (s["reason"], s["lock"], s["pid"]) == ("exited_holding", "job:7", 1001)
    assert w.state.stale_holders_by_reason()["exited_holding"] == 1
    assert w.state.hold_count == 1  # the in-process lock died with the process
    w.advance(3.4)
    assert len(w.active("stale_holders")) == 1  # lease plus grace not over yet
    w.advance(0.2)
    assert w.active("stale_holders") == []
    [r] = api_stale_holders(w.state)["stale_holders"]
    assert (r["status"], r["resolution"]) == ("resolved", "lease_expired")
    assert w.state.hold_count == 0


def test_exit_with_a_lease_already_over_is_lease_expired_not_exited_holding() -> None:
    w = World(AgentConfig(evidence_timeout=0, lease_grace=0.5))
    held = w.entry("1.1", "job:7", w.now - 5 * S, **{ev.ATTR_LOCK_EXPIRES_AT: w.now - S})
    w.heartbeat(1, holds=[held], exiting=True)
    assert [s["reason"] for s in w.active("stale_holders")] == ["lease_expired"]


def test_a_silent_process_is_still_orphaned_not_exited() -> None:
    w = World()
    w.heartbeat(1, interval=0.2)
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 30 * S})
    w.advance(3)
    [s] = w.active("stale_holders")
    assert s["reason"] == "orphaned"
    [p] = api_processes(w.state)["processes"]
    assert (p["alive"], p["exited"]) == (False, False)


def test_an_exited_process_reporting_again_is_back() -> None:
    w = World()
    w.heartbeat(1, holds=[w.entry("1.1", "A", w.now)], exiting=True)
    assert len(w.active("stale_holders")) == 1
    w.advance(0.1)
    w.heartbeat(1, holds=[w.entry("1.1", "A", w.now - S // 10)])
    assert w.active("stale_holders") == []
    [p] = api_processes(w.state)["processes"]
    assert (p["alive"], p["exited"]) == (True, False)


def test_metrics_make_a_process_known_but_do_not_revive_an_exited_one() -> None:
    w = World()
    w.state.procs.seen(proc(7), w.now)
    [p] = api_processes(w.state)["processes"]
    assert (p["instance"], p["alive"], p["last_heartbeat"]) == ("inst-7", True, None)
    w.heartbeat(7, exiting=True)
    w.advance(0.1)
    w.state.procs.seen(proc(7), w.now)  # its exit flush's metrics, delivered late
    [p] = api_processes(w.state)["processes"]
    assert (p["alive"], p["exited"]) == (False, True)
