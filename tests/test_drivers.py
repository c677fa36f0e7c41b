"""The wrappers compiled from one driver body (instrumentation/drivers.py): each flavour
passes the call through unchanged, and its frames are lockscope's own file and lines."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import pytest

from lockscope.instrumentation import drivers, guards, plain
from lockscope.instrumentation.adapters import Adapter


class Boom(Exception):
    pass


class _Lock:
    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        """The original's docstring."""
        if args == ("boom",):
            raise Boom("from the original")
        return ("acquired", args, kwargs)

    async def acquire_async(self, *args: Any, **kwargs: Any) -> Any:
        return self.acquire(*args, **kwargs)


def _run(flavour: Any, lock: _Lock, *args: Any, **kwargs: Any) -> Any:
    result = flavour(lock, *args, **kwargs)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


@pytest.mark.parametrize(
    ("maker", "method"),
    [
        (plain.plain_acquire, "acquire"),
        (plain.plain_release, "acquire"),
        (plain.plain_async_acquire, "acquire_async"),
        (plain.plain_async_release, "acquire_async"),
    ],
)
def test_every_plain_flavour_passes_the_call_through(maker: Any, method: str) -> None:
    original = getattr(_Lock, method)
    driver = maker(Adapter())(original)
    assert driver.__name__ == original.__name__
    assert driver.__wrapped__ is original
    assert asyncio.iscoroutinefunction(driver) == asyncio.iscoroutinefunction(original)
    lock = _Lock()
    assert _run(driver, lock, 1, key="v") == ("acquired", (1,), {"key": "v"})
    with pytest.raises(Boom, match="from the original"):
        _run(driver, lock, "boom")


def test_a_traceback_through_a_driver_points_at_its_template_line() -> None:
    driver = plain.plain_acquire(Adapter())(_Lock.acquire)
    try:
        driver(_Lock(), "boom")
    except Boom as exc:
        frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if frame.filename == drivers.__file__]
    assert len(ours) == 1
    # The compiled code keeps the template's line numbers, so the line shown is the
    # template's call (the shim off: the driver's first return).
    assert ours[0].line == "return {await_}{call}"


@pytest.mark.parametrize("guarded", [True, False])
@pytest.mark.parametrize("maker", [plain.plain_acquire, plain.plain_release])
def test_the_guarded_flavour_runs_the_original_inside_the_guard(maker: Any, guarded: bool) -> None:
    seen: list[bool] = []

    def original(self: Any, fail: bool = False) -> str:
        seen.append(guards.nested.get())
        if fail:
            raise Boom("inside")
        return "ok"

    driver = maker(Adapter(), guarded=guarded)(original)
    assert driver(object()) == "ok"
    with pytest.raises(Boom):
        driver(object(), True)
    assert seen == [guarded, guarded]
    assert guards.nested.get() is False  # reset after a return and after a raise
    # Called inside another guarded call: straight through, the guard still set.
    token = guards.nested.set(True)
    try:
        assert driver(object()) == "ok"
    finally:
        guards.nested.reset(token)
    assert seen[-1] is True


@pytest.mark.parametrize("maker", [plain.plain_acquire, plain.plain_release])
def test_the_refer_flavour_names_a_weak_holdref_and_passes_the_call_through(maker: Any) -> None:
    from lockscope.instrumentation._holdref import HoldRef

    driver = maker(Adapter(), refer=True)(_Lock.acquire)
    lock = _Lock()
    assert driver(lock, 1, key="v") == ("acquired", (1,), {"key": "v"})
    with pytest.raises(Boom, match="from the original"):
        driver(lock, "boom")
    ref = lock.__dict__["_lockscope_ref"]
    assert type(ref) is HoldRef
    assert ref.obj() is lock
    del lock  # the driver keeps no strong reference: the lock is collected as bare
    assert ref.obj() is None
