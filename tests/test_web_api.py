"""The JSON API, route by route, fed over real OTLP/HTTP (protobuf and JSON) to a running
in-process agent, checked against SPEC's "Agent JSON API" shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest

from lockscope import events as ev
from lockscope.agent.app import AgentRunner
from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event, ProcessInfo
from lockscope.testing.agent import encode_logs

T = TypeVar("T")

BILLING = ProcessInfo(service="billing", host="h1", pid=101, instance="billing-101")
SHIPPING = ProcessInfo(service="shipping", host="h2", pid=202, instance="shipping-202")
NAMESPACE = "127.0.0.1:6379/0"
LOCK_A = "orders/1"
LOCK_B = "orders/2"


def lock_attrs(lock: str, actor: str, since: int, **extra: Any) -> dict[str, Any]:
    return {
        ev.ATTR_LOCK_SYSTEM: "redis",
        ev.ATTR_LOCK_NAMESPACE: NAMESPACE,
        ev.ATTR_LOCK_NAME: lock,
        ev.ATTR_LOCK_TEMPLATE: "orders/{id}" if lock.startswith("orders/") else lock,
        ev.ATTR_LOCK_MODE: "exclusive",
        ev.ATTR_ACTOR_ID: actor,
        ev.ATTR_ACTOR_NAME: actor,
        ev.ATTR_SINCE: since,
        **extra,
    }


def event(
    name: str, process: ProcessInfo, lock: str, actor: str, since: int, sent: int | None = None
) -> Event:
    """A lock event about a hold/wait that began at ``since``, sent at ``sent`` (default:
    right then)."""
    return Event(name, sent or since, process, lock_attrs(lock, actor, since))


def ring(now: int) -> list[Event]:
    """billing holds A and waits for B; shipping holds B and waits for A (the younger wait)."""
    second = 1_000_000_000
    return [
        event(ev.EVENT_HOLD_START, BILLING, LOCK_A, "thread:1", now - 3 * second),
        event(ev.EVENT_HOLD_START, SHIPPING, LOCK_B, "thread:2", now - 3 * second),
        event(ev.EVENT_WAIT_START, BILLING, LOCK_B, "thread:1", now - 2 * second),
        event(ev.EVENT_WAIT_START, SHIPPING, LOCK_A, "thread:2", now - 1 * second),
    ]


@pytest.fixture
async def agent() -> AsyncIterator[AgentRunner]:
    async with AgentRunner(otlp=("127.0.0.1", 0), http=("127.0.0.1", 0)) as runner:
        yield runner


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def send(
    session: aiohttp.ClientSession, agent: AgentRunner, events: list[Event], wire: str = "protobuf"
) -> None:
    content_type = "application/x-protobuf" if wire == "protobuf" else "application/json"
    async with session.post(
        agent.otlp_url + "/v1/logs",
        data=encode_logs(events, wire),  # type: ignore[arg-type]
        headers={"Content-Type": content_type},
    ) as response:
        assert response.status == 200
        body = await response.read()
        assert body in (b"", b"{}"), body  # no partial_success: every record accepted


async def get(session: aiohttp.ClientSession, agent: AgentRunner, path: str) -> Any:
    async with session.get(agent.http_url + path) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 3.0) -> T:
    """Poll ``check`` until it returns something truthy (detection runs on arrival and on
    the 100 ms tick)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.02)


def participant_of(deadlock: dict[str, Any], service: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [p for p in deadlock["participants"] if p["service"] == service]
    return found


async def test_two_ring_deadlock_appears_and_resolves(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    now = time.time_ns()
    await send(session, agent, ring(now))

    async def active() -> list[dict[str, Any]]:
        body = await get(session, agent, "/api/v1/deadlocks?status=active")
        return list(body["deadlocks"])

    (deadlock,) = await eventually(active)
    assert deadlock["status"] == "active"
    assert deadlock["detected_at"].endswith("Z")
    assert deadlock["resolved_at"] is None
    assert sorted(deadlock["locks"]) == [LOCK_A, LOCK_B]
    assert len(deadlock["participants"]) == 2
    billing = participant_of(deadlock, "billing")
    shipping = participant_of(deadlock, "shipping")
    assert (billing["pid"], shipping["pid"]) == (101, 202)
    assert (billing["waits_for"], billing["holds"]) == (LOCK_B, [LOCK_A])
    assert (shipping["waits_for"], shipping["holds"]) == (LOCK_A, [LOCK_B])
    for participant in (billing, shipping):
        assert "thread" in str(participant["actor"])
        assert participant["waiting_since"].endswith("Z")
    # The youngest waiter (shipping waited last) is the suggested victim.
    victim = deadlock["victim"]
    victim_actor = victim["actor"] if isinstance(victim, dict) else victim
    assert victim_actor == shipping["actor"]
    first_id = deadlock["id"]

    # The victim gives up: the deadlock resolves, keeps its id and moves to "resolved".
    since = now - 1_000_000_000
    outcome = {ev.ATTR_OUTCOME: "timeout"}
    gave_up = Event(
        ev.EVENT_WAIT_END,
        time.time_ns(),
        SHIPPING,
        lock_attrs(LOCK_A, "thread:2", since, **outcome),
    )
    await send(session, agent, [gave_up])
    await eventually(lambda: _empty(active))
    resolved = (await get(session, agent, "/api/v1/deadlocks?status=resolved"))["deadlocks"]
    assert [d["id"] for d in resolved] == [first_id]
    assert resolved[0]["status"] == "resolved"
    assert resolved[0]["resolved_at"].endswith("Z")
    every = (await get(session, agent, "/api/v1/deadlocks"))["deadlocks"]
    assert [d["id"] for d in every] == [first_id]


async def _empty(query: Callable[[], Awaitable[list[Any]]]) -> bool:
    return not await query()


async def test_consistent_order_is_not_a_deadlock(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    now = time.time_ns()
    # Both take A first: shipping waits for billing, no cycle.
    await send(
        session,
        agent,
        [
            event(ev.EVENT_HOLD_START, BILLING, LOCK_A, "thread:1", now - 2_000_000_000),
            event(ev.EVENT_HOLD_START, BILLING, LOCK_B, "thread:1", now - 2_000_000_000),
            event(ev.EVENT_WAIT_START, SHIPPING, LOCK_A, "thread:2", now - 1_000_000_000),
        ],
        wire="json",
    )
    graph = await eventually(lambda: _graph_with_edges(session, agent))
    assert (await get(session, agent, "/api/v1/deadlocks"))["deadlocks"] == []
    assert graph["edges"]


async def _graph_with_edges(session: aiohttp.ClientSession, agent: AgentRunner) -> Any:
    graph = await get(session, agent, "/api/v1/graph")
    return graph if graph["edges"] else None


async def test_locks_list_and_detail(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    await send(session, agent, ring(time.time_ns()))

    async def locks() -> list[dict[str, Any]]:
        return list((await get(session, agent, "/api/v1/locks"))["locks"])

    listed = await eventually(locks)
    assert {LOCK_A, LOCK_B} <= {item["name"] for item in listed}

    # Names contain "/": both the raw and the percent-encoded form reach the same lock.
    raw = await get(session, agent, f"/api/v1/locks/{LOCK_A}")
    encoded = await get(session, agent, f"/api/v1/locks/{quote(LOCK_A, safe='')}")
    assert raw == encoded
    assert raw["name"] == LOCK_A
    assert "billing" in str(raw["holders"])
    assert "shipping" in str(raw["waiters"])
    assert isinstance(raw["timeline"], list)


async def test_unknown_lock_is_a_json_404(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    for name in ("nope", "a/b/c", quote("x y/%z", safe="")):
        async with session.get(f"{agent.http_url}/api/v1/locks/{name}") as response:
            assert response.status == 404
            assert response.content_type == "application/json"
            assert "error" in await response.json()


async def test_bad_status_filter_is_a_json_400(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    async with session.get(agent.http_url + "/api/v1/deadlocks?status=maybe") as response:
        assert response.status == 400
        assert "error" in await response.json()


async def test_graph_has_actor_and_lock_nodes(
    agent: AgentRunner, session: aiohttp.ClientSession
) -> None:
    await send(session, agent, ring(time.time_ns()))
    graph = await eventually(lambda: _graph_with_edges(session, agent))
    assert set(graph) >= {"nodes", "edges"}
    ids = {node["id"] for node in graph["nodes"]}
    for edge in graph["edges"]:
        assert edge["source"] in ids
        assert edge["target"] in ids
    assert len(graph["nodes"]) >= 4  # two actors, two locks


async def test_processes(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    await send(session, agent, ring(time.time_ns()))

    async def processes() -> list[dict[str, Any]]:
        return list((await get(session, agent, "/api/v1/processes"))["processes"])

    listed = await eventually(processes)
    assert {(p["service"], p["pid"]) for p in listed} == {("billing", 101), ("shipping", 202)}


async def test_order_inversion(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    now = time.time_ns()

    def pair(process: ProcessInfo, first: str, second: str) -> Event:
        return Event(
            ev.EVENT_ORDER_PAIR,
            now,
            process,
            {
                ev.ATTR_ORDER_FIRST: first,
                ev.ATTR_ORDER_FIRST_MODE: "exclusive",
                ev.ATTR_ORDER_SYSTEM_FIRST: "redis",
                ev.ATTR_ORDER_SECOND: second,
                ev.ATTR_ORDER_SECOND_MODE: "exclusive",
                ev.ATTR_ORDER_SYSTEM_SECOND: "redis",
                ev.ATTR_ACTOR_ID: "thread:1",
            },
        )

    await send(session, agent, [pair(BILLING, "account:{id}", "ledger")])
    assert (await get(session, agent, "/api/v1/order-inversions"))["order_inversions"] == []
    await send(session, agent, [pair(SHIPPING, "ledger", "account:{id}")])

    async def inversions() -> list[Any]:
        body = await get(session, agent, "/api/v1/order-inversions?status=active")
        return list(body["order_inversions"])

    (inversion,) = await eventually(inversions)
    assert "ledger" in str(inversion)
    assert "account:{id}" in str(inversion)


async def test_violation_and_stale_holder_routes(session: aiohttp.ClientSession) -> None:
    config = AgentConfig(max_hold=0.5)
    async with AgentRunner(config, otlp=("127.0.0.1", 0), http=("127.0.0.1", 0)) as agent:
        now = time.time_ns()
        # Two actors in two processes both hold the same exclusive lock, for seconds.
        await send(
            session,
            agent,
            [
                event(ev.EVENT_HOLD_START, BILLING, "ledger", "thread:1", now - 5 * 10**9, now),
                event(ev.EVENT_HOLD_START, SHIPPING, "ledger", "thread:2", now - 4 * 10**9, now),
            ],
        )

        async def listing(path: str, key: str) -> list[Any]:
            return list((await get(session, agent, f"{path}?status=active"))[key])

        (violation, *_) = await eventually(lambda: listing("/api/v1/violations", "violations"))
        assert "ledger" in str(violation)
        stale = await eventually(lambda: listing("/api/v1/stale-holders", "stale_holders"))
        assert {item["service"] for item in stale} >= {"billing"}
        for item in stale:
            assert {"lock", "actor", "service", "pid", "reason", "since"} <= set(item)
        # The list also stands under the path's spelling of the kind ({"<kind>": [...]}).
        both = await get(session, agent, "/api/v1/stale-holders?status=active")
        assert both["stale-holders"] == both["stale_holders"]
        inversions = await get(session, agent, "/api/v1/order-inversions")
        assert inversions["order-inversions"] == inversions["order_inversions"]


async def test_index_links_the_api(agent: AgentRunner, session: aiohttp.ClientSession) -> None:
    async with session.get(agent.http_url + "/") as response:
        assert response.status == 200
        page = await response.text()
    for path in ("/api/v1/deadlocks", "/api/v1/locks", "/api/v1/graph", "/api/v1/processes"):
        assert f'href="{path}"' in page
        await get(session, agent, path)


def test_the_lockscope_agent_fixture(lockscope_agent: Any) -> None:
    """The pytest plugin's fixture: an in-process agent for users' own tests."""
    now = time.time_ns()
    lockscope_agent.post_events(ring(now), wire="json")
    deadlocks = lockscope_agent.wait_for(
        lambda: lockscope_agent.get("/api/v1/deadlocks?status=active")["deadlocks"]
    )
    assert sorted(deadlocks[0]["locks"]) == [LOCK_A, LOCK_B]
    assert lockscope_agent.otlp_url.startswith("http://127.0.0.1:")
    assert lockscope_agent.call(lambda: lockscope_agent.state.active_counts())["deadlock"] == 1
