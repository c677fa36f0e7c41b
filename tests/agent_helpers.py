"""Event builders for the agent's unit tests (test_graph, test_store, test_detect_*)."""

from __future__ import annotations

from functools import partial
from typing import Any

from lockscope import events as ev
from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event, ProcessInfo
from lockscope.agent.state import AgentState
from lockscope.agent.web_api import (
    api_deadlocks,
    api_order_inversions,
    api_stale_holders,
    api_violations,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S


def proc(n: int | str, service: str = "svc") -> ProcessInfo:
    """Process number ``n`` (pid 1000+n, instance ``inst-n``)."""
    pid = 1000 + n if isinstance(n, int) else 4242
    return ProcessInfo(service=service, host="host", pid=pid, instance=f"inst-{n}")


class World:
    """An AgentState with a fake clock and terse event helpers.

    Actors are named ``"P.T"``: process P, thread T (process of "1.2" is ``inst-1``).
    """

    def __init__(self, config: AgentConfig | None = None, **kw: Any) -> None:
        # Unit tests of graph semantics report candidates at once (evidence_timeout=0)
        # unless they pass a config; the evidence gate has its own tests.
        self.now = T0
        config = config or AgentConfig(**{"evidence_timeout": 0, **kw})
        self.state = AgentState(config, clock=lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)
        self.state.tick(self.now)

    @staticmethod
    def split(actor: str) -> tuple[ProcessInfo, str]:
        p, _, t = actor.partition(".")
        return proc(int(p) if p.isdigit() else p), f"thread:{t or '1'}"

    def lock_attrs(
        self,
        lock: str,
        system: str = "redis",
        mode: str = "exclusive",
        **extra: Any,
    ) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            ev.ATTR_LOCK_SYSTEM: system,
            ev.ATTR_LOCK_NAMESPACE: "ns",
            ev.ATTR_LOCK_NAME: lock,
            ev.ATTR_LOCK_MODE: mode,
        }
        attrs.update(extra)
        return attrs

    def event(self, name: str, actor: str, attrs: dict[str, Any], t: int | None = None) -> Event:
        info, actor_id = self.split(actor)
        attrs = {ev.ATTR_ACTOR_ID: actor_id, **attrs}
        return Event(name, self.now if t is None else t, info, attrs)

    def send(
        self,
        name: str,
        actor: str,
        lock: str,
        *,
        t: int | None = None,
        since: int | None = None,
        **kw: Any,
    ) -> None:
        attrs = self.lock_attrs(lock, **kw)
        attrs[ev.ATTR_SINCE] = self.now if since is None else since
        self.state.apply(self.event(name, actor, attrs, t))

    def hold(self, actor: str, lock: str, **kw: Any) -> None:
        self.send(ev.EVENT_HOLD_START, actor, lock, **kw)

    def release(self, actor: str, lock: str, since: int | None = None, **kw: Any) -> None:
        self.send(
            ev.EVENT_HOLD_END,
            actor,
            lock,
            since=since if since is not None else self.hold_since(actor, lock),
            **kw,
        )

    def wait(self, actor: str, lock: str, **kw: Any) -> None:
        self.send(ev.EVENT_WAIT_START, actor, lock, **kw)

    def end_wait(self, actor: str, lock: str, outcome: str = "timeout", **kw: Any) -> None:
        since = self.wait_since(actor)
        attrs: dict[str, Any] = {ev.ATTR_OUTCOME: outcome, **kw}
        self.send(ev.EVENT_WAIT_END, actor, lock, since=since, **attrs)

    def hold_since(self, actor: str, lock: str) -> int | None:
        for a in self.state.actors():
            if a.key == self.actor_key(actor):
                for h in a.holds.values():
                    if h.lock.name == lock:
                        return h.since_ns
        return None

    def held_since(self, actor: str, lock: str) -> int:
        """``hold_since`` of a hold the state must have."""
        since = self.hold_since(actor, lock)
        assert since is not None, f"{actor} holds no {lock}"
        return since

    def wait_since(self, actor: str) -> int | None:
        for a in self.state.actors():
            if a.key == self.actor_key(actor) and a.wait is not None:
                return a.wait.since_ns
        return None

    def actor_key(self, actor: str) -> str:
        info, actor_id = self.split(actor)
        return f"{info.instance}/{actor_id}"

    def heartbeat(
        self,
        process: int | str,
        holds: list[dict[str, Any]] | None = None,
        waits: list[dict[str, Any]] | None = None,
        interval: float = 1.0,
        t: int | None = None,
        exiting: bool = False,
    ) -> None:
        attrs: dict[str, Any] = {
            ev.ATTR_HOLDS: holds or [],
            ev.ATTR_WAITS: waits or [],
            ev.ATTR_HEARTBEAT_INTERVAL: interval,
        }
        if exiting:
            attrs[ev.ATTR_EXITING] = True
        self.state.apply(
            Event(ev.EVENT_HEARTBEAT, self.now if t is None else t, proc(process), attrs)
        )

    def entry(self, actor: str, lock: str, since: int, **kw: Any) -> dict[str, Any]:
        _info, actor_id = self.split(actor)
        return {ev.ATTR_ACTOR_ID: actor_id, ev.ATTR_SINCE: since, **self.lock_attrs(lock, **kw)}

    # -- findings -----------------------------------------------------------------------------
    def deadlocks(self) -> list[set[str]]:
        """Participant key sets of the active deadlocks."""
        return [set(members_keys) for members_keys in self.deadlock_keys()]

    def deadlock_keys(self) -> list[frozenset[str]]:
        return [frozenset(m.key for m in ms) for ms in self.state.deadlocks.active_members()]

    def keys(self, *actors: str) -> set[str]:
        return {self.actor_key(a) for a in actors}

    def active(self, kind_key: str) -> list[dict[str, Any]]:
        api = {
            "deadlocks": partial(api_deadlocks, self.state),
            "stale_holders": partial(api_stale_holders, self.state),
            "violations": partial(api_violations, self.state),
            "order_inversions": partial(api_order_inversions, self.state),
        }[kind_key]
        return [d for d in api()[kind_key] if d["status"] == "active"]


FIFO = {ev.ATTR_LOCK_FIFO: True}


def ring(w: World, n: int, systems: list[str] | None = None) -> list[str]:
    """Actor i holds L{i} and waits for L{i+1}: a ring of n processes."""
    actors = [f"{i + 1}.1" for i in range(n)]
    systems = systems or ["redis"] * n
    for i, a in enumerate(actors):
        w.hold(a, f"L{i}", system=systems[i])
        w.advance(0.01)
    for i, a in enumerate(actors):
        j = (i + 1) % n
        w.wait(a, f"L{j}", system=systems[j])
        w.advance(0.01)
    return actors
