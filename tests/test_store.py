"""The store (lockscope.agent.store, through AgentState): validation, limits, heartbeat
reconciliation (lost and reordered events heal, no phantom edges), liveness, the JSON API
shapes, configuration, memory per hold, and check_invariants."""

from __future__ import annotations

import random
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_helpers import T0, S, World, proc
from lockscope import events as ev
from lockscope.agent.config import AgentConfig, ConfigError, Limits
from lockscope.agent.findings import rfc3339
from lockscope.agent.model import Event
from lockscope.agent.state import AgentState, RejectedEvent
from lockscope.agent.web_api import api_lock, api_locks, api_processes


# -- validation ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({ev.ATTR_ACTOR_ID: "thread:1"}, "lockscope.lock.name"),
        ({ev.ATTR_LOCK_NAME: "A"}, "lockscope.actor.id"),
        ({ev.ATTR_LOCK_NAME: 5, ev.ATTR_ACTOR_ID: "t"}, "must be a string"),
        ({ev.ATTR_LOCK_NAME: "A", ev.ATTR_ACTOR_ID: "t", ev.ATTR_SINCE: "now"}, "integer"),
        ({ev.ATTR_LOCK_NAME: "A", ev.ATTR_ACTOR_ID: "t", ev.ATTR_SINCE: True}, "integer"),
        ({ev.ATTR_LOCK_NAME: "A", ev.ATTR_ACTOR_ID: "t", ev.ATTR_LOCK_MODE: "x"}, "one of"),
        ({ev.ATTR_LOCK_NAME: "A", ev.ATTR_ACTOR_ID: "t", ev.ATTR_LOCK_FIFO: "yes"}, "boolean"),
    ],
)
def test_invalid_events_are_rejected_and_change_nothing(
    attrs: dict[str, Any], message: str
) -> None:
    state = AgentState(clock=lambda: T0)
    with pytest.raises(RejectedEvent, match=message) as info:
        state.apply(Event(ev.EVENT_HOLD_START, T0, proc(1), attrs))
    assert info.value.reason == "invalid"
    assert isinstance(info.value, ValueError)
    assert state.hold_count == 0
    assert state.lock_count == 0
    assert list(state.actors()) == []


def test_unknown_event_name_and_bad_heartbeat_are_rejected() -> None:
    state = AgentState(clock=lambda: T0)
    with pytest.raises(RejectedEvent) as info:
        state.apply(Event("lockscope.nope", T0, proc(1), {}))
    assert info.value.reason == "unknown_event"
    with pytest.raises(RejectedEvent, match="arrays"):
        state.apply(Event(ev.EVENT_HEARTBEAT, T0, proc(1), {ev.ATTR_HOLDS: "x"}))
    with pytest.raises(RejectedEvent, match="integer nanoseconds"):
        state.apply(Event(ev.EVENT_HEARTBEAT, 1.5, proc(1), {}))  # type: ignore[arg-type]


def test_bad_heartbeat_entries_are_skipped_and_counted() -> None:
    w = World()
    good = w.entry("1.1", "A", w.now)
    w.heartbeat(1, holds=[good, {"x": 1}, "junk"], waits=[{ev.ATTR_LOCK_NAME: "B"}])  # type: ignore[list-item]
    assert w.state.hold_count == 1
    assert w.state.counters.heartbeat_entries_rejected == 3


def test_limits_are_enforced_and_counted() -> None:
    w = World(AgentConfig(limits=Limits(max_locks=2, max_holds=3, max_processes=3)))
    w.hold("1.1", "A")
    w.hold("1.1", "B")
    with pytest.raises(RejectedEvent) as info:
        w.hold("1.1", "C")
    assert info.value.reason == "limit"
    w.hold("2.1", "A")
    w.advance(0.001)
    w.wait("3.1", "A")
    with pytest.raises(RejectedEvent):
        w.hold("3.2", "B")
    with pytest.raises(RejectedEvent):
        w.hold("4.1", "A")
    assert w.state.counters.limits_hit == {"max_locks": 1, "max_holds": 1, "max_processes": 1}
    assert w.state.hold_count == 3


def test_label_values_are_capped() -> None:
    w = World(AgentConfig(limits=Limits(max_label_values=2)))
    for i, name in enumerate(["a", "b", "c", "d"]):
        w.hold(f"{i}.1", name)
        w.wait(f"{i}.2", name)
    assert w.state.waiters_by_lock() == {"a": 1, "b": 1, "{other}": 2}
    assert w.state.counters.limits_hit["max_label_values"] >= 2


# -- reconciliation ----------------------------------------------------------------
def test_lost_wait_end_healed_by_next_heartbeat_and_no_phantom_deadlock() -> None:
    w = World()
    w.heartbeat(1)
    w.heartbeat(2)
    w.hold("1.1", "A")
    w.advance(0.1)
    w.wait("2.1", "A")  # its wait.end (timeout) will be lost
    w.advance(0.3)
    # 2's next heartbeat does not list the wait: it is gone
    w.heartbeat(2)
    assert w.state.wait_count == 0
    assert w.state.counters.healed == {"wait": 1}
    w.advance(0.1)
    w.wait("1.1", "B")
    assert w.deadlocks() == []


def test_heartbeat_keeps_what_was_asserted_after_it() -> None:
    # A hold.start sent after the snapshot was taken, delivered before it, must survive it.
    w = World()
    t_hb = w.now
    w.advance(0.05)
    w.hold("1.1", "A")
    w.heartbeat(1, holds=[], t=t_hb)
    assert w.state.hold_count == 1


def _the_wait(w: World, actor: str) -> Any:
    (found,) = [a.wait for a in w.state.actors() if a.key == w.actor_key(actor)]
    return found


def test_a_heartbeat_names_the_holder_a_wait_start_could_not() -> None:
    # The shim's holder look-up finished after the wait.start was sent (a loaded host):
    # the next heartbeat carries it, and the agent takes it, dated no later than it can
    # vouch for (the wait's start: the look-up ran after it).
    w = World()
    since = w.now
    w.wait("1.1", "A")
    assert _the_wait(w, "1.1").holder_owner is None
    w.advance(0.1)
    named = {ev.ATTR_LOCK_HOLDER_OWNER: "holder-node", ev.ATTR_LOCK_HOLDER_TOKEN: 7}
    w.heartbeat(1, waits=[w.entry("1.1", "A", since, **named)])
    wait = _the_wait(w, "1.1")
    assert (wait.holder_owner, wait.holder_token, wait.probed_ns) == ("holder-node", 7, since)
    # What the first look-up saw is kept: a later snapshot does not rename the holder.
    w.advance(0.1)
    other = {ev.ATTR_LOCK_HOLDER_OWNER: "other-node", ev.ATTR_LOCK_HOLDER_TOKEN: 8}
    w.heartbeat(1, waits=[w.entry("1.1", "A", since, **other)])
    assert _the_wait(w, "1.1").holder_owner == "holder-node"


def test_start_event_older_than_latest_heartbeat_is_ignored() -> None:
    w = World()
    t_old = w.now
    w.advance(1)
    w.heartbeat(1)  # says: process 1 holds nothing
    w.hold("1.1", "A", t=t_old, since=t_old)  # delayed hold.start of a hold that ended
    assert w.state.hold_count == 0
    assert w.state.counters.events_ignored == {"older_than_heartbeat": 1}


def test_older_heartbeat_is_ignored() -> None:
    w = World()
    since = w.now
    w.advance(1)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since)])
    w.heartbeat(1, holds=[], t=w.now - S // 2)  # reordered: an older snapshot
    assert w.state.hold_count == 1
    assert w.state.counters.events_ignored == {"stale_heartbeat": 1}


def test_end_before_start_reordering() -> None:
    w = World()
    since = w.now
    w.release("1.1", "A", since=since)  # hold.end overtook hold.start
    w.hold("1.1", "A", since=since)
    assert w.state.hold_count == 0
    w.send(ev.EVENT_WAIT_END, "1.1", "B", since=since)
    w.wait("1.1", "B", since=since)
    assert w.state.wait_count == 0
    assert w.state.counters.events_ignored == {"tombstoned": 2}
    # a heartbeat cannot resurrect an ended instance either
    w.advance(0.5)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since)])
    assert w.state.hold_count == 0


def test_hold_ends_the_wait_that_led_to_it_whatever_the_order() -> None:
    w = World()
    since_wait = w.now
    w.advance(0.3)
    w.hold("1.1", "A")  # wait.end lost or late; hold of A implies the wait for A ended
    w.wait("1.1", "A", since=since_wait)  # late wait.start
    assert w.state.wait_count == 0
    assert w.state.hold_count == 1


def test_newer_wait_replaces_older_one() -> None:
    w = World()
    w.wait("1.1", "A")
    w.advance(0.5)
    w.wait("1.1", "B")
    [actor] = list(w.state.actors())
    assert actor.wait is not None
    assert actor.wait.lock.name == "B"
    w.wait("1.1", "A", since=w.now - S)  # late duplicate of the older wait
    assert actor.wait.lock.name == "B"


def test_hold_extend_updates_lease_and_creates_unknown_hold() -> None:
    w = World()
    w.send(ev.EVENT_HOLD_EXTEND, "1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 5 * S})
    lock = api_lock(w.state, "A")
    assert lock is not None
    assert lock["holders"][0]["expires_at"] is not None


# -- simulated fleet with lossy, reordered delivery -----------------------------------------------
@dataclass
class SimActor:
    name: str
    plan: list[str]
    step: int = 0
    holding: list[str] = field(default_factory=list)
    hold_since: dict[str, int] = field(default_factory=dict)
    waiting: tuple[str, int] | None = None
    busy_until: int = 0
    modes: dict[str, str] = field(default_factory=dict)


def simulate(
    seed: int,
    orders: list[list[str]],
    seconds: float,
    drop: float,
    until_deadlock: bool = False,
    fifo: bool = False,
    rw: bool = False,
) -> tuple[World, int | None, list[set[str]]]:
    """Actors loop over their lock plans on an ideal lock server (exclusive, FIFO-queued, or
    read-write with a random mode per acquisition); every transition and a 1 s heartbeat
    become events, delivered late (0-300 ms, so reordered) or dropped.

    Returns the world, when a real deadlock formed (if it did) and every deadlock reported.
    """
    rng = random.Random(seed)
    w = World(AgentConfig())
    owner: dict[str, dict[str, str]] = {}  # lock -> holder -> mode

    def grantable(lock: str, mode: str) -> bool:
        holders = owner.get(lock)
        return not holders or (mode == "read" and all(m == "read" for m in holders.values()))

    actors = [SimActor(f"{i + 1}.1", plan) for i, plan in enumerate(orders)]
    inflight: list[tuple[int, int, Event]] = []
    seq = 0
    reported: list[set[str]] = []
    formed: int | None = None
    step = 10_000_000  # 10 ms

    queue: dict[str, list[tuple[int, str]]] = {}
    tickets: dict[str, int] = {}
    fifo_attrs: dict[str, Any] = {ev.ATTR_LOCK_FIFO: True} if fifo else {}

    def emit(name: str, a: SimActor, lock: str, since: int, **extra: Any) -> None:
        nonlocal seq
        if rng.random() < drop:
            return
        attrs = w.lock_attrs(lock, mode=a.modes.get(lock, "exclusive"), **fifo_attrs, **extra)
        attrs[ev.ATTR_SINCE] = since
        seq += 1
        inflight.append(
            (w.now + rng.randrange(0, 300) * 1_000_000, seq, w.event(name, a.name, attrs))
        )

    lost_heartbeat: set[str] = set()

    def heartbeat(a: SimActor) -> None:
        # Heartbeats are lost like other events, but never twice in a row for a process
        # (then "within one heartbeat" would mean nothing).
        nonlocal seq
        if a.name not in lost_heartbeat and rng.random() < drop:
            lost_heartbeat.add(a.name)
            return
        lost_heartbeat.discard(a.name)
        holds = [
            w.entry(a.name, lk, a.hold_since[lk], mode=a.modes[lk], **fifo_attrs)
            for lk in a.holding
        ]
        waits = []
        if a.waiting:
            lk, since = a.waiting
            extra = {ev.ATTR_QUEUE_POSITION: tickets[a.name], **fifo_attrs}
            waits.append(w.entry(a.name, lk, since, mode=a.modes[lk], **extra))
        info, _ = w.split(a.name)
        attrs = {ev.ATTR_HOLDS: holds, ev.ATTR_WAITS: waits, ev.ATTR_HEARTBEAT_INTERVAL: 1.0}
        seq += 1
        delay = rng.randrange(0, 300) * 1_000_000
        inflight.append((w.now + delay, seq, Event(ev.EVENT_HEARTBEAT, w.now, info, attrs)))

    end = w.now + int(seconds * S)
    next_hb = w.now
    while w.now < end:
        for a in actors:
            if a.waiting is not None:
                lock, since = a.waiting
                if grantable(lock, a.modes[lock]) and (not fifo or queue[lock][0][1] == a.name):
                    if fifo:
                        queue[lock].pop(0)
                    owner.setdefault(lock, {})[a.name] = a.modes[lock]
                    a.waiting = None
                    a.holding.append(lock)
                    a.hold_since[lock] = w.now
                    emit(ev.EVENT_WAIT_END, a, lock, since, **{ev.ATTR_OUTCOME: "acquired"})
                    emit(ev.EVENT_HOLD_START, a, lock, w.now)
                    a.busy_until = w.now + rng.randrange(1, 30) * step
                continue
            if w.now < a.busy_until:
                continue
            if a.step < len(a.plan):
                lock = a.plan[a.step]
                a.step += 1
                a.modes[lock] = rng.choice(["read", "write"]) if rw else "exclusive"
                if not grantable(lock, a.modes[lock]) or (fifo and queue.get(lock)):
                    a.waiting = (lock, w.now)
                    tickets[a.name] = ticket = seq
                    if fifo:
                        queue.setdefault(lock, []).append((ticket, a.name))
                    emit(ev.EVENT_WAIT_START, a, lock, w.now, **{ev.ATTR_QUEUE_POSITION: ticket})
                else:
                    owner.setdefault(lock, {})[a.name] = a.modes[lock]
                    a.holding.append(lock)
                    a.hold_since[lock] = w.now
                    emit(ev.EVENT_HOLD_START, a, lock, w.now)
                    a.busy_until = w.now + rng.randrange(1, 30) * step
            else:
                for lock in reversed(a.holding):
                    del owner[lock][a.name]
                    emit(ev.EVENT_HOLD_END, a, lock, a.hold_since.pop(lock))
                a.holding.clear()
                a.step = 0
                a.busy_until = w.now + rng.randrange(0, 20) * step
        # is there a real deadlock now? (every actor waits for a lock another waiting one holds)
        if formed is None:
            g = nx.DiGraph()
            for a in actors:
                if a.waiting:
                    lk = a.waiting[0]
                    for holder, mode in owner.get(lk, {}).items():
                        if not (mode == "read" and a.modes[lk] == "read"):
                            g.add_edge(a.name, holder)
            if not nx.is_directed_acyclic_graph(g):
                formed = w.now
        if w.now >= next_hb:
            for a in actors:
                heartbeat(a)
            next_hb += S
        inflight.sort(key=lambda x: (x[0], x[1]))
        while inflight and inflight[0][0] <= w.now:
            _, _, event = inflight.pop(0)
            w.state.apply(event)
        w.state.check_invariants()
        for members in w.deadlocks():
            if members not in reported:
                reported.append(members)
        if until_deadlock and reported:
            break
        w.advance(step / S)
    return w, formed, reported


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(["exclusive", "fifo", "rw"]))
def test_consistent_order_with_drops_and_reordering_never_reports_a_deadlock(
    seed: int, kind: str
) -> None:
    orders = [["A", "B"], ["A", "B", "C"], ["B", "C"], ["A", "C"], ["A", "B", "C"]]
    w, formed, reported = simulate(
        seed, orders, seconds=20, drop=0.1, fifo=kind == "fifo", rw=kind == "rw"
    )
    assert formed is None
    assert reported == []
    assert w.state.deadlocks.counters.detected_total == 0


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_real_deadlock_found_despite_drops_and_reordering(seed: int, fifo: bool) -> None:
    w, formed, reported = simulate(
        seed, [["A", "B"], ["B", "A"]], seconds=30, drop=0.1, until_deadlock=True, fifo=fifo
    )
    assert formed is not None, "the two actors never deadlocked in 30 s"
    assert reported == [w.keys("1.1", "2.1")]
    # found within one heartbeat of forming (two if that heartbeat was lost), plus delivery
    assert w.now - formed <= 2.5 * S


# -- liveness ----------------------------------------------------------------
def test_process_liveness_uses_its_own_interval_with_a_floor() -> None:
    w = World(AgentConfig(heartbeat_miss_factor=3, heartbeat_timeout_floor=2.0))
    w.heartbeat(1, interval=0.2)  # 3 x 0.2 = 0.6 s, floor 2 s
    w.heartbeat(2, interval=5.0)  # 15 s
    w.hold("3.1", "A")  # never heartbeats: silent_process_timeout (60 s)
    w.advance(1.9)
    assert w.state.reporting_processes() == 3
    w.advance(0.2)
    assert w.state.reporting_processes() == 2
    w.advance(13)
    assert w.state.reporting_processes() == 1
    w.advance(45)
    assert w.state.reporting_processes() == 0
    assert w.state.counters.processes_presumed_dead == 3


def test_dead_process_forgotten_after_retention() -> None:
    w = World(AgentConfig(dead_process_retention=10))
    w.heartbeat(1)
    # a lease that outlives the retention: forgotten with the process
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 3600 * S})
    w.advance(3.1)
    assert w.state.hold_count == 1  # orphaned, kept
    w.advance(10)
    assert w.state.hold_count == 0
    assert api_processes(w.state) == {"processes": []}
    assert w.active("stale_holders") == []


def test_dead_process_with_a_hold_no_lease_ends_is_kept_past_retention() -> None:
    """Issue 14 item 7: nothing but a release ends such a hold (a redis-py lock without a
    timeout), so its orphaned finding stays active, and the process is kept for it."""
    w = World(AgentConfig(dead_process_retention=10))
    w.heartbeat(1)
    w.hold("1.1", "A")
    w.advance(3.1)
    w.advance(30)
    assert w.state.hold_count == 1
    assert [f["reason"] for f in w.active("stale_holders")] == ["orphaned"]
    # Someone else takes the lock: the orphan is over.
    w.hold("2.1", "A")
    assert w.active("stale_holders") == []


# -- API shapes ----------------------------------------------------------------
def test_api_lock_holders_waiters_timeline() -> None:
    w = World()
    w.hold("1.1", "A", **{ev.ATTR_LOCK_TOKEN: 7, ev.ATTR_LOCK_FIFO: True})
    w.advance(0.1)
    w.wait("3.1", "A", **{ev.ATTR_QUEUE_POSITION: 9, ev.ATTR_LOCK_FIFO: True})
    w.wait("2.1", "A", **{ev.ATTR_QUEUE_POSITION: 8, ev.ATTR_LOCK_FIFO: True})
    lock = api_lock(w.state, "A")
    assert lock is not None
    assert lock == api_lock(w.state, "redis:ns/A")
    assert (lock["name"], lock["system"], lock["namespace"], lock["kind"]) == (
        "A",
        "redis",
        "ns",
        "exclusive",
    )
    assert [h["pid"] for h in lock["holders"]] == [1001]
    assert lock["holders"][0]["token"] == 7
    assert [x["pid"] for x in lock["waiters"]] == [1002, 1003]  # queue order
    assert lock["waiters"][1]["waits_for"] == ["svc:1001/thread:1", "svc:1002/thread:1"]
    assert [e["event"] for e in lock["timeline"]] == ["hold", "wait", "wait"]
    assert lock["timeline"][0]["time"].endswith("Z")
    assert api_lock(w.state, "nope") is None


def test_api_locks_and_processes() -> None:
    w = World()
    w.heartbeat(1, interval=0.5)
    w.hold("1.1", "A")
    w.hold("2.1", "B")
    w.wait("3.1", "B")
    locks = api_locks(w.state)
    assert locks["total"] == 2
    assert [lk["name"] for lk in locks["locks"]] == ["B", "A"]  # most waiters first
    assert locks["locks"][0]["waiter_count"] == 1
    assert locks["locks"][0]["holder_count"] == 1
    procs = api_processes(w.state)["processes"]
    assert [(p["pid"], p["alive"], p["holds"], p["waits"]) for p in procs] == [
        (1001, True, 1, 0),
        (1002, True, 1, 0),
        (1003, True, 0, 1),
    ]
    assert procs[0]["heartbeat_interval"] == 0.5
    assert procs[1]["last_heartbeat"] is None


def test_every_finding_kind_serialises_with_common_fields() -> None:
    import json

    w = World(AgentConfig(max_hold=1))
    w.hold("1.1", "A")
    w.hold("2.1", "B")
    w.wait("1.1", "B")
    w.wait("2.1", "A")
    w.advance(2)
    w.heartbeat(
        1,
        holds=[w.entry("1.1", "A", w.hold_since("1.1", "A") or 0)],
        waits=[w.entry("1.1", "B", w.wait_since("1.1") or 0)],
    )
    w.hold("3.1", "C", **{ev.ATTR_LOCK_TOKEN: 5})
    w.release("3.1", "C")
    w.advance(0.1)
    w.hold("4.1", "C", **{ev.ATTR_LOCK_TOKEN: 4})
    attrs = {ev.ATTR_ORDER_FIRST: "x", ev.ATTR_ORDER_SECOND: "y"}
    w.state.apply(w.event(ev.EVENT_ORDER_PAIR, "1.1", attrs))
    attrs = {ev.ATTR_ORDER_FIRST: "y", ev.ATTR_ORDER_SECOND: "x"}
    w.state.apply(w.event(ev.EVENT_ORDER_PAIR, "2.1", attrs))
    kinds = {f.kind for f in w.state.findings(active_only=True)}
    assert kinds == {"deadlock", "stale_holder", "violation", "order_inversion"}
    for key in ("deadlocks", "stale_holders", "violations", "order_inversions"):
        for item in w.active(key):
            json.dumps(item)
            assert {"id", "status", "detected_at", "resolved_at"} <= set(item)
            if key != "deadlocks":
                assert {"lock", "actor", "service", "pid", "reason", "since"} <= set(item)
    assert w.state.active_counts()["deadlock"] == 1


# -- configuration ----------------------------------------------------------------
def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        """
max_hold = 60
lease_grace = 1
order_self_pairs = true
in_process_systems = ["threading"]
[max_hold_overrides]
"report:*" = 0
"order:{id}" = 30.5
[[template_rules]]
pattern = '^tenant/[^/]+/'
replacement = 'tenant/{tenant}/'
[limits]
max_locks = 500
"""
    )
    cfg = AgentConfig.from_toml(path)
    assert cfg.max_hold == 60.0
    assert cfg.lease_grace == 1.0
    assert cfg.order_self_pairs is True
    assert cfg.in_process_systems == ("threading",)
    assert cfg.max_hold_for("report:daily") == 0
    assert cfg.max_hold_for("order:{id}") == 30.5
    assert cfg.max_hold_for("other") == 60.0
    assert cfg.limits.max_locks == 500
    assert cfg.limits.max_holds == Limits().max_holds
    assert cfg.template_rules == (("^tenant/[^/]+/", "tenant/{tenant}/"),)
    # the templating rule is used for events without a template
    w = World(cfg)
    w.hold("1.1", "tenant/acme/job7")
    [lock] = list(w.state.locks())
    assert lock.template == "tenant/{tenant}/job{id}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_hodl = 3", "unknown key 'max_hodl'"),
        ("max_hold = 'long'", "max_hold must be a number"),
        ("max_hold = -1", ">= 0"),
        ("order_self_pairs = 1", "true or false"),
        ("[limits]\nmax_lock = 1", "unknown key limits"),
        ("[limits]\nmax_locks = 0", "positive integer"),
        ("[[template_rules]]\npattern = '('\nreplacement = 'x'", "bad regular expression"),
        ("heartbeat_interval = 0", "heartbeat_interval must be > 0"),
        ("max_hold = [", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        AgentConfig.from_toml(path)
    assert str(path) in str(info.value)


def test_config_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        AgentConfig.from_toml("/nonexistent/agent.toml")


def test_config_from_mapping_layers() -> None:
    base = AgentConfig.from_mapping({"max_hold": 10})
    cfg = AgentConfig.from_mapping({"lease_grace": 2}, base=base)
    assert (cfg.max_hold, cfg.lease_grace) == (10.0, 2.0)
    assert cfg.liveness_timeout(1.0) == 3.0
    assert cfg.liveness_timeout(0.1) == 1.0
    assert cfg.liveness_timeout(None) == 60.0


# -- cost ----------------------------------------------------------------
def test_memory_per_tracked_hold_is_under_1_kib() -> None:
    n = 20_000
    state = AgentState(clock=lambda: T0)
    infos = [proc(i) for i in range(100)]
    events = [
        Event(
            ev.EVENT_HOLD_START,
            T0,
            infos[i % 100],
            {
                ev.ATTR_LOCK_SYSTEM: "redis",
                ev.ATTR_LOCK_NAMESPACE: "127.0.0.1:6379/0",
                ev.ATTR_LOCK_NAME: f"order:{i}",
                ev.ATTR_LOCK_TEMPLATE: "order:{id}",
                ev.ATTR_ACTOR_ID: f"thread:{i // 100}",
                ev.ATTR_SINCE: T0,
                ev.ATTR_LOCK_EXPIRES_AT: T0 + 30 * S,
                ev.ATTR_LOCK_TOKEN: i,
            },
        )
        for i in range(n)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for e in events:
        state.apply(e)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert state.hold_count == n
    per_hold = (after - before) / n
    assert per_hold < 1024, f"{per_hold:.0f} bytes per hold"


def test_late_extension_does_not_roll_the_lease_back() -> None:
    w = World()
    since = w.now
    w.hold("1.1", "A", **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 2 * S})
    t_ext = w.now + S
    w.advance(1.5)
    w.heartbeat(1, holds=[w.entry("1.1", "A", since, **{ev.ATTR_LOCK_EXPIRES_AT: w.now + 10 * S})])
    # the extension sent at t+1 s arrives after the heartbeat at t+1.5 s
    w.send(
        ev.EVENT_HOLD_EXTEND,
        "1.1",
        "A",
        t=t_ext,
        since=since,
        **{ev.ATTR_LOCK_EXPIRES_AT: t_ext + 2 * S},
    )
    lock = api_lock(w.state, "A")
    assert lock is not None
    [holder] = lock["holders"]
    assert holder["expires_at"] == rfc3339(w.now + 10 * S)


# -- invariants ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda s: setattr(s, "_nholds", s._nholds + 1), "_nholds"),
        (lambda s: setattr(s, "_nwaits", s._nwaits - 1), "_nwaits"),
        (lambda s: setattr(s, "_semaphore_waits", 5), "_semaphore_waits"),
        (lambda s: s._waiters.__setitem__("A", 7), "_waiters"),
        (lambda s: next(s.locks()).holds.clear(), "lacks|misses"),
        (lambda s: s._locks.pop("redis:ns/B"), "untracked"),
    ],
)
def test_check_invariants_finds_each_corrupted_index(corrupt: Any, message: str) -> None:
    w = World()
    w.hold("1.1", "A")
    w.hold("1.2", "B", mode="semaphore", **{ev.ATTR_LOCK_MAX_LEASES: 2})
    w.advance(0.01)
    w.wait("2.1", "A")
    w.state.check_invariants()
    corrupt(w.state)
    with pytest.raises(AssertionError, match=message):
        w.state.check_invariants()
