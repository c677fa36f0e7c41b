"""The nodes of the live wait-for graph: processes, actors, locks, and the holds and waits
that connect them (the edges between actors are derived: :mod:`lockscope.agent.graph`)."""

from __future__ import annotations

from typing import Any, Final

from lockscope.agent.model import ProcessInfo

__all__ = [
    "EXCLUSIVE",
    "READ",
    "SEMAPHORE",
    "WRITE",
    "Actor",
    "Hold",
    "Lock",
    "Process",
    "Wait",
    "actor_label",
]

EXCLUSIVE: Final = "exclusive"
READ: Final = "read"
WRITE: Final = "write"
SEMAPHORE: Final = "semaphore"


class Process:
    """A reporting process (one ``service.instance.id``)."""

    __slots__ = (
        "actors",
        "alive",
        "dead_since_ns",
        "deadline_ns",
        "dropped",
        "exited",
        "info",
        "interval",
        "last_heartbeat_ns",
        "last_seen_ns",
        "schema_version",
        "seq_mark",
        "seq_mark_at_ns",
        "seq_seen",
        "seq_seen_at_ns",
        "session_ns",
        "wake_ns",
    )

    def __init__(self, info: ProcessInfo, now_ns: int) -> None:
        self.info = info
        self.alive = True
        self.last_seen_ns = now_ns
        self.last_heartbeat_ns = 0
        """Sender time of the newest heartbeat applied (0: none yet)."""
        self.seq_mark = 0
        """``lockscope.seq`` of the newest heartbeat applied (0: the process does not
        number its events, or no heartbeat yet; see :mod:`lockscope.agent.report_order`)."""
        self.seq_mark_at_ns = 0
        """Agent time when that heartbeat arrived."""
        self.seq_seen = 0
        """The highest ``lockscope.seq`` of any report applied (0: unnumbered so far)."""
        self.seq_seen_at_ns = 0
        """Agent time when it was seen."""
        self.session_ns: int | None = None
        """The longest session timeout its session-bound holds reported: a lock server
        ends such a hold this long after it last heard from the process
        (``lockscope.lock.session_timeout``: ZooKeeper's ephemeral nodes)."""
        self.interval: float | None = None
        self.deadline_ns = 0
        self.wake_ns = 0
        """When the liveness check is scheduled (its heap entry); other entries are stale."""
        self.dead_since_ns: int | None = None
        self.exited = False
        """It said it exits (its last snapshot): gone, not presumed dead."""
        self.dropped = 0
        self.schema_version: int | None = None
        self.actors: dict[str, Actor] = {}


def actor_label(info: ProcessInfo, actor_id: str, name: str | None) -> str:
    """:attr:`Actor.label` from plain values (records that outlive the actor keep these)."""
    return f"{info.service}:{info.pid}/{name or actor_id}"


class Actor:
    """A thread or task of a process: a node of the wait-for graph."""

    __slots__ = ("actor_id", "holds", "name", "process", "wait")

    def __init__(self, process: Process, actor_id: str, name: str | None) -> None:
        self.process = process
        self.actor_id = actor_id
        self.name = name
        self.wait: Wait | None = None
        self.holds: dict[str, Hold] = {}
        """Lock key -> hold."""

    @property
    def key(self) -> str:
        """``instance/actor_id``: unique across the fleet and across agent restarts."""
        return f"{self.process.info.instance}/{self.actor_id}"

    @property
    def label(self) -> str:
        """``service:pid/actor`` for people and the API's ``actor`` field."""
        return actor_label(self.process.info, self.actor_id, self.name)

    def __repr__(self) -> str:
        return f"Actor({self.key})"


_EMPTY: list[Any] = []
"""Shared empty list for idle locks (never mutated: see Lock.add_*/remove_*)."""


class Lock:
    """A lock with at least one reported hold or wait.

    ``holds`` and ``waits`` are plain lists (a lock rarely has many): a hold or wait is
    found by its actor (``actor.holds[lock.key]``, ``actor.wait``), so the lists are only
    iterated, and an idle side costs nothing.
    """

    __slots__ = (
        "_name_at",
        "exclusive_holds",
        "fifo",
        "holds",
        "key",
        "max_leases",
        "namespace",
        "process_bound",
        "reentrant",
        "system",
        "template",
        "waits",
    )

    def __init__(self, key: str, system: str, namespace: str, name: str, template: str) -> None:
        self.key = key
        self._name_at = len(key) - len(name)
        self.system = system
        self.namespace = namespace
        self.template = template
        self.fifo = False
        self.reentrant = False
        self.process_bound = False
        """The OS releases it when the holder's process dies: no orphaned finding."""
        self.max_leases: int | None = None
        self.holds: list[Hold] = _EMPTY
        self.waits: list[Wait] = _EMPTY
        self.exclusive_holds = 0
        """Holds in ``exclusive`` or ``write`` mode (readers need not look at each other)."""

    @property
    def name(self) -> str:
        """The lock's name (the key ends with it)."""
        return self.key[self._name_at :]

    def add_hold(self, h: Hold) -> None:
        """Track a hold of this lock."""
        if self.holds is _EMPTY:
            self.holds = [h]
        else:
            self.holds.append(h)
        if h.mode == EXCLUSIVE or h.mode == WRITE:
            self.exclusive_holds += 1

    def remove_hold(self, h: Hold) -> None:
        """Stop tracking a hold of this lock."""
        self.holds.remove(h)
        if not self.holds:
            self.holds = _EMPTY
        if h.mode == EXCLUSIVE or h.mode == WRITE:
            self.exclusive_holds -= 1

    def add_wait(self, w: Wait) -> None:
        """Track a wait for this lock."""
        if self.waits is _EMPTY:
            self.waits = [w]
        else:
            self.waits.append(w)

    def remove_wait(self, w: Wait) -> None:
        """Stop tracking a wait for this lock."""
        self.waits.remove(w)
        if not self.waits:
            self.waits = _EMPTY

    @property
    def kind(self) -> str:
        """``exclusive``, ``rw`` or ``semaphore``, from the modes seen on it now."""
        modes = {h.mode for h in self.holds} | {w.mode for w in self.waits}
        if SEMAPHORE in modes:
            return SEMAPHORE
        if READ in modes or WRITE in modes:
            return "rw"
        return EXCLUSIVE

    def __repr__(self) -> str:
        return f"Lock({self.key})"


class _Claim:
    """What a hold and a wait share: one actor's claim on one lock, in a mode."""

    __slots__ = ("actor", "asserted_ns", "code", "lock", "mode", "since_ns", "source")

    def __init__(
        self, lock: Lock, actor: Actor, mode: str, since_ns: int, asserted_ns: int
    ) -> None:
        self.lock = lock
        self.actor = actor
        self.mode = mode
        self.since_ns = since_ns
        self.asserted_ns = asserted_ns
        """Sender time of the newest event or heartbeat saying this claim still stands."""
        self.source: str | None = None
        """The reporting process (instance) when it is not the actor's own: a database
        watcher reporting the row locks of a session bound to an instrumented actor."""
        self.code: tuple[str | None, int | None, str | None] | None = None


class Hold(_Claim):
    """One actor's hold of one lock (an instance is identified by actor, lock and ``since``)."""

    __slots__ = ("expires_at_ns", "owner", "token")

    def __init__(
        self, lock: Lock, actor: Actor, mode: str, since_ns: int, asserted_ns: int
    ) -> None:
        super().__init__(lock, actor, mode, since_ns, asserted_ns)
        self.expires_at_ns: int | None = None
        self.token: int | None = None
        self.owner: str | None = None


class Wait(_Claim):
    """One actor's reported wait for one lock (an actor waits for at most one lock)."""

    __slots__ = ("holder_owner", "holder_token", "probed_ns", "ticket")

    def __init__(
        self, lock: Lock, actor: Actor, mode: str, since_ns: int, asserted_ns: int
    ) -> None:
        super().__init__(lock, actor, mode, since_ns, asserted_ns)
        self.probed_ns = since_ns
        """When the waiter looked up ``holder_owner``/``holder_token`` (its report)."""
        self.ticket: int | None = None
        self.holder_owner: str | None = None
        """The lock server's current owner id as the waiter saw it (where cheap)."""
        self.holder_token: int | None = None
        """The current holder's fencing token as the waiter saw it (where cheap)."""
