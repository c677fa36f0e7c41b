"""What the shim records about a lock call: the lock's identity, a wait, a hold.

Plain slotted objects, made on the caller's thread (one per wait, one per hold) and read
by the reporter thread; :class:`InProcessLock` is the interface the in-process locks of
:mod:`.threading_locks` offer the recorder (their holds live on the lock object itself).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from lockscope import events
from lockscope.instrumentation.metrics_aggregate import LockStats, TemplateStats
from lockscope.naming import DEFAULT_TEMPLATER

__all__ = ["Hold", "InProcessLock", "LockInfo", "Wait", "actor_id", "task_name"]


class LockInfo:
    """What the shim knows about one lock: its identity and its kind.

    ``template``: the name's template (``None``: the default templater's, from the name);
    ``process_bound``: the lock lives and dies with its process (an event attribute)."""

    __slots__ = (
        "adapter",
        "attrs",
        "bound",
        "fifo",
        "key",
        "max_leases",
        "mode",
        "name",
        "namespace",
        "reentrant",
        "span_attrs",
        "span_sites",
        "system",
        "template",
        "ttl",
    )

    def __init__(
        self,
        system: str,
        namespace: str,
        name: str,
        template: str | None = None,
        *,
        mode: str = "exclusive",
        fifo: bool = False,
        reentrant: bool = False,
        max_leases: int | None = None,
        ttl: float | None = None,
        process_bound: bool = False,
        adapter: Any = None,
    ) -> None:
        if template is None:
            template = DEFAULT_TEMPLATER(name)
        self.adapter = adapter
        """The target adapter that made this (for the reporter's holder look-up)."""
        self.bound: TemplateStats | None = None
        """This lock's template's figures in the recorder's stats (see LockStats.bind)."""
        self.system = system
        self.namespace = namespace
        self.name = name
        self.template = template
        self.mode = mode
        self.fifo = fifo
        self.reentrant = reentrant
        self.max_leases = max_leases
        self.ttl = ttl
        self.key = events.lock_key(system, namespace, name)
        attrs: dict[str, Any] = {
            events.ATTR_LOCK_SYSTEM: system,
            events.ATTR_LOCK_NAMESPACE: namespace,
            events.ATTR_LOCK_NAME: name,
            events.ATTR_LOCK_TEMPLATE: template,
            events.ATTR_LOCK_MODE: mode,
        }
        if fifo:
            attrs[events.ATTR_LOCK_FIFO] = True
        if reentrant:
            attrs[events.ATTR_LOCK_REENTRANT] = True
        if max_leases is not None:
            attrs[events.ATTR_LOCK_MAX_LEASES] = max_leases
        if ttl is not None:
            attrs[events.ATTR_LOCK_TTL] = float(ttl)
        self.attrs = attrs
        """The lock's event attributes (shared: copy before adding to it)."""
        # Spans carry fewer (each costs the SDK a validation): identity, mode, lease.
        self.span_attrs = {
            k: v
            for k, v in attrs.items()
            if k not in (events.ATTR_LOCK_TEMPLATE, events.ATTR_LOCK_FIFO)
            and not (k == events.ATTR_LOCK_MODE and v == "exclusive")
        }
        if process_bound:  # an event attribute only: spans leave it out
            attrs[events.ATTR_LOCK_PROCESS_BOUND] = True
        self.span_sites: dict[Any, dict[str, Any]] | None = None
        """Span attributes merged with a call site's code location (see spans._site_attrs)."""

    def __repr__(self) -> str:
        return f"<LockInfo {self.key} {self.mode}>"


@dataclass(slots=True, eq=False, repr=False)
class Wait:
    """One acquire in progress (identity-hashed: the registry keeps a set of them).

    ``acquire.Acquire`` (the wrappers' operation, a subclass) sets these fields itself,
    without calling ``__init__``: a field added here must be set there too."""

    info: LockInfo
    actor: int
    task: Any
    """The asyncio task waiting (``None`` for a thread)."""
    target: object
    """The lock object, for the reporter's cheap holder look-up."""
    start: int
    since_ns: int
    actor_name: str | None = None
    reported: bool = False
    holder_token: int | None = None
    holder_owner: str | None = None
    ticket: int | None = None
    code: tuple[str, int, str] | None = None
    """(file, line, function) where the actor waits, filled in when reported."""
    probed: bool = False
    """The holder look-up has run to the end (or there is none): a reported wait whose
    look-up ran past the reporter's budget, or found the library not yet queued, is
    looked up again before each heartbeat, so the snapshots carry what it learns."""


class Hold:
    """One acquired lock, until released or lost."""

    __slots__ = (
        "actor",
        "actor_name",
        "durations",
        "expires_at",
        "info",
        "obj",
        "owner",
        "reported",
        "since_ns",
        "span",
        "start",
        "target",
        "task",
        "token",
    )

    def __init__(
        self,
        info: LockInfo,
        actor: int,
        task: Any,
        target: object,
        start: int,
        since_ns: int,
        token: int | None,
        owner: str | bytes | None,
        expires_at: int | None,
        durations: list[int] | None = None,
    ) -> None:
        self.info = info
        self.actor = actor
        # Weakly: a held lock must not keep its finished task alive (filelock releases at
        # exit the holds of tasks that are gone, which it sees through weak references).
        self.task = task if task is None else _weakly(task)
        self.actor_name: str | None = None
        self.target = target
        self.obj = id(target)
        self.start = start
        self.since_ns = since_ns
        self.token = token
        self.owner = owner
        self.expires_at = expires_at
        self.reported = False
        self.span: Any = None
        """The ``lock.hold`` span while it is recording (for links and its end)."""
        self.durations = durations
        """The hold durations list of the lock's template in the recorder's stats (its
        end appends there without looking the template up); ``None``: looked up then."""


def _weakly(task: Any) -> Any:
    """A weak proxy of ``task`` (its name reads as ``None`` once it is collected)."""
    try:
        return weakref.proxy(task)
    except TypeError:
        return task


class InProcessLock(Protocol):
    """What the recorder reads and writes on an in-process lock (see threading_locks): the
    lean path keeps a hold on the lock object itself.  The fields are underscored so that
    the proxy adds no public names to the lock it stands for; they are this interface's,
    not another module's privates."""

    _since: int
    """``perf_counter_ns()`` when the recorded hold began; 0 when not held (or unrecorded)."""
    _owner: int
    """The holding thread's ident (``id(task)`` for an asyncio task)."""
    _task: Any
    """The holding asyncio task; ``None`` for a thread."""
    _hold: Hold | None
    """The hold as reported to the agent, once it lasted ``report_after``."""
    _held: list[InProcessLock]
    """The owner thread's list of held in-process locks (this lock is in it)."""
    _durations: list[int]
    """Hold durations (ns) since the reporter last folded them; negated for a hold whose
    acquisition was counted already (it waited: the wait was counted)."""
    _template: str
    _system: str

    def lock_info(self) -> LockInfo:
        """The lock's identity in this process."""
        ...

    def fold_into(self, stats: LockStats) -> None:
        """Add the lock's own counts since the last fold to ``stats``."""
        ...


def actor_id(actor: int, task: Any) -> str:
    """``thread:<ident>`` or ``task:<id>`` (unique within the process)."""
    return f"task:{actor}" if task is not None else f"thread:{actor}"


def task_name(task: Any) -> str | None:
    """An asyncio task's name, if it has one."""
    try:
        name = task.get_name()
    except Exception:
        return None
    return name if isinstance(name, str) else None
