"""instrumentation/recorder.py: the registry's rules (pairs, report order, bounds, index)."""

from __future__ import annotations

import threading
import time

import pytest

from lockscope import events
from lockscope.instrumentation.recorder import Hold, LockInfo, Recorder


def hold(recorder: Recorder, info: LockInfo, actor: int, target: object) -> Hold:
    """An acquire that returned at once, as a wrapper records it."""
    held = recorder.end_wait(recorder.begin_wait(info, actor, None, target), "acquired")
    assert held is not None
    return held


def test_recorder_pairs_once_and_reports_holds_before_waits() -> None:
    recorder = Recorder(report_after=0.0)
    a = LockInfo("redis", "ns", "a:1", "a:{id}")
    b = LockInfo("redis", "ns", "b:1", "b:{id}")
    target_a, target_b = object(), object()
    for _ in range(2):
        wait = recorder.begin_wait(a, 1, None, target_a)
        hold_a = recorder.end_wait(wait, "acquired")
        wait = recorder.begin_wait(b, 1, None, target_b)
        hold_b = recorder.end_wait(wait, "acquired")
        assert hold_a is not None
        assert hold_b is not None
        recorder.end_hold(hold_b)
        recorder.end_hold(hold_a)
    pairs = [e for e in recorder.drain(100) if e[0] == events.EVENT_ORDER_PAIR]
    assert len(pairs) == 1
    assert pairs[0][2][events.ATTR_ORDER_FIRST] == "a:{id}"

    hold = recorder.end_wait(recorder.begin_wait(a, 1, None, target_a), "acquired")
    wait = recorder.begin_wait(b, 1, None, target_b)
    recorder.report(time.perf_counter_ns(), recorder.due_waits(time.perf_counter_ns()))
    names = [e[0] for e in recorder.drain(100)]
    assert names == [events.EVENT_HOLD_START, events.EVENT_WAIT_START]
    recorder.end_wait(wait, "timeout")
    assert hold is not None
    recorder.end_hold(hold, "lost")
    names = [e[0] for e in recorder.drain(100)]
    assert names == [events.EVENT_WAIT_END, events.EVENT_LOCK_LOST, events.EVENT_HOLD_END]


def test_recorder_queue_is_bounded_and_counts_drops() -> None:
    recorder = Recorder(queue_size=3)
    for _ in range(5):
        recorder.emit(events.EVENT_HEARTBEAT, 0, {})
    assert recorder.pending() == 3
    assert recorder.dropped == 2


def test_reporter_side_reads_survive_concurrent_lock_calls() -> None:
    recorder = Recorder(report_after=0.0)
    info = LockInfo("redis", "ns", "busy", "busy")
    stop = threading.Event()

    def hammer(actor: int) -> None:
        target = object()
        while not stop.is_set():
            hold = recorder.end_wait(recorder.begin_wait(info, actor, None, target), "acquired")
            assert hold is not None
            recorder.end_hold(hold)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            now = time.perf_counter_ns()
            recorder.report(now, recorder.due_waits(now))
            recorder.snapshot()
            recorder.drain(1000)
            recorder.stats.snapshot()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    _, acquisitions, _, waits, holds = recorder.stats.snapshot()
    counted = acquisitions[("busy", "redis", "acquired")]
    assert counted > 0
    assert sum(waits[("busy", "redis")][:-1]) == counted
    assert sum(holds[("busy", "redis")][:-1]) == counted


def test_recorder_holder_of_finds_the_hold_of_a_key_among_many() -> None:
    recorder = Recorder()
    infos = [LockInfo("redis", "ns", f"k:{i}", "k:{id}") for i in range(500)]
    targets = [object() for _ in infos]
    holds = [hold(recorder, info, i, targets[i]) for i, info in enumerate(infos)]
    wanted = infos[321]
    assert recorder.holder_of(wanted.key) is holds[321]
    assert recorder.holder_of("redis:ns/k:none") is None
    # A second holder of the same key (a shared lock): the oldest hold answers until released.
    other = hold(recorder, wanted, 9999, object())
    assert recorder.holder_of(wanted.key) is holds[321]
    recorder.end_hold(holds[321])
    assert recorder.holder_of(wanted.key) is other
    recorder.end_hold(other)
    assert recorder.holder_of(wanted.key) is None
    assert recorder.find_hold(object(), 0, wanted.key) is None
    # Lost: gone from the index too, and a late release of the lost hold changes nothing.
    lost = infos[7]
    recorder.end_hold(holds[7], "lost")
    assert recorder.holder_of(lost.key) is None
    assert recorder.stats.snapshot()[2] == {("k:{id}", "redis"): 1}
    recorder.end_hold(holds[7])
    assert recorder.holder_of(lost.key) is None
    # Re-entrant: two holds of one object; the key stays held until both end.
    again = hold(recorder, infos[8], 8, targets[8])
    recorder.end_hold(holds[8])
    assert recorder.holder_of(infos[8].key) is again
    assert recorder.holder_of(infos[9].key) is holds[9]
    # Fork reset: the parent's holds are not the child's.
    recorder.reset()
    assert all(recorder.holder_of(info.key) is None for info in infos)
    recorder.end_hold(holds[9])  # the parent's hold, released in the child: ignored
    assert recorder.holder_of(infos[9].key) is None


def test_the_reported_clock_never_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 1 (shim side): a host clock stepped back 120 s is followed at 1 ms per
    second at most, so this process's reports and their since values keep their order; a
    clock stepped forward is followed at once."""
    recorder = Recorder()
    real = time.time_ns
    before = recorder.wall(time.perf_counter_ns())
    monkeypatch.setattr(time, "time_ns", lambda: real() - 120 * 10**9)
    recorder.sync_clock()
    after = recorder.wall(time.perf_counter_ns())
    assert after >= before
    assert after - real() < 10**9  # it did not jump back, nor forward
    monkeypatch.setattr(time, "time_ns", lambda: real() + 60 * 10**9)
    recorder.sync_clock()
    assert recorder.wall(time.perf_counter_ns()) - real() > 59 * 10**9


def test_recorder_counts_every_outcome_once_and_buckets_every_wait() -> None:
    """Acquisitions are counted by the reporter's fold, other outcomes at once (their wait
    kept as ``~ns``): each counted once, each wait bucketed with a non-negative duration."""
    recorder = Recorder(report_after=60.0)
    info = LockInfo("redis", "ns", "k1", "k")
    other = LockInfo("redis", "ns", "k2", "k")
    target = object()
    first = recorder.end_wait(recorder.begin_wait(info, 1, None, target), "acquired")
    # A second lock while holding the first: the path that notes the order pair.
    second = recorder.end_wait(recorder.begin_wait(other, 1, None, object()), "acquired")
    assert recorder.end_wait(recorder.begin_wait(info, 2, None, target), "timeout") is None
    assert recorder.end_wait(recorder.begin_wait(info, 2, None, target), "error") is None
    # An in-process lock's acquire (it keeps its hold itself): counted, no hold.
    assert recorder.end_wait(recorder.begin_wait(info, 3, None, object()), "acquired",
                             hold=False) is None  # fmt: skip
    assert first is not None
    assert second is not None
    assert recorder.find_hold(target, 1) is first
    recorder.end_hold(second)
    recorder.end_hold(first, "lost")
    recorder.end_hold(first)  # already ended: not counted twice
    assert recorder.find_hold(target, 1) is None
    assert recorder.by_actor == {}
    _, acquisitions, lost, waits, holds = recorder.stats.snapshot()
    assert acquisitions == {
        ("k", "redis", "acquired"): 3,
        ("k", "redis", "timeout"): 1,
        ("k", "redis", "error"): 1,
    }
    assert lost == {("k", "redis"): 1}
    assert sum(waits[("k", "redis")][:-1]) == 5
    assert 0 <= waits[("k", "redis")][-1] < 60
    assert sum(holds[("k", "redis")][:-1]) == 2
    assert 0 <= holds[("k", "redis")][-1] < 60
    # A second fold counts nothing again.
    assert recorder.stats.snapshot()[1] == acquisitions
