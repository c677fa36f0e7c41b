"""A simulated fleet of instrumented processes: the lock events their shims would report.

Used by ``benchmarks/agent_ingest.py``.  The simulation keeps a coherent lock table (one
holder per exclusive lock, FIFO hand-over to waiters, nested locks taken in a consistent
order so the random traffic itself never deadlocks) and emits what the shim reports:

* ``hold.start`` / ``hold.end`` for reported (long) holds, ``wait.start`` / ``wait.end``
  for reported waits (timeouts too), with the attributes the shim sends (lock system,
  namespace, name, template, mode, actor id and name, since, owner, lease expiry, fencing
  token, queue ticket, holder owner, code location);
* a heartbeat per process every ``heartbeat`` simulated seconds listing its reported holds
  and waits;
* every ``ring_every`` steps a deadlock ring of 2 to 8 actors in different processes whose
  last ``wait.start`` closes the cycle (the ring members' processes heartbeat between the
  first waits and the closing one, as they would in a second-long deadlock, so the agent
  has fresh evidence for every edge and reports at the closing event); the ring is broken
  (the youngest waiter times out, then everyone lets go) ``ring_life`` steps later.

Events are ``(process index, name, time_ns, attrs)`` in time order.  :func:`encode_requests`
turns them into OTLP protobuf bodies with the shim's own encoder
(:func:`lockscope.instrumentation.otlp_export.encode_events`), one ``ResourceLogs`` per run
of consecutive events of one process, so request order is event order.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from lockscope import events as ev
from lockscope.agent.model import Event, ProcessInfo
from lockscope.instrumentation.otlp_export import encode_events, key_values

MS = 1_000_000
S = 1_000_000_000

SimEvent = tuple[int, str, int, dict[str, Any]]
"""(process index, event name, time_ns, attributes)."""

_SYSTEMS = (
    # system, namespace, template, fifo, has ttl/owner, has token
    ("redis", "127.0.0.1:6379/0", "order:{id}", False, True, False),
    ("zookeeper", "127.0.0.1:2181", "/locks/job/{id}", True, False, False),
    ("database", "postgresql://127.0.0.1:5432/app", "invoice:{id}", False, True, True),
)


@dataclass(slots=True)
class _Hold:
    lock: int
    since: int
    owner: str | None
    token: int | None


@dataclass(slots=True)
class _Wait:
    lock: int
    since: int
    ticket: int | None


@dataclass(slots=True)
class _Actor:
    proc: int
    actor_id: str
    name: str
    holds: list[_Hold] = field(default_factory=list)
    wait: _Wait | None = None


@dataclass(slots=True)
class _Lock:
    index: int
    attrs: dict[str, Any]
    holder: _Actor | None = None
    waiters: list[_Actor] = field(default_factory=list)
    fifo: bool = False
    leased: bool = False
    tokens: bool = False
    next_token: int = 1
    next_ticket: int = 1


def lock_attrs(index: int, name: str | None = None) -> dict[str, Any]:
    """The shim's lock attributes for simulated lock number ``index``."""
    system, namespace, template, fifo, _leased, _tokens = _SYSTEMS[index % len(_SYSTEMS)]
    if name is None:
        name = template.replace("{id}", str(100_000 + index))
    attrs: dict[str, Any] = {
        ev.ATTR_LOCK_SYSTEM: system,
        ev.ATTR_LOCK_NAMESPACE: namespace,
        ev.ATTR_LOCK_NAME: name,
        ev.ATTR_LOCK_TEMPLATE: template,
        ev.ATTR_LOCK_MODE: "exclusive",
    }
    if fifo:
        attrs[ev.ATTR_LOCK_FIFO] = True
    if system == "redis":
        attrs[ev.ATTR_LOCK_TTL] = 30.0
    return attrs


class Fleet:
    """The simulated fleet; :meth:`run` yields its events."""

    def __init__(
        self,
        *,
        processes: int = 500,
        threads: int = 8,
        locks: int = 20_000,
        hot_locks: int = 256,
        hot_share: float = 0.1,
        timeout_share: float = 0.2,
        nest_share: float = 0.3,
        step_ns: int = 40_000,
        heartbeat: float = 1.0,
        ring_every: int = 2_000,
        ring_life: int = 300,
        base_ns: int,
        seed: int = 1,
    ) -> None:
        self.rng = random.Random(seed)
        self.t = base_ns
        self.step_ns = step_ns
        self.heartbeat_ns = int(heartbeat * S)
        self.ring_every = ring_every
        self.ring_life = ring_life
        self.hot_locks = hot_locks
        self.hot_share = hot_share
        self.timeout_share = timeout_share
        self.nest_share = nest_share
        self.n_processes = processes
        self.actors = [
            _Actor(p, f"thread:{140_000_000_000_000 + p * 100 + j}", f"worker-{j}")
            for p in range(processes)
            for j in range(threads)
        ]
        self.by_proc: list[list[_Actor]] = [[] for _ in range(processes)]
        for a in self.actors:
            self.by_proc[a.proc].append(a)
        self.locks = [self._make_lock(i, lock_attrs(i)) for i in range(locks)]
        self.ring_locks: list[_Lock] = []
        self.rings_started = 0
        self.ring_sizes: list[int] = []
        self.ring_closings: list[int] = []
        """Index (in the output of the current :meth:`run`) of each ring's closing event."""
        self._open_rings: list[tuple[int, list[_Actor]]] = []
        self._heartbeats = [
            (base_ns + self.rng.randrange(self.heartbeat_ns), p) for p in range(processes)
        ]
        heapq.heapify(self._heartbeats)
        self._out: list[SimEvent] = []
        self._step = 0

    def _make_lock(self, index: int, attrs: dict[str, Any]) -> _Lock:
        system = attrs[ev.ATTR_LOCK_SYSTEM]
        lk = _Lock(index, attrs)
        lk.fifo = bool(attrs.get(ev.ATTR_LOCK_FIFO))
        lk.leased = system in ("redis", "database")
        lk.tokens = system == "database"
        return lk

    # -- event builders -----------------------------------------------------------------
    def _tick(self) -> int:
        self.t += self.step_ns
        return self.t

    def _emit(self, actor: _Actor, name: str, attrs: dict[str, Any], t: int | None = None) -> None:
        self._out.append((actor.proc, name, self._tick() if t is None else t, attrs))

    def _actor_attrs(self, actor: _Actor, lk: _Lock) -> dict[str, Any]:
        attrs = dict(lk.attrs)
        attrs[ev.ATTR_ACTOR_ID] = actor.actor_id
        attrs[ev.ATTR_ACTOR_NAME] = actor.name
        return attrs

    def _hold_attrs(self, actor: _Actor, lk: _Lock, h: _Hold) -> dict[str, Any]:
        attrs = self._actor_attrs(actor, lk)
        attrs[ev.ATTR_SINCE] = h.since
        if h.token is not None:
            attrs[ev.ATTR_LOCK_TOKEN] = h.token
        if h.owner is not None:
            attrs[ev.ATTR_LOCK_OWNER] = h.owner
            attrs[ev.ATTR_LOCK_EXPIRES_AT] = h.since + 30 * S
        return attrs

    def _wait_attrs(self, actor: _Actor, lk: _Lock, w: _Wait) -> dict[str, Any]:
        attrs = self._actor_attrs(actor, lk)
        attrs[ev.ATTR_SINCE] = w.since
        if w.ticket is not None:
            attrs[ev.ATTR_QUEUE_POSITION] = w.ticket
        holder = lk.holder
        if holder is not None and lk.leased:
            for h in holder.holds:
                if h.lock == lk.index and h.owner is not None:
                    attrs[ev.ATTR_LOCK_HOLDER_OWNER] = h.owner
        attrs[ev.ATTR_CODE_FILE] = "/srv/app/billing/jobs.py"
        attrs[ev.ATTR_CODE_LINE] = 120 + lk.index % 50
        attrs[ev.ATTR_CODE_FUNCTION] = "InvoiceJob.run"
        return attrs

    def _lock_of(self, index: int) -> _Lock:
        return self.locks[index] if index >= 0 else self.ring_locks[-index - 1]

    # -- operations -----------------------------------------------------------------------
    def _take(self, actor: _Actor, lk: _Lock, since: int) -> None:
        lk.holder = actor
        token = None
        if lk.tokens:
            token = lk.next_token
            lk.next_token += 1
        owner = uuid.UUID(int=self.rng.getrandbits(128)).hex if lk.leased else None
        h = _Hold(lk.index, since, owner, token)
        actor.holds.append(h)
        self._emit(actor, ev.EVENT_HOLD_START, self._hold_attrs(actor, lk, h))

    def _acquire(self, actor: _Actor, lk: _Lock) -> None:
        now = self.t
        if lk.holder is None:
            self._take(actor, lk, now)
            return
        ticket = None
        if lk.fifo:
            ticket = lk.next_ticket
            lk.next_ticket += 1
        w = _Wait(lk.index, now, ticket)
        actor.wait = w
        lk.waiters.append(actor)
        self._emit(actor, ev.EVENT_WAIT_START, self._wait_attrs(actor, lk, w))

    def _end_wait(self, actor: _Actor, outcome: str) -> None:
        w = actor.wait
        assert w is not None
        lk = self._lock_of(w.lock)
        attrs = self._actor_attrs(actor, lk)
        attrs[ev.ATTR_SINCE] = w.since
        attrs[ev.ATTR_OUTCOME] = outcome
        t = self._tick()
        attrs[ev.ATTR_WAIT_DURATION] = (t - w.since) / S
        self._emit(actor, ev.EVENT_WAIT_END, attrs, t)
        actor.wait = None
        lk.waiters.remove(actor)

    def _release(self, actor: _Actor, h: _Hold, outcome: str = "released") -> None:
        lk = self._lock_of(h.lock)
        attrs = self._actor_attrs(actor, lk)
        attrs[ev.ATTR_SINCE] = h.since
        attrs[ev.ATTR_OUTCOME] = outcome
        t = self._tick()
        attrs[ev.ATTR_HOLD_DURATION] = (t - h.since) / S
        self._emit(actor, ev.EVENT_HOLD_END, attrs, t)
        actor.holds.remove(h)
        lk.holder = None
        if lk.waiters:
            nxt = lk.waiters[0]  # FIFO hand-over (tickets are in arrival order too)
            self._end_wait(nxt, "acquired")
            self._take(nxt, lk, self.t)

    def _pick_lock(self, above: int) -> _Lock:
        n = len(self.locks)
        if self.rng.random() < self.hot_share and above < self.hot_locks - 1:
            i = self.rng.randrange(above + 1, self.hot_locks)
        else:
            i = self.rng.randrange(max(above + 1, self.hot_locks), n)
        return self.locks[i]

    def _heartbeat(self, p: int, t: int) -> None:
        holds = []
        waits = []
        for a in self.by_proc[p]:
            for h in a.holds:
                holds.append(self._hold_attrs(a, self._lock_of(h.lock), h))
            if a.wait is not None:
                waits.append(self._wait_attrs(a, self._lock_of(a.wait.lock), a.wait))
        attrs = {
            ev.ATTR_SCHEMA_VERSION: ev.SCHEMA_VERSION,
            ev.ATTR_HEARTBEAT_INTERVAL: self.heartbeat_ns / S,
            ev.ATTR_DROPPED: 0,
            ev.ATTR_WAITS: waits,
            ev.ATTR_HOLDS: holds,
        }
        self._out.append((p, ev.EVENT_HEARTBEAT, t, attrs))

    def _step_random(self) -> None:
        # A burst of a few operations of one process: its shim sends them together.
        group = self.by_proc[self.rng.randrange(self.n_processes)]
        for _ in range(self.rng.randint(4, 12)):
            actor = group[self.rng.randrange(len(group))]
            if actor.actor_id.startswith("thread:ring"):
                continue
            if actor.wait is not None:
                if self.rng.random() < self.timeout_share:
                    self._end_wait(actor, "timeout")
                continue
            if not actor.holds:
                self._acquire(actor, self._pick_lock(-1))
                continue
            top = max(h.lock for h in actor.holds)
            if (
                len(actor.holds) < 3
                and top < len(self.locks) - 1
                and self.rng.random() < self.nest_share
            ):
                self._acquire(actor, self._pick_lock(top))  # nested, in lock order: no cycles
            else:
                self._release(actor, actor.holds[-1])

    def _start_ring(self) -> None:
        k = self.rng.choice((2, 2, 3, 3, 4, 8))
        procs = self.rng.sample(range(self.n_processes), k)
        n = self.rings_started
        self.rings_started += 1
        self.ring_sizes.append(k)
        members = []
        for i, p in enumerate(procs):
            a = _Actor(p, f"thread:ring-{n}-{i}", f"ring-{i}")
            self.by_proc[p].append(a)
            members.append(a)
        ring = []
        for i in range(k):
            lk = self._make_lock(-len(self.ring_locks) - 1, lock_attrs(i, f"ring:{n}:{i}"))
            self.ring_locks.append(lk)
            ring.append(lk)
        # Reported late, as the shim does: holds taken a second ago, waits that began
        # half a second ago; then the members' processes heartbeat (fresh evidence for
        # every hold) and the last wait, begun before that heartbeat, closes the ring.
        t0 = self.t
        for i, a in enumerate(members):
            self._take(a, ring[i], t0 - S)
        for i, a in enumerate(members[:-1]):
            lk = ring[i + 1]
            a.wait = _Wait(lk.index, t0 - S // 2 + i * MS, None)
            lk.waiters.append(a)
            self._emit(a, ev.EVENT_WAIT_START, self._wait_attrs(a, lk, a.wait))
        t_hb = self._tick()
        for p in procs:
            self._heartbeat(p, t_hb)
        last = members[-1]
        last.wait = _Wait(ring[0].index, t_hb - S // 4, None)
        ring[0].waiters.append(last)
        self._emit(last, ev.EVENT_WAIT_START, self._wait_attrs(last, ring[0], last.wait))
        self.ring_closings.append(len(self._out) - 1)
        self._open_rings.append((self._step + self.ring_life, members))

    def _break_ring(self, members: list[_Actor]) -> None:
        for a in reversed(members):  # the youngest waiter (the victim) gives up first
            if a.wait is not None:
                self._end_wait(a, "timeout")
        for a in members:
            for h in list(a.holds):
                self._release(a, h)
            self.by_proc[a.proc].remove(a)

    def run(self, n_events: int) -> list[SimEvent]:
        """At least ``n_events`` events (whole steps), then a drain that releases everything
        (so a replay under new process identities starts from an empty lock table)."""
        out = self._out = []
        self.ring_closings = []
        while len(out) < n_events:
            self._step += 1
            if self.ring_every and self._step % self.ring_every == 0:
                self._start_ring()
            while self._open_rings and self._open_rings[0][0] <= self._step:
                self._break_ring(self._open_rings.pop(0)[1])
            while self._heartbeats[0][0] <= self.t:
                when, p = heapq.heappop(self._heartbeats)
                self._heartbeat(p, max(when, self.t))
                heapq.heappush(self._heartbeats, (when + self.heartbeat_ns, p))
            self._step_random()
        for _, members in self._open_rings:
            self._break_ring(members)
        self._open_rings = []
        for a in self.actors:
            if a.wait is not None:
                self._end_wait(a, "timeout")
        for a in self.actors:
            while a.holds:
                self._release(a, a.holds[-1])
        for p in range(self.n_processes):
            self._heartbeat(p, self._tick())
        self._out = []
        return out


# -- encoding -------------------------------------------------------------------------------
def resource(p: int, round_: int = 0) -> dict[str, Any]:
    """Resource attributes of simulated process ``p`` in replay round ``round_``."""
    return {
        ev.RES_SERVICE_NAME: f"billing-{p % 10}",
        ev.RES_HOST_NAME: f"node-{p // 10}",
        ev.RES_PROCESS_PID: 10_000 + p,
        ev.RES_SERVICE_INSTANCE: f"sim-{round_}-{p}",
        "telemetry.sdk.language": "python",
    }


def process_info(p: int, round_: int = 0) -> ProcessInfo:
    """What the agent's decoder makes of :func:`resource`."""
    r = resource(p, round_)
    return ProcessInfo(
        service=r[ev.RES_SERVICE_NAME],
        host=r[ev.RES_HOST_NAME],
        pid=r[ev.RES_PROCESS_PID],
        instance=r[ev.RES_SERVICE_INSTANCE],
    )


def to_events(sim: Sequence[SimEvent], round_: int = 0) -> list[Event]:
    """Decoded events, as the receiver would hand them to ``AgentState.apply``."""
    infos: dict[int, ProcessInfo] = {}
    out = []
    for p, name, t, attrs in sim:
        info = infos.get(p)
        if info is None:
            info = infos[p] = process_info(p, round_)
        out.append(Event(name, t, info, attrs))
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@dataclass(slots=True)
class EncodedRequest:
    """One request's records, pre-encoded per run of one process, ready for any round."""

    blocks: list[tuple[int, bytes]]
    """(process index, serialized ScopeLogs field of its ResourceLogs)."""
    records: int

    def body(self, round_: int) -> bytes:
        """The ExportLogsServiceRequest body with process identities of ``round_``."""
        parts = []
        for p, scope_field in self.blocks:
            res = Resource(attributes=key_values(resource(p, round_))).SerializeToString()
            parts.append(_field(1, _field(1, res) + scope_field))  # resource_logs{resource, scope}
        return b"".join(parts)


def _runs(chunk: Sequence[SimEvent]) -> Iterator[tuple[int, list[SimEvent]]]:
    run: list[SimEvent] = []
    for e in chunk:
        if run and run[-1][0] != e[0]:
            yield run[0][0], run
            run = []
        run.append(e)
    if run:
        yield run[0][0], run


def encode_requests(sim: Sequence[SimEvent], per_request: int = 512) -> list[EncodedRequest]:
    """The events as OTLP log requests of ``per_request`` records (the shim's encoder)."""
    out = []
    for start in range(0, len(sim), per_request):
        chunk = sim[start : start + per_request]
        blocks = []
        for p, run in _runs(chunk):
            body = encode_events([(name, t, attrs) for _p, name, t, attrs in run], {})
            msg = ExportLogsServiceRequest.FromString(body)
            scope = msg.resource_logs[0].scope_logs[0].SerializeToString()
            blocks.append((p, _field(2, scope)))
        out.append(EncodedRequest(blocks, len(chunk)))
    return out
