"""instrumentation/metrics_aggregate.py: the in-process aggregates (counts, bucketed durations)."""

from __future__ import annotations

import pytest

from lockscope.instrumentation.metrics_aggregate import BOUNDS, OTHER, LockStats


def test_in_process_durations_are_bucketed_and_counted_once() -> None:
    stats = LockStats()
    # Two holds that did not wait (counted here), one that waited (counted with its wait).
    stats.fold_in_process("a", "threading", [0, -300_000_000, int(BOUNDS[3] * 1e9)])
    _, acquisitions, _, waits, holds = stats.snapshot()
    assert acquisitions == {("a", "threading", "acquired"): 2}
    assert waits[("a", "threading")][0] == 2
    hist = holds[("a", "threading")]
    assert hist[0] == 1
    assert hist[3] == 1  # exactly on a bound: that bucket
    assert hist[BOUNDS.index(0.5)] == 1
    assert hist[-1] == pytest.approx(0.3 + BOUNDS[3])
    assert sum(hist[:-1]) == 3


def test_bound_figures_are_live_and_templates_are_capped() -> None:
    stats = LockStats(max_templates=2)
    bound = stats.bind("a", "redis")
    assert stats.bind("a", "redis").holds is bound.holds  # one set of figures per template
    bound.outcomes["timeout"] = 1
    bound.waits[5] += 1
    stats.bind("b", "redis")
    over = stats.bind("c", "redis")  # over the cap
    over.outcomes["acquired"] = 1
    _, acquisitions, _, waits, _ = stats.snapshot()
    assert acquisitions == {("a", "redis", "timeout"): 1, (OTHER, "redis", "acquired"): 1}
    assert waits[("a", "redis")][5] == 1
    bound.waits[5] += 1  # a snapshot is a copy
    assert waits[("a", "redis")][5] == 1
    stats.reset()
    assert stats.snapshot()[1] == {}


def test_hot_path_durations_are_bucketed_by_the_fold_once() -> None:
    stats = LockStats()
    bound = stats.bind("b", "redis")
    assert stats.bind("b", "redis").wait_ns is bound.wait_ns  # one list per template
    bound.wait_ns.extend([50_000, int(BOUNDS[4] * 1e9)])  # as end_wait appends them
    bound.hold_ns.append(3_000_000_000)
    _, _, _, waits, holds = stats.snapshot()  # a snapshot folds first
    wait_hist, hold_hist = waits[("b", "redis")], holds[("b", "redis")]
    assert wait_hist[BOUNDS.index(0.0001)] == 1
    assert wait_hist[4] == 1  # exactly on a bound: that bucket
    assert sum(wait_hist[:-1]) == 2
    assert wait_hist[-1] == pytest.approx(50e-6 + BOUNDS[4])
    assert hold_hist[BOUNDS.index(5.0)] == 1
    assert bound.wait_ns == []
    assert bound.hold_ns == []
    stats.fold()  # nothing left to count twice
    assert stats.snapshot()[3][("b", "redis")] == wait_hist
    bound.hold_ns.append(1)
    stats.fold()
    assert sum(stats.snapshot()[4][("b", "redis")][:-1]) == 2
