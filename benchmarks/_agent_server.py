"""The agent under test for ``benchmarks/agent_ingest.py``: a real lockscope agent
(:class:`lockscope.agent.app.AgentRunner`, the code ``lockscope agent`` runs) in its own
process, on free loopback ports, plus two benchmark-only routes on its HTTP address:

* ``GET /bench/stats``: events applied, records received/rejected, the process's CPU
  seconds and RSS, state sizes;
* ``GET /bench/deadlocks``: one timing record per deadlock found (see below);
* ``GET /bench/objects``: what the garbage collector tracks, by type (top 15).

Detection timing.  Three clocks are read (``time.perf_counter``), all inside the agent:

* ``receipt``: the OTLP request that carries the closing ``wait.start`` reaches its handler
  (headers parsed; before the body is read and decoded);
* ``apply``: ``AgentState.apply`` starts on the closing event;
* ``query``: right after that ``apply`` returns, ``api_deadlocks(state, active_only=True)`` -
  the JSON API's own query - lists the new deadlock;
* ``visible``: the event loop runs its next callback after that ``apply`` (scheduled with
  ``call_soon``): the first moment an API request can be answered.  The receiver applies
  a request's records in slices and yields to the loop between them, so this comes at
  the end of the slice holding the closing event;
* ``done``: the request's records are all applied and the handler returns.

Wrapping ``apply`` costs one Python call per event (well under 1% of its cost).  The
garbage collector is set up as ``lockscope agent`` sets it up
(:func:`lockscope.agent.app.tune_gc`); ``BENCH_DEFAULT_GC=1`` keeps CPython's defaults.

Run: ``python benchmarks/_agent_server.py``; prints one JSON line with the ports, serves
until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import os
import signal
import time
from typing import Any

import psutil
from aiohttp import web

from lockscope.agent import otlp_receiver
from lockscope.agent.app import AgentRunner, tune_gc
from lockscope.agent.config import AgentConfig, Limits
from lockscope.agent.findings import DEADLOCK, Finding
from lockscope.agent.model import Event
from lockscope.agent.state import AgentState
from lockscope.agent.web_api import api_deadlocks, api_status

_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bench_request", default=None
)


async def main() -> None:
    # Room for the replay rounds' process identities (each round is a new fleet).
    config = AgentConfig(limits=Limits(max_processes=100_000))
    state = AgentState(config)
    records: list[dict[str, Any]] = []
    batches: list[float] = []
    """Seconds from receipt to done of each large (fleet) request."""
    me = psutil.Process()

    original_handle = otlp_receiver._handle

    async def timed_handle(request: web.Request, signal_: Any) -> web.Response:
        info: dict[str, Any] = {"receipt": time.perf_counter(), "found": []}
        token = _request.set(info)
        try:
            return await original_handle(request, signal_)
        finally:
            _request.reset(token)
            done = time.perf_counter()
            if (request.content_length or 0) > 10_000:
                batches.append(done - info["receipt"])
            for rec in info["found"]:
                rec["done"] = done

    otlp_receiver._handle = timed_handle  # type: ignore[assignment]

    original_apply = state.apply
    detector = state.deadlocks

    def timed_apply(event: Event, now_ns: int | None = None) -> None:
        before = detector.counters.detected_total
        t0 = time.perf_counter()
        original_apply(event, now_ns)
        if detector.counters.detected_total != before:
            found = {f["id"] for f in api_deadlocks(state, active_only=True)["deadlocks"]}
            t_query = time.perf_counter()
            info = _request.get()
            new = records[before - detector.counters.detected_total :]
            for rec in new:
                rec["apply"] = t0
                rec["query"] = t_query if rec["id"] in found else None
                rec["receipt"] = info["receipt"] if info else None
                if info is not None:
                    info["found"].append(rec)
            asyncio.get_running_loop().call_soon(_mark_visible, new)

    state.apply = timed_apply  # type: ignore[method-assign]

    def on_finding(f: Finding) -> None:
        if f.kind == DEADLOCK and f.active:
            records.append(
                {
                    "id": f.id,
                    "size": len(f.data["participants"]),
                    "service": ",".join(f.services),
                }
            )

    state.subscribe_findings(on_finding)

    # Garbage-collector pauses, a usual suspect for latency outliers.
    pauses: list[tuple[int, float]] = []
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - gc_start[0]))

    gc.callbacks.append(on_gc)

    async def stats(request: web.Request) -> web.Response:
        cpu = me.cpu_times()
        return web.json_response(
            {
                "events": runner.stats.events,
                "received": dict(runner.stats.received),
                "rejected": dict(runner.stats.rejected),
                "cpu": cpu.user + cpu.system,
                "rss": me.memory_info().rss,
                "gc_objects": len(gc.get_objects()),
                "tombstones": len(state._tombstones),
                "state": api_status(state),
                "findings": {
                    "deadlocks_detected": detector.counters.detected_total,
                    "candidates_rejected": detector.counters.candidates_rejected_total,
                    "searches": detector.counters.searches_total,
                    "by_kind": _by_kind(state.findings()),
                },
                "ignored": dict(state.counters.events_ignored),
                "gc": {
                    str(g): {
                        "count": sum(1 for gen, _ in pauses if gen == g),
                        "max_ms": max((d for gen, d in pauses if gen == g), default=0.0) * 1e3,
                        "total_ms": sum(d for gen, d in pauses if gen == g) * 1e3,
                    }
                    for g in (0, 1, 2)
                },
                "healed": dict(state.counters.healed),
            }
        )

    async def objects(request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for o in gc.get_objects():
            name = type(o).__name__
            counts[name] = counts.get(name, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
        return web.json_response({"total": sum(counts.values()), "top": top})

    async def deadlocks(request: web.Request) -> web.Response:
        return web.json_response({"records": records, "batches": batches})

    def bench_routes(app: web.Application) -> None:
        app.router.add_get("/bench/stats", stats)
        app.router.add_get("/bench/deadlocks", deadlocks)
        app.router.add_get("/bench/objects", objects)

    runner = AgentRunner(
        config,
        state=state,
        otlp=("127.0.0.1", 0),
        http=("127.0.0.1", 0),
        http_setup=[bench_routes],
    )
    await runner.start()
    if not os.environ.get("BENCH_DEFAULT_GC"):
        tune_gc()  # as ``lockscope agent`` (run_agent) does
    print(json.dumps({"otlp": runner.otlp_port, "http": runner.http_port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.stop()


def _mark_visible(found: list[dict[str, Any]]) -> None:
    now = time.perf_counter()
    for rec in found:
        rec["visible"] = now


def _by_kind(findings: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in findings:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
