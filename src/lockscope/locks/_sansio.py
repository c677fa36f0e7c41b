"""Lock algorithms written once, without I/O, and the two small runners that drive them.

As in h11 and httpcore, an operation (acquire on a quorum of Redis servers, a fair
queue's try, a retry loop with backoff) is a generator that *yields* what it needs done
and is *sent* the result:

* a :class:`Batch` (a list of :class:`Call`): server calls, answered with the list of
  replies in the same order (a server that failed answers :class:`Failure` when the
  executor collects failures, as Redlock's does; otherwise its error is raised into the
  operation);
* :class:`Sleep`: wait that long;
* :class:`Invoke`: call a function (in the asyncio runner its result is awaited), for
  wrappers whose step is another lock's method.

:func:`run` drives an operation with blocking calls, :func:`run_async` on the event loop;
the sync and asyncio flavours of a lock differ only in which runner and executor they
use. An exception from a step is raised inside the operation at its ``yield``, so the
algorithm handles failures where it made the call.

When the awaiting task is cancelled, :func:`run_async` raises :class:`GiveBack` inside
the operation: the operation may yield steps that undo what it may have done (delete a
key whose SET may have landed, leave a queue), which run shielded from the cancellation;
then the ``CancelledError`` propagates. That is the one place where an asyncio lock gives
back on cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Batch", "Call", "Failure", "GiveBack", "Invoke", "Op", "Sleep", "run", "run_async"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Call:
    """One server call: a script registered by the lock (by name) or a client method."""

    server: int
    """Index of the server in the lock's list (0 for single-server locks)."""
    command: str
    keys: tuple[Any, ...] = ()
    args: tuple[Any, ...] = ()


Batch = list[Call]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call ``fn(*args, **kwargs)``; the asyncio runner awaits what it returns."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class Failure:
    """A server that did not answer (refused, timed out, or replied with an error)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class GiveBack(Exception):
    """Raised inside an operation whose caller was cancelled; see the module docstring.

    The operation may catch it, yield the steps that undo its effects, and must then
    re-raise it (or let it propagate).
    """


Step = Batch | Sleep | Invoke
Op = Generator[Step, Any, _T]
Execute = Callable[[Batch], Any]


def _perform(step: Step, execute: Execute | None) -> Any:
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return None
    if isinstance(step, Invoke):
        return step.fn(*step.args, **step.kwargs)
    assert execute is not None, "this operation has no servers to call"
    return execute(step)


def run(op: Op[_T], execute: Execute | None = None) -> _T:
    """Drive ``op`` with blocking calls; ``execute`` runs its server batches."""
    try:
        step = next(op)
        while True:
            try:
                result = _perform(step, execute)
            except BaseException as exc:  # KeyboardInterrupt too: the op cleans up
                step = op.throw(exc)
            else:
                step = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _perform_async(step: Step, execute: Callable[[Batch], Awaitable[Any]] | None) -> Any:
    if isinstance(step, Sleep):
        await asyncio.sleep(step.seconds)
        return None
    if isinstance(step, Invoke):
        return await step.fn(*step.args, **step.kwargs)
    assert execute is not None, "this operation has no servers to call"
    return await execute(step)


async def run_async(op: Op[_T], execute: Callable[[Batch], Awaitable[Any]] | None = None) -> _T:
    """Drive ``op`` on the event loop; ``execute`` runs its server batches."""
    try:
        step = next(op)
        while True:
            try:
                result = await _perform_async(step, execute)
            except asyncio.CancelledError:
                await _give_back(op, execute)
                raise
            except Exception as exc:
                step = op.throw(exc)
            else:
                step = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _give_back(op: Op[Any], execute: Callable[[Batch], Awaitable[Any]] | None) -> None:
    """Let a cancelled ``op`` undo what it did, shielded; the cancellation then goes on.

    A second cancellation while this runs propagates at once (the shielded step still
    finishes). A failure of the clean-up is not raised: what it could not undo ends with
    its lease.
    """
    try:
        step = op.throw(GiveBack())
        while True:
            try:
                result = await asyncio.shield(_perform_async(step, execute))
            except Exception as exc:
                step = op.throw(exc)
            else:
                step = op.send(result)
    except (GiveBack, StopIteration):
        return
    except Exception:
        return
