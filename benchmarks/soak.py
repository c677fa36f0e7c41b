"""Soak: lossy, reordered delivery under random contention; agent restarts during live
deadlocks; a lock-name cardinality attack.  Counts everything, prints a report.

    .venv/bin/python benchmarks/soak.py                      # the full soak (minutes)
    .venv/bin/python benchmarks/soak.py --processes 4 --ops 1000 --injected 2   # smaller
    .venv/bin/python benchmarks/soak.py --only cardinality --names 1000000
    .venv/bin/python benchmarks/soak.py --only restart --restarts 5

Parts (``--only`` picks one):

``loss``
    ``--processes`` (10) app processes under the shim, each doing ``--ops`` (10,000) redis
    lock operations on ``--threads`` (2) threads with random contention over ``--locks``
    (8) locks, always taken in sorted order (so any deadlock reported among them is
    false); every ``--long-every`` (50th) hold lasts 30-80 ms, so holds and the waits
    behind them pass ``report_after`` (20 ms).  Their events go through a fault proxy
    that drops ``--drop`` (10%) of lock events at random and reorders delivery.
    Meanwhile ``--injected`` (5) real deadlocks (two processes taking two locks in
    opposite orders) are started one after another; each must be found, then its victim
    is killed and it must resolve.  Reports operations, events sent/dropped, deadlocks
    found/injected, false deadlocks, violations.
``restart``
    a live deadlock, then the agent is SIGKILLed and restarted ``--restarts`` (3) times:
    seconds until it reports the deadlock again (target: within two heartbeats).
``cardinality``
    ``--names`` (1,000,000) distinct lock names posted as holds and as metric series:
    lock-label series count (cap 1,000 + ``__other__``), limit hits counted, agent RSS.
``hostile``
    the hostile mix against a real agent (``limits.max_processes`` = ``--max-processes``,
    header timeout 2 s, 512 descriptors): ``--processes`` soak workers as the load, while a
    flood client posts fake processes (``--flood-rate`` per second), a forger sends every
    victim's heartbeat dated an hour ahead listing nothing (and with stale and absurd
    sequence numbers), ``--slow`` connections trickle their headers, and holds with 1 MB
    names arrive.  ``--injected`` real deadlocks, half of them with one participant whose
    clock runs 120 s fast and is stepped back after 1 s: each must be found, stay active
    while the forger works (sampled every 0.1 s for 2 s) and resolve when its victim is
    killed; no other deadlock may appear.  Reports the load, what was tried, findings
    lost, false deadlocks and peak agent RSS against the bound the limits imply.

Exit status 1 if a promise is broken (a false deadlock, a violation, a missed injected
deadlock, a restart slower than two heartbeats plus one second, the label cap exceeded, a
deadlock hidden or missed under the hostile mix, memory over the bound).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lockscope.testing import RedisServer
from reliability_helpers import (
    AgentProcess,
    FaultProxy,
    Worker,
    cardinality_attack,
    findings,
    get_json,
    metric_value,
    request,
    rss_bytes,
    until,
)


def _deadlock_pair(url: str, endpoint: str, a: str, b: str, hb: float) -> tuple[Worker, Worker]:
    first = Worker("deadlock", {"url": url, "first": a, "second": b}, endpoint, heartbeat=hb)
    second = Worker("deadlock", {"url": url, "first": b, "second": a}, endpoint, heartbeat=hb)
    first.expect("holding")
    second.expect("holding")
    first.send("go")
    second.send("go")
    return first, second


def _active(http_url: str, locks: set[str]) -> list[dict[str, Any]]:
    return [
        d
        for d in findings(http_url, "deadlocks")
        if d["status"] == "active" and set(d["locks"]) == locks
    ]


def _cleared(http_url: str, locks: set[str]) -> bool:
    return not _active(http_url, locks)


def loss(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    config = Path(tempfile.mkdtemp()) / "agent.toml"
    config.write_text(f"confirm_after = {args.confirm_after}\n")
    agent = AgentProcess("--config", str(config)).start()
    report: dict[str, Any] = {}
    try:
        with FaultProxy(upstream=agent.otlp_url, seed=args.seed) as proxy:
            proxy.drop, proxy.reorder = args.drop, not args.no_reorder
            cfg = {
                "url": redis_url,
                "ops": args.ops,
                "threads": args.threads,
                "locks": args.locks,
                "long_every": args.long_every,
            }
            started = time.monotonic()
            soakers = [
                Worker(
                    "soak",
                    {**cfg, "seed": args.seed * 1000 + n},
                    proxy.endpoint,
                    heartbeat=args.heartbeat,
                    report_after=0.02,
                )
                for n in range(args.processes)
            ]
            latencies: list[float] = []
            found = 0
            peak_rss = rss_bytes(agent.pid)
            try:
                for k in range(args.injected):
                    locks = {f"inj:{k}:a", f"inj:{k}:b"}
                    a, b = sorted(locks)
                    pair = _deadlock_pair(redis_url, proxy.endpoint, a, b, args.heartbeat)
                    t0 = time.monotonic()
                    try:
                        until(functools.partial(_active, agent.http_url, locks), timeout=30)
                        latencies.append(time.monotonic() - t0)
                        found += 1
                        pair[0].kill()
                        until(functools.partial(_cleared, agent.http_url, locks), timeout=30)
                    except AssertionError:
                        print(f"injected deadlock {k} NOT found; the agent's view:", flush=True)
                        for name in sorted(locks):
                            view = get_json(f"{agent.http_url}/api/v1/locks/{name}")
                            print(json.dumps(view)[:2000], flush=True)
                    finally:
                        for worker in pair:
                            worker.kill()
                    peak_rss = max(peak_rss, rss_bytes(agent.pid))
                    print(f"injected deadlock {k + 1}/{args.injected} done", flush=True)
                    # Spread the injections over the soak, but never past its end.
                    if any(w.proc.poll() is None for w in soakers):
                        threading.Event().wait(args.inject_every)
                summaries = []
                for worker in soakers:
                    worker.wait(3600)
                    summaries.append(worker.expect("done", timeout=10))
                    peak_rss = max(peak_rss, rss_bytes(agent.pid))
            finally:
                for worker in soakers:
                    worker.kill()
            elapsed = time.monotonic() - started
            injected_locks = {f"inj:{k}:{s}" for k in range(args.injected) for s in "ab"}
            deadlocks = findings(agent.http_url, "deadlocks")
            false = [d for d in deadlocks if not set(d["locks"]) <= injected_locks]
            metrics = get_json(agent.http_url + "/readyz")
            report = {
                "processes": args.processes,
                "threads_per_process": args.threads,
                "lock_operations": sum(s["ops"] for s in summaries),
                "long_holds": sum(s["long_holds"] for s in summaries),
                "acquire_timeouts": sum(s["timeouts"] for s in summaries),
                "seconds": round(elapsed, 1),
                "otlp_requests": proxy.counts["requests"],
                "lock_events_sent": proxy.counts["records"],
                "lock_events_dropped": proxy.counts["records_dropped"],
                "drop_rate": round(
                    proxy.counts["records_dropped"] / max(1, proxy.counts["records"]), 4
                ),
                "reordered": proxy.reorder,
                "injected_deadlocks": args.injected,
                "injected_found": found,
                "detection_seconds_median": round(statistics.median(latencies), 2)
                if latencies
                else None,
                "detection_seconds_max": round(max(latencies), 2) if latencies else None,
                "false_deadlocks": len(false),
                "violations": len(findings(agent.http_url, "violations")),
                "agent_peak_rss_mib": round(peak_rss / 2**20, 1),
                "agent_state": metrics.get("state"),
                "confirm_after": args.confirm_after,
            }
            if false:
                report["false_deadlock_examples"] = [
                    {k: d[k] for k in ("locks", "detected_at", "resolved_at", "resolution")}
                    for d in false[:5]
                ]
    finally:
        agent.stop()
    return report


def restart(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    agent = AgentProcess().start()
    times: list[float] = []
    try:
        pair = _deadlock_pair(redis_url, agent.otlp_url, "rs:a", "rs:b", args.heartbeat)
        try:
            until(lambda: _active(agent.http_url, {"rs:a", "rs:b"}), timeout=30)
            for _ in range(args.restarts):
                agent.restart()
                t0 = time.monotonic()
                until(lambda: _active(agent.http_url, {"rs:a", "rs:b"}), timeout=60)
                times.append(time.monotonic() - t0)
        finally:
            for worker in pair:
                worker.kill()
    finally:
        agent.stop()
    return {
        "heartbeat_seconds": args.heartbeat,
        "restarts": len(times),
        "found_again_seconds": [round(t, 2) for t in times],
        "max_seconds": round(max(times), 2),
        "within_two_heartbeats": all(t <= 2 * args.heartbeat for t in times),
    }


def cardinality(args: argparse.Namespace) -> dict[str, Any]:
    agent = AgentProcess().start()
    try:
        return cardinality_attack(
            agent.otlp_url,
            agent.http_url,
            agent.pid,
            names=args.names,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        agent.stop()


def memory_bound_mib(limits: dict[str, int]) -> float:
    """The agent's documented worst case for ``[limits]`` (docs/reliability.md, Sizing the
    limits): a base of 64 MiB, per hold 1 KiB plus two capped strings (name, owner), per
    wait 1 KiB plus two, per process 2 KiB plus three (service, host, instance)."""
    s = limits.get("max_string_length", 1024)
    per_hold = 1024 + 2 * s
    per_wait = 1024 + 2 * s
    per_process = 2048 + 3 * s
    total = (
        64 * 2**20
        + limits["max_holds"] * per_hold
        + limits["max_waits"] * per_wait
        + limits["max_processes"] * per_process
    )
    return round(total / 2**20, 1)


def hostile(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    from _soak_hostile import BigNames, Flood, Forger, Slowloris

    limits = {
        "max_processes": args.max_processes,
        "max_holds": 20_000,
        "max_locks": 20_000,
        "max_waits": 10_000,
        "max_string_length": 1024,
    }
    config = Path(tempfile.mkdtemp()) / "agent.toml"
    config.write_text(
        "header_timeout = 2\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items())
    )
    agent = AgentProcess("--config", str(config), nofile=512).start()
    report: dict[str, Any] = {}
    peak = [rss_bytes(agent.pid)]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.5):
            with contextlib.suppress(OSError, RuntimeError):
                peak[0] = max(peak[0], rss_bytes(agent.pid))

    threading.Thread(target=sample, daemon=True).start()
    cfg = {
        "url": redis_url,
        "ops": args.ops,
        "threads": args.threads,
        "locks": args.locks,
        "long_every": args.long_every,
    }
    started = time.monotonic()
    soakers = [
        Worker(
            "soak",
            {**cfg, "seed": args.seed * 1000 + n},
            agent.otlp_url,
            heartbeat=args.heartbeat,
            report_after=0.02,
        )
        for n in range(args.processes)
    ]
    clients = [
        Flood(agent.otlp_url, args.flood_rate),
        Forger(agent.otlp_url, agent.http_url, {"reliability"}),
        Slowloris([agent.otlp_url, agent.http_url], args.slow),
        BigNames(agent.otlp_url),
    ]
    for client in clients:
        client.start()
    latencies: list[float] = []
    hidden_examples: list[Any] = []
    found = hidden = stepped = 0
    try:
        for k in range(args.injected):
            locks = {f"hostile:{k}:a", f"hostile:{k}:b"}
            a, b = sorted(locks)
            step = k % 2 == 0
            stepped += step
            extra = {"clock_ahead": 120, "step_after": 1.0} if step else {}
            first = Worker(
                "deadlock",
                {"url": redis_url, "first": a, "second": b, **extra},
                agent.otlp_url,
                heartbeat=args.heartbeat,
            )
            second = Worker(
                "deadlock",
                {"url": redis_url, "first": b, "second": a},
                agent.otlp_url,
                heartbeat=args.heartbeat,
            )
            pair = (first, second)
            try:
                for w in pair:
                    w.expect("holding")
                for w in pair:
                    w.send("go")
                t0 = time.monotonic()
                try:
                    until(functools.partial(_active, agent.http_url, locks), timeout=30)
                except AssertionError:
                    print(f"hostile: injected deadlock {k} NOT found", flush=True)
                    continue
                latencies.append(time.monotonic() - t0)
                found += 1
                for _ in range(20):  # it must stay found while the forger works
                    threading.Event().wait(0.1)
                    if not _active(agent.http_url, locks):
                        hidden += 1
                        hidden_examples.append(
                            [
                                {x: d.get(x) for x in ("id", "status", "resolution", "resolved_at")}
                                for d in findings(agent.http_url, "deadlocks")
                                if set(d["locks"]) == locks
                            ]
                        )
                first.kill()
                until(functools.partial(_cleared, agent.http_url, locks), timeout=30)
            finally:
                for w in pair:
                    w.kill()
            print(f"hostile: injected deadlock {k + 1}/{args.injected} done", flush=True)
        summaries = []
        for worker in soakers:
            worker.wait(3600)
            summaries.append(worker.expect("done", timeout=10))
    finally:
        for worker in soakers:
            worker.kill()
        for client in clients:
            client.stop()
        sampling.set()
    try:
        injected_locks = {f"hostile:{k}:{s}" for k in range(args.injected) for s in "ab"}
        deadlocks = findings(agent.http_url, "deadlocks")
        false = [d for d in deadlocks if not set(d["locks"]) <= injected_locks]
        text = request(agent.http_url + "/metrics")[2].decode()
        tried: dict[str, Any] = {}
        for client in clients:
            tried.update(
                {f"{type(client).__name__.lower()}_{k}": v for k, v in client.counts.items()}
            )
        report = {
            "processes": args.processes,
            "lock_operations": sum(s["ops"] for s in summaries),
            "seconds": round(time.monotonic() - started, 1),
            "injected_deadlocks": args.injected,
            "injected_with_clock_step": stepped,
            "injected_found": found,
            "hidden_samples": hidden,
            "detection_seconds_median": round(statistics.median(latencies), 2)
            if latencies
            else None,
            "detection_seconds_max": round(max(latencies), 2) if latencies else None,
            "false_deadlocks": len(false),
            "violations": len(findings(agent.http_url, "violations")),
            "tried": tried,
            "agent_processes_evicted": metric_value(
                text, "lockscope_agent_processes_evicted_total"
            ),
            "agent_connections_closed": {
                r: metric_value(text, "lockscope_agent_connections_closed_total", {"reason": r})
                for r in ("header_timeout", "limit")
            },
            "agent_strings_truncated": metric_value(
                text, "lockscope_agent_strings_truncated_total"
            ),
            "agent_peak_rss_mib": round(peak[0] / 2**20, 1),
            "memory_bound_mib": memory_bound_mib(limits),
            "limits": limits,
        }
        if false:
            report["false_deadlock_examples"] = [
                {k: d[k] for k in ("locks", "detected_at", "resolved_at")} for d in false[:5]
            ]
        if hidden_examples:
            report["hidden_examples"] = hidden_examples[:5]
        violations = findings(agent.http_url, "violations")
        if violations:
            report["violation_examples"] = violations[:3]
        log = "".join(agent.stderr)
        report["agent_emfile"] = "EMFILE" in log or "Too many open files" in log
    finally:
        agent.stop()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("loss", "restart", "cardinality", "hostile"))
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--ops", type=int, default=10_000, help="lock operations per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--locks", type=int, default=8)
    parser.add_argument("--long-every", type=int, default=50, help="every Nth hold lasts 30-80 ms")
    parser.add_argument("--drop", type=float, default=0.10)
    parser.add_argument("--no-reorder", action="store_true")
    parser.add_argument("--injected", type=int, default=5)
    parser.add_argument("--inject-every", type=float, default=10.0, help="seconds between")
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--confirm-after", type=float, default=0.0)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-processes", type=int, default=2000, help="hostile: agent limit")
    parser.add_argument("--flood-rate", type=int, default=5000, help="hostile: fake/s")
    parser.add_argument("--slow", type=int, default=600, help="hostile: slow connections")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {}
    with RedisServer() as server:
        if args.only in (None, "loss"):
            report["loss"] = loss(args, server.url)
        if args.only in (None, "restart"):
            report["restart"] = restart(args, server.url)
        if args.only in (None, "hostile"):
            report["hostile"] = hostile(args, server.url)
    if args.only in (None, "cardinality"):
        report["cardinality"] = cardinality(args)
    print(json.dumps(report, indent=2))

    broken = []
    if "loss" in report:
        r = report["loss"]
        if r["false_deadlocks"] or r["violations"] or r["injected_found"] < r["injected_deadlocks"]:
            broken.append("loss")
    if "restart" in report and report["restart"]["max_seconds"] > 2 * args.heartbeat + 1:
        broken.append("restart")
    if "cardinality" in report and report["cardinality"]["lock_label_values"] > 1_001:
        broken.append("cardinality")
    if "hostile" in report:
        r = report["hostile"]
        if (
            r["false_deadlocks"]
            or r["violations"]
            or r["hidden_samples"]
            or r["injected_found"] < r["injected_deadlocks"]
            or r["agent_peak_rss_mib"] > r["memory_bound_mib"]
            or r["agent_emfile"]
        ):
            broken.append("hostile")
    if broken:
        print(f"BROKEN: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
