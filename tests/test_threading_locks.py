"""The opt-in threading target behaves as the bare lock: each test is an attack that
once told the traced lock from the bare one (or hid a hold from the agent)."""

from __future__ import annotations

import _thread
import contextlib
import copy
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lockscope import events
from lockscope.instrumentation import LockscopeInstrumentor, runtime
from lockscope.instrumentation.config import ShimConfig
from lockscope.instrumentation.threading_locks import TracedLock, TracedRLock
from lockscope.testing.otlp_sink import OtlpSink
from polling import wait_until


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


@contextlib.contextmanager
def instrumented(sink: OtlpSink) -> Iterator[runtime.Shim]:
    config = ShimConfig(endpoint=sink.endpoint, report_after=0.05, heartbeat=0.2,
                        metrics_export="none")  # fmt: skip
    instrumentor = LockscopeInstrumentor()
    instrumentor.instrument(config=config, threading=True)
    assert runtime.current is not None
    try:
        yield runtime.current
    finally:
        instrumentor.uninstrument()


def outcome(call: Callable[[], Any]) -> tuple[str, str]:
    """What a call did, as comparable data: its result, or its exception's type and text."""
    try:
        return "returned", repr(call())
    except Exception as exc:
        return type(exc).__name__, str(exc)


BAD_ARGUMENTS: list[tuple[Any, ...]] = [
    (True, float("nan")),
    (True, 1e100),
    (True, -2),
    (False, 1),
    (True, "soon"),
    (True, float("inf")),
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=repr)
@pytest.mark.parametrize("factory", ["Lock", "RLock"])
def test_bad_acquire_arguments_are_refused_as_bare(
    sink: OtlpSink, factory: str, args: tuple[Any, ...]
) -> None:
    bare_lock = getattr(threading, factory)()
    bare = outcome(lambda: bare_lock.acquire(*args))
    with instrumented(sink):
        lock = getattr(threading, factory)()
        assert isinstance(lock, TracedLock | TracedRLock)
        traced = outcome(lambda: lock.acquire(*args))
        assert traced == bare
        # Refused means not taken: another thread can take it at once.
        taken = outcome(lambda: lock.acquire(False))
    assert taken == outcome(lambda: getattr(threading, factory)().acquire(False))
    assert bare[0] != "returned" or args[0] is True


def test_traced_lock_has_the_lock_types_names_and_isinstance(sink: OtlpSink) -> None:
    bare = threading.Lock()
    with instrumented(sink):
        lock = threading.Lock()
        rlock = threading.RLock()
        # Typeshed types threading.Lock() as the final _thread.lock: seen as object, the
        # traced lock's own type can be checked without mypy calling it impossible.
        seen: object = lock
        assert isinstance(seen, TracedLock)
        assert isinstance(lock, _thread.LockType)
        assert isinstance(rlock, type(threading.RLock()))
        rlock_type: type = type(rlock)  # a plain type: mypy deems two final lock types disjoint
        assert not isinstance(lock, rlock_type)
        assert lock.acquire_lock()
        assert lock.locked_lock()
        lock.release_lock()
        assert not lock.locked()
        public = {n for n in dir(bare) if not n.startswith("__")}
        assert public <= set(dir(lock))
        assert not hasattr(rlock, "acquire_lock")  # _thread.RLock has no alias names
        assert repr(lock).startswith("<unlocked _thread.lock object")
        with rlock, rlock:
            assert rlock._recursion_count() == 2  # type: ignore[attr-defined]  # CPython-private


@pytest.mark.parametrize("factory", ["Lock", "RLock"])
@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps], ids=lambda f: f.__name__)
def test_traced_lock_cannot_be_copied_or_pickled(
    sink: OtlpSink, factory: str, how: Callable[[Any], Any]
) -> None:
    bare = outcome(lambda: how(getattr(threading, factory)()))
    assert bare[0] == "TypeError"
    with instrumented(sink):
        lock = getattr(threading, factory)()
        assert isinstance(lock, TracedLock | TracedRLock)
        assert outcome(lambda: how(lock)) == bare


def test_foreign_rlock_release_is_refused_and_the_owners_hold_stays_reported(
    sink: OtlpSink,
) -> None:
    with instrumented(sink) as shim:
        rlock: object = threading.RLock()  # a TracedRLock (typeshed: the final RLock)
        assert isinstance(rlock, TracedRLock)
        held = threading.Event()
        done = threading.Event()

        def owner() -> None:
            with rlock:
                held.set()
                done.wait(30)

        thread = threading.Thread(target=owner, name="owner")
        thread.start()
        try:
            assert held.wait(30)
            # The attack: another thread releases the RLock it does not own, and catches it.
            with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
                rlock.release()
            # The owner still holds it; the agent must still be told so (a hidden hold
            # would hide a deadlock through this lock).
            name = rlock._site
            start = sink.wait_for(
                lambda e: (
                    e.name == events.EVENT_HOLD_START and e.attrs[events.ATTR_LOCK_NAME] == name
                )
            )
            assert start.attrs[events.ATTR_ACTOR_NAME] == "owner"
            wait_until(
                lambda: any(h[events.ATTR_LOCK_NAME] == name for h in shim.recorder.snapshot()[1]),
                timeout=10,
            )
            assert not sink.named(events.EVENT_HOLD_END)
            assert not rlock.acquire(False)  # still owned by the owner thread
        finally:
            done.set()
            thread.join(30)
        sink.wait_for(
            lambda e: e.name == events.EVENT_HOLD_END and e.attrs[events.ATTR_LOCK_NAME] == name
        )


def test_foreign_release_inside_condition_wait_is_refused_as_bare(sink: OtlpSink) -> None:
    with instrumented(sink):
        rlock = threading.RLock()
        condition = threading.Condition(rlock)
        with pytest.raises(RuntimeError):
            condition.wait(0)  # not owned: refused before anything is released
        with condition:
            assert not condition.wait(0.01)
            assert rlock._is_owned()  # type: ignore[attr-defined]


def test_bad_arguments_leave_no_wait_or_hold_behind(sink: OtlpSink) -> None:
    with instrumented(sink) as shim:
        lock = threading.Lock()
        for args in BAD_ARGUMENTS:
            outcome(lambda: lock.acquire(*args))  # noqa: B023 (called at once)
        assert not lock.locked()
        now = time.perf_counter_ns()
        assert shim.recorder.due_waits(now + 10**12) == []
        assert shim.recorder.snapshot() == ([], [])
