"""The typed changes the store emits, and the detector protocol that receives them.

Each change is a small frozen record naming the store objects it is about; a subscriber
reads them (and anything else in the store) but changes the store only through its public
operations.  Changes are delivered synchronously, in the order they happen, while the store
applies an event or ticks; :class:`Detector.flush` then runs once per event, so a detector
can collect what changed and do its work once.

=====================  ==================================================================
change                 when
=====================  ==================================================================
:class:`HoldAdded`     a hold instance is seen for the first time
:class:`HoldAsserted`  its holder says (event or heartbeat, sent at ``at_ns``) it holds it
:class:`HoldExtended`  its lease was extended (``hold.expires_at_ns`` is the new end)
:class:`HoldDropped`   it ended: ``reason`` is ``released``, ``lost``, ``process_dead``,
                       ``lease_expired`` (a gone process's lease ran out) or ``forgotten``
:class:`LockLost`      the holder reported losing the lock (before the hold is dropped)
:class:`WaitAdded`     a wait began (an actor waits for one lock at a time)
:class:`WaitChanged`   a wait's queue ticket changed
:class:`WaitDropped`   a wait ended
:class:`ActorRemoved`  an actor with no hold and no wait left was removed
:class:`SnapshotApplied`  a process's heartbeat snapshot was reconciled
:class:`ProcessDied`   a process stopped heartbeating (``exited``: it said it exits)
:class:`ProcessRevived`  a process presumed dead reported again
:class:`ProcessForgotten`  a dead process was dropped (``dead_process_retention``)
=====================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lockscope.agent.graph import Actor, Hold, Lock, Process, Wait

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = [
    "ActorRemoved",
    "Change",
    "Detector",
    "HoldAdded",
    "HoldAsserted",
    "HoldDropped",
    "HoldExtended",
    "LockLost",
    "ProcessDied",
    "ProcessForgotten",
    "ProcessRevived",
    "SnapshotApplied",
    "WaitAdded",
    "WaitChanged",
    "WaitDropped",
]


# Changes that carry the same fields share a frozen, slotted base; each change is still its
# own type (subscriptions are by exact type).
@dataclass(frozen=True, slots=True)
class _OfHold:
    hold: Hold


@dataclass(frozen=True, slots=True)
class _OfHoldAt:
    hold: Hold
    at_ns: int


@dataclass(frozen=True, slots=True)
class _OfWait:
    wait: Wait


@dataclass(frozen=True, slots=True)
class _OfProcess:
    process: Process


class HoldAdded(_OfHold):
    """A hold instance (actor, lock, ``since``) seen for the first time."""

    __slots__ = ()


class HoldAsserted(_OfHoldAt):
    """The holder said, at sender time ``at_ns``, that it still holds ``hold``."""

    __slots__ = ()


class HoldExtended(_OfHoldAt):
    """The holder extended its lease (at sender time ``at_ns``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HoldDropped(_OfHold):
    """The hold ended (``reason``: see the module table)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LockLost:
    """``actor`` reported at ``at_ns`` that it lost ``lock``; ``hold`` is the matching hold
    (None if the agent did not know it), ``since_ns`` when that hold began (if known)."""

    lock: Lock
    actor: Actor
    hold: Hold | None
    since_ns: int | None
    at_ns: int


class WaitAdded(_OfWait):
    """A wait began."""

    __slots__ = ()


class WaitChanged(_OfWait):
    """A wait's queue ticket changed."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class WaitDropped(_OfWait):
    """A wait ended (``outcome``: how, when the store knows, e.g. ``deadlock_victim``)."""

    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class ActorRemoved:
    """An actor with nothing left was removed: drop any reference to it."""

    actor: Actor


@dataclass(frozen=True, slots=True)
class SnapshotApplied(_OfProcess):
    """A heartbeat of ``process`` (sent at ``at_ns``) was reconciled."""

    at_ns: int


@dataclass(frozen=True, slots=True)
class ProcessDied(_OfProcess):
    """The process stopped heartbeating (``exited``: it announced a clean exit).

    Its waits and its in-process holds are already gone; the holds left outlive it (until
    their lease ends, when the store drops them with reason ``lease_expired``)."""

    exited: bool = False


class ProcessRevived(_OfProcess):
    """A process presumed dead reported again."""

    __slots__ = ()


class ProcessForgotten(_OfProcess):
    """A dead process was dropped with all it held."""

    __slots__ = ()


Change = (
    HoldAdded
    | HoldAsserted
    | HoldExtended
    | HoldDropped
    | LockLost
    | WaitAdded
    | WaitChanged
    | WaitDropped
    | ActorRemoved
    | SnapshotApplied
    | ProcessDied
    | ProcessRevived
    | ProcessForgotten
)


class Detector(Protocol):
    """A peer of the store: subscribes to changes (in :meth:`attach`) and keeps its policy.

    The store calls :meth:`flush` after every applied event (unless the detector has a
    ``batches = False`` attribute: its flush does nothing) and every tick, and
    :meth:`tick` about every 100 ms (agent time ``now_ns``).
    """

    def attach(self, store: LockStore) -> None:
        """Subscribe to the store's changes (and register event handlers, if any)."""

    def flush(self, now_ns: int) -> None:
        """Act on what changed since the last flush."""

    def tick(self, now_ns: int) -> None:
        """Time-driven work (timers, expiry)."""
