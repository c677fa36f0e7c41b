"""Python (and C) function calls per acquire+release cycle, bare vs instrumented.

Load-independent where ``shim_overhead.py``'s timings are not: the number of calls a
cycle makes does not change with the machine's load.  Each configuration runs in a
process of its own (``--src`` picks the source tree, so two trees compare in one sitting)
against redis-py ``Lock`` objects whose server round trips are no-ops (the diagnostic
target of ``shim_overhead.py``), sync and asyncio.

    .venv/bin/python benchmarks/shim_calls.py
    .venv/bin/python benchmarks/shim_calls.py --src before=/tmp/old/src --src after=src

``--instructions`` also runs each configuration under ``valgrind --tool=callgrind`` twice
(1,000 and 3,000 cycles, no profiler) and reports the difference per cycle: machine
instructions, as load-independent as the call counts and seeing the C code too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import subprocess
import sys
from typing import Any

CONFIGS = ("bare", "unsampled", "spans", "sdk-floor")
SHIM_CONFIGS = ("unsampled", "spans")
TARGETS = ("sync", "asyncio")


def _provider(sampled: bool) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult as Result
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    class Discard(SpanExporter):
        def export(self, spans: Any) -> Result:
            return Result.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ParentBased(ALWAYS_OFF))
    # Simple (not batch) processor: no exporter thread runs between the counted calls.
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    return provider


def _instrument(config: str) -> None:
    if config not in SHIM_CONFIGS:
        return
    from lockscope.instrumentation import LockscopeInstrumentor
    from lockscope.instrumentation.config import ShimConfig

    LockscopeInstrumentor().instrument(
        config=ShimConfig(endpoint="http://127.0.0.1:9", metrics_export="agent"),
        tracer_provider=_provider(config == "spans"),
    )


def _sync_op() -> Any:
    import redis
    import redis.lock

    class Offline(redis.lock.Lock):
        def do_acquire(self, token: Any) -> bool:
            return True

        def do_release(self, expected_token: Any) -> None:
            return None

    lock = Offline(redis.Redis(), "bench:offline", timeout=30)

    def op() -> None:
        lock.acquire()
        lock.release()

    op.lock = lock  # type: ignore[attr-defined]
    return op


def _async_op() -> Any:
    import redis.asyncio
    import redis.asyncio.lock

    class Offline(redis.asyncio.lock.Lock):
        async def do_acquire(self, token: Any) -> bool:
            return True

        async def do_release(self, expected_token: Any) -> None:
            return None

    lock = Offline(redis.asyncio.Redis(), "bench:offline-async", timeout=30)

    async def cycle() -> None:
        await lock.acquire()
        await lock.release()

    def op() -> None:
        # One coroutine driven by hand (no event loop scheduling in the count); the
        # offline lock never suspends.
        coro = cycle()
        with contextlib.suppress(StopIteration):
            coro.send(None)

    return op


def _floor(op: Any) -> Any:
    """The SDK's own two spans around a bare cycle (shim_overhead.py's sdk-floor)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _shim_targets import FloorSpans

    spans = FloorSpans(_provider(True).get_tracer("bench"))
    lock = op.lock

    def floor() -> None:
        spans.around(lock.acquire, lock.release)

    return floor


def _child(target: str, config: str, cycles: int) -> None:
    _instrument(config)
    op = _sync_op() if target == "sync" else _async_op()
    if config == "sdk-floor" and target == "sync":
        op = _floor(op)
    if target == "asyncio":
        # asyncio.current_task() needs a running loop: count inside one.
        async def main() -> dict[str, int]:
            return _count(op, cycles)

        counts = asyncio.run(main())
    else:
        counts = _count(op, cycles)
    print(json.dumps(counts), flush=True)
    os._exit(0)


def _count(op: Any, cycles: int) -> dict[str, int]:
    for _ in range(50):
        op()
    if os.environ.get("SHIM_CALLS_PLAIN"):
        for _ in range(cycles):
            op()
        return {"call": 0, "c_call": 0}
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(cycles):
        op()
    profiler.disable()
    counts = {"call": 0, "c_call": 0}
    # pstats' table: (file, line, name) -> (primitive calls, calls, ...); "~" is C code.
    table: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, _name), row in table.items():
        counts["c_call" if filename == "~" else "call"] += row[1]
    counts["call"] -= cycles  # op itself
    counts["c_call"] -= 1  # the profiler's disable()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--src", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--child", nargs=2, metavar=("TARGET", "CONFIG"))
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.cycles)
    trees = [s.split("=", 1) for s in args.src] or [["src", "src"]]
    extra = " instructions / cycle |" if args.instructions else ""
    print(f"| target | configuration | Python calls / cycle | C calls / cycle |{extra}")
    print("|---|---|---:|---:|" + ("---:|" if extra else ""))
    for target in args.targets.split(","):
        for config in args.configs.split(","):
            if config == "sdk-floor" and target != "sync":
                continue
            for label, path in trees if config in SHIM_CONFIGS else trees[-1:]:
                env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", target, config,
                     "--cycles", str(args.cycles)],
                    env=env, capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                counts = json.loads(out.strip().splitlines()[-1])
                name = f"{config} [{label}]" if config in SHIM_CONFIGS and trees[1:] else config
                row = (f"| redis-py Lock {target}, no server | {name} | "
                       f"{counts['call'] / args.cycles:.1f} | "
                       f"{counts['c_call'] / args.cycles:.1f} |")  # fmt: skip
                if args.instructions:
                    row += f" {_instructions(env, target, config):,.0f} |"
                print(row, flush=True)


def _instructions(env: dict[str, str], target: str, config: str) -> float:
    """Instructions per cycle: callgrind's totals at 3,000 and 1,000 cycles, differenced."""
    totals = []
    for cycles in (1000, 3000):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--child", target, config, "--cycles", str(cycles)],
            env={**env, "SHIM_CALLS_PLAIN": "1"}, capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        line = next(ln for ln in out.splitlines() if "Collected :" in ln)
        totals.append(int(line.rsplit(":", 1)[1].strip()))
    return (totals[1] - totals[0]) / 2000


if __name__ == "__main__":
    main()
