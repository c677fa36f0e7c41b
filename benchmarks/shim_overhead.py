"""Shim overhead as users feel it: bare vs instrumented processes, alternating, in one run.

    .venv/bin/python benchmarks/shim_overhead.py [--rounds 5] [--quick] [--target NAME...]
    .venv/bin/python benchmarks/shim_overhead.py --src before=/tmp/old/src --src after=src

Starts the servers the chosen targets need (real redis-server and ZooKeeper from
lockscope.testing), then, round after round, runs every configuration of every target
(the table in benchmarks/_shim_targets.py) in a fresh process of its own: the library
alone ("bare"), with the shim and an SDK TracerProvider that samples nothing
("unsampled"), with every span recorded ("spans"), the OpenTelemetry SDK's own two spans
around the bare calls ("sdk-floor": the least any span-making instrumentation costs) and
opentelemetry-instrumentation-redis (the generic alternative, for reference).  The agent
endpoint is unreachable: the fail-open path every app takes while its agent is down (the
figures are the same with a live agent: nothing is sent for short operations).

Each process times one loop of acquire+release cycles and reports, per cycle, its wall
time, the caller thread's CPU time (``time.thread_time_ns``) and the whole process's CPU
time (every thread: the reporter's work is counted too).  The order of the configurations
is reversed every other round, and each instrumented figure is compared with the bare one
*of the same round*, so drift on a shared machine cancels out; the table shows the median
and the spread (min..max) of those per-round ratios and of the per-round CPU added.

``--src LABEL=PATH`` (repeatable) times the shim configurations once per source tree
(PYTHONPATH=PATH), e.g. the code before and after a change, in the same sitting.
The "no server" row is a diagnostic: the server round trips replaced by no-ops, so it
shows the shim's CPU next to redis-py's own code, not what a user feels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shim_targets import CONFIGS, SHIM_CONFIGS, TARGETS, Target, child

_HERE = Path(__file__).resolve()


@contextlib.contextmanager
def _servers(needed: set[str]) -> Iterator[dict[str, str]]:
    from lockscope.testing import RedisServer, ZooKeeperServer

    with contextlib.ExitStack() as stack:
        found: dict[str, str] = {}
        if "redis" in needed:
            found["redis"] = stack.enter_context(RedisServer()).url
        if "zookeeper" in needed:
            found["zookeeper"] = stack.enter_context(ZooKeeperServer()).hosts
        if "postgres" in needed:
            from lockscope.testing import PostgresServer

            postgres = stack.enter_context(PostgresServer())
            found["postgres"], found["postgres_dsn"] = postgres.url, postgres.dsn
        yield found


def _run(target: Target, config: str, cycles: int, servers: dict[str, str],
         src: str | None) -> dict[str, float]:  # fmt: skip
    env = dict(os.environ)
    env.pop("LOCKSCOPE_DISABLED", None)
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(_HERE), "--child", target.name, config, str(cycles),
               json.dumps(servers)]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{target.name} / {config} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(lines[-1])
    return result


def _columns(target: Target, srcs: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """(column label, source tree) for every process a round of ``target`` runs."""
    main_src = srcs[-1][1]
    cols: list[tuple[str, str | None]] = []
    for config in target.configs:
        per_src = config in SHIM_CONFIGS or (config == "bare" and target.bare_per_src)
        if per_src and len(srcs) > 1:
            cols += [(f"{config} [{label}]", src) for label, src in srcs]
        else:
            cols.append((config, main_src))
    return cols


def _spread(values: list[float], fmt: str) -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return f"{format(statistics.median(values), fmt)} ({low}..{high})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a quarter of the cycles")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), default=None)
    parser.add_argument("--src", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, config, cycles, servers = args.child
        child(name, config, int(cycles), json.loads(servers))
        return 0
    targets = [TARGETS[n] for n in (args.target or TARGETS)]
    srcs: list[tuple[str, str | None]] = [
        (s.partition("=")[0], str(Path(s.partition("=")[2]).resolve())) for s in args.src
    ] or [("", None)]
    scale = 0.25 if args.quick else 1.0
    needed = {s for t in targets for s in t.servers}
    results: Results = {}
    with _servers(needed) as servers:
        for round_no in range(args.rounds):
            for target in targets:
                cols = _columns(target, srcs)
                if round_no % 2:
                    cols.reverse()
                cycles = max(20, int(target.cycles * scale))
                for label, src in cols:
                    results.setdefault((target.name, label), []).append(
                        _run(target, label.partition(" [")[0], cycles, servers, src)
                    )
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    _print(targets, srcs, results, args.rounds)
    return 0


Results = dict[tuple[str, str], list[dict[str, float]]]


def _print(
    targets: list[Target], srcs: list[tuple[str, str | None]], results: Results, rounds: int
) -> None:
    print(f"{rounds} rounds; per cycle (acquire+release); ratio and added CPU: median "
          "(min..max) over the rounds, each against bare of the same round")  # fmt: skip
    print()
    print("| target | configuration | wall | ratio to bare | caller CPU | CPU added"
          " | process CPU added | goal |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for target in targets:
        floor = results.get((target.name, "sdk-floor"))
        for label, _src in _columns(target, srcs):
            rows = results[(target.name, label)]
            tree = label.partition(" [")[2]
            bare = results.get((target.name, f"bare [{tree}"), results.get((target.name, "bare")))
            assert bare is not None
            wall = statistics.median(r["wall"] for r in rows)
            cpu = statistics.median(r["cpu"] for r in rows)
            ratio = added = proc = ""
            if not label.startswith("bare"):
                ratio = _spread([r["wall"] / b["wall"] for r, b in zip(rows, bare, strict=True)],
                                ".3f")  # fmt: skip
                added = _spread([(r["cpu"] - b["cpu"]) / 1e3 for r, b in zip(rows, bare,
                                 strict=True)], "+.2f") + " us"  # fmt: skip
                proc = _spread([(r["process_cpu"] - b["process_cpu"]) / 1e3 for r, b in
                                zip(rows, bare, strict=True)], "+.2f") + " us"  # fmt: skip
            if label.startswith("spans") and floor is not None:
                over = [(r["cpu"] - f["cpu"]) / 1e3 for r, f in zip(rows, floor, strict=True)]
                added += f"; vs sdk-floor {_spread(over, '+.2f')} us"
            first = label == _columns(target, srcs)[0][0]
            name = target.name if first else ""
            goal = target.target if first else ""
            print(f"| {name} | {label} | {_us(wall)} | {ratio} | {_us(cpu)} | {added} | "
                  f"{proc} | {goal} |")  # fmt: skip
    print()
    for config, meaning in CONFIGS.items():
        print(f"- {config}: {meaning}")


def _us(ns: float) -> str:
    return f"{ns / 1e3:.2f} us" if ns < 10_000 else f"{ns / 1e3:.0f} us"


if __name__ == "__main__":
    raise SystemExit(main())
