"""Agent ingest: sustained events/s, detection latency, scaling and memory, in one run.

    .venv/bin/python benchmarks/agent_ingest.py            # full (a few minutes)
    .venv/bin/python benchmarks/agent_ingest.py --quick    # under a minute

Measures, against the targets of the agent issue:

1. **Sustained ingest.**  A real agent (``AgentRunner``, what ``lockscope agent`` runs) in
   its own process; a load generator in another process posts OTLP/HTTP protobuf log
   requests of 512 records over kept-alive connections.  The records are what a fleet of
   1,000 instrumented processes (8 threads each) reports: reported holds and waits with
   contention on hot locks, FIFO (ZooKeeper) queues, timeouts, heartbeats with each
   process's holds and waits, and deadlock rings of 2 to 8 processes (see
   ``benchmarks/_agent_workload.py``), encoded by the shim's own encoder.  Reported:
   events/s on the wall clock, and events per second of agent CPU (the capacity of one
   agent process when it has a core to itself - the machine is shared).  The same events
   decoded and applied in-process, without HTTP, show where the time goes.
2. **Detection latency** of every ring in the stream, timed inside the agent (see
   ``benchmarks/_agent_server.py``): from the arrival of the request carrying the closing
   ``wait.start`` to the deadlock being visible to the JSON API, and the detector's own
   part (apply of the closing event to ``api_deadlocks`` listing it).  Plus an end-to-end
   probe under the same load: POST a ring's closing event, then GET
   ``/api/v1/deadlocks?status=active`` until it is listed.
3. **Per-event cost at scale**: the same event mix applied to a state that already
   tracks 1,000,000 holds versus 1,000.
4. **Memory per tracked hold**: resident-set growth while loading 1,000,000 holds.
5. **Naive detector**: networkx ``find_cycle`` over the whole wait-for graph after every
   event, against the incremental search, on graphs of 1k, 10k and 100k wait edges.

CPU-time figures use ``time.process_time`` / the agent's CPU seconds, so other load on the
machine slows the wall clock but not them.  This is a benchmark: nothing here is a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _agent_loadgen
import _agent_scale
from _agent_workload import Fleet, encode_requests, lock_attrs

from lockscope import events as ev
from lockscope.agent.otlp_decode import decode_logs, parse_request
from lockscope.agent.state import AgentState
from lockscope.instrumentation.otlp_export import encode_events

HERE = Path(__file__).resolve().parent
TARGET_RATE = 100_000
TARGET_P99_MS = 10.0
TARGET_SCALE = 1.5
TARGET_BYTES = 1024


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def _get(port: int, path: str) -> Any:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()


# -- 1a. in-process decode and apply ----------------------------------------------------------
def inprocess(events: int, seed: int) -> dict[str, Any]:
    """CPU per event of decoding and of applying, without HTTP."""
    fleet = Fleet(**_agent_loadgen.fleet_kwargs(time.time_ns(), seed))
    sim = fleet.run(events)
    bodies = [r.body(0) for r in encode_requests(sim)]
    t0 = time.process_time()
    messages = [parse_request("logs", b, "protobuf") for b in bodies]
    t1 = time.process_time()
    decoded = []
    for m in messages:
        decoded.extend(decode_logs(m).events)
    t2 = time.process_time()
    state = AgentState(_agent_scale._config())
    for e in decoded:
        state.apply(e)
    t3 = time.process_time()
    n = len(decoded)
    hb = [r for r in sim if r[1] == ev.EVENT_HEARTBEAT]
    entries = sum(len(r[3][ev.ATTR_HOLDS]) + len(r[3][ev.ATTR_WAITS]) for r in hb)
    kinds: dict[str, int] = {}
    for r in sim:
        kinds[r[1]] = kinds.get(r[1], 0) + 1
    return {
        "events": n,
        "parse_us": (t1 - t0) / n * 1e6,
        "decode_us": (t2 - t1) / n * 1e6,
        "apply_us": (t3 - t2) / n * 1e6,
        "mix": {k.removeprefix("lockscope."): v / n for k, v in sorted(kinds.items())},
        "heartbeat_entries": entries / max(1, len(hb)),
        "bytes_per_record": sum(len(b) for b in bodies) / n,
        "deadlocks": state.deadlocks.counters.detected_total,
        "rings": fleet.rings_started,
        "other_findings": sum(1 for f in state.findings() if f.kind != "deadlock"),
    }


# -- 1b/2. sustained over HTTP -------------------------------------------------------------------
class Agent:
    """``_agent_server.py`` in a subprocess."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_agent_server.py")],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the agent did not start")
        ports = json.loads(line)
        self.otlp, self.http = ports["otlp"], ports["http"]

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _get(self.http, "/bench/stats")
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _probe_attrs(lock: dict[str, Any], since: int, outcome: str | None = None) -> dict[str, Any]:
    attrs = {**lock, ev.ATTR_ACTOR_ID: "thread:1", ev.ATTR_SINCE: since}
    if outcome is not None:
        attrs[ev.ATTR_OUTCOME] = outcome
    return attrs


class Probe(threading.Thread):
    """End-to-end latency under load: every ``every`` seconds a two-process ring is built
    (holds and the first wait in one request), then the closing wait.start is POSTed and
    ``/api/v1/deadlocks?status=active`` polled until it lists the ring; then released."""

    def __init__(self, agent: Agent, every: float) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        self.every = every
        self.stop_flag = threading.Event()
        self.phase = "load"
        self.samples: dict[str, list[float]] = {"load": [], "idle": []}
        self.missed = 0

    def _post(self, c: http.client.HTTPConnection, body: bytes) -> None:
        c.request("POST", "/v1/logs", body=body, headers={"Content-Type": "application/x-protobuf"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"probe POST: HTTP {r.status}")

    def run(self) -> None:
        otlp = http.client.HTTPConnection("127.0.0.1", self.agent.otlp, timeout=60)
        api = http.client.HTTPConnection("127.0.0.1", self.agent.http, timeout=60)
        n = 0
        while not self.stop_flag.wait(self.every):
            n += 1
            now = time.time_ns()
            procs = [
                {
                    ev.RES_SERVICE_NAME: "probe",
                    ev.RES_HOST_NAME: "probe-host",
                    ev.RES_PROCESS_PID: 50_000 + 2 * n + i,
                    ev.RES_SERVICE_INSTANCE: f"probe-{n}-{i}",
                }
                for i in (0, 1)
            ]
            locks = [lock_attrs(0, f"probe:{n}:{i}") for i in (0, 1)]

            hold = [
                (ev.EVENT_HOLD_START, now + 1, _probe_attrs(lock, now - 10**9)) for lock in locks
            ]
            w0 = (ev.EVENT_WAIT_START, now + 2, _probe_attrs(locks[1], now - 5 * 10**8))
            setup = encode_events([hold[0], w0], procs[0]) + encode_events([hold[1]], procs[1])
            closing = encode_events(
                [(ev.EVENT_WAIT_START, now + 3, _probe_attrs(locks[0], now - 4 * 10**8))], procs[1]
            )
            self._post(otlp, setup)
            t0 = time.perf_counter()
            self._post(otlp, closing)
            found = False
            for _ in range(100):
                api.request("GET", "/api/v1/deadlocks?status=active")
                r = api.getresponse()
                doc = json.loads(r.read())
                if any(
                    p["service"] == "probe" and p["pid"] == 50_000 + 2 * n + 1
                    for d in doc["deadlocks"]
                    for p in d["participants"]
                ):
                    found = True
                    break
            if found:
                self.samples[self.phase].append(time.perf_counter() - t0)
            else:
                self.missed += 1
            end0 = [
                (
                    ev.EVENT_WAIT_END,
                    now + 4,
                    _probe_attrs(locks[1], now - 5 * 10**8, "timeout"),
                ),
                (
                    ev.EVENT_HOLD_END,
                    now + 5,
                    _probe_attrs(locks[0], now - 10**9, "released"),
                ),
            ]
            end1 = [
                (
                    ev.EVENT_WAIT_END,
                    now + 4,
                    _probe_attrs(locks[0], now - 4 * 10**8, "timeout"),
                ),
                (
                    ev.EVENT_HOLD_END,
                    now + 5,
                    _probe_attrs(locks[1], now - 10**9, "released"),
                ),
            ]
            self._post(otlp, encode_events(end0, procs[0]) + encode_events(end1, procs[1]))
        otlp.close()
        api.close()


def sustained(
    duration: float, pool: int, connections: int, seed: int, probe_every: float, idle: float
) -> dict[str, Any]:
    """Events/s through a real agent, and the detection latency of every ring."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    gen = ctx.Process(
        target=_agent_loadgen.main, args=(child, pool, time.time_ns(), seed), daemon=True
    )
    gen.start()
    prepared = parent.recv()
    agent = Agent()
    try:
        before = agent.stats()
        probe = Probe(agent, probe_every)
        load0 = os.getloadavg()[0]
        parent.send((agent.otlp, duration, connections))
        probe.start()
        result = parent.recv()
        after = agent.stats()  # before the idle phase: rates cover the load only
        after["objects"] = _get(agent.http, "/bench/objects")
        idle_from = time.perf_counter()
        probe.phase = "idle"
        time.sleep(idle)  # the probe keeps going on the idle agent
        probe.stop_flag.set()
        probe.join(30)
        timing = _get(agent.http, "/bench/deadlocks")
        records = timing["records"]
    finally:
        agent.stop()
        gen.join(30)
    events = after["events"] - before["events"]
    cpu = after["cpu"] - before["cpu"]
    # the probe's own rings are recorded too (service "probe"): keep the fleet's
    fleet_records = [r for r in records if r.get("receipt") is not None and r["service"] != "probe"]
    probe_records = [r for r in records if r.get("receipt") is not None and r["service"] == "probe"]
    visible = [(r["visible"] - r["receipt"]) * 1e3 for r in fleet_records if "visible" in r]
    done = [(r["done"] - r["receipt"]) * 1e3 for r in fleet_records if "done" in r]
    found = [(r["apply"] - r["receipt"]) * 1e3 for r in fleet_records]
    detector = [(r["query"] - r["apply"]) * 1e3 for r in fleet_records if r.get("query")]
    return {
        "prepared": prepared,
        "load": result,
        "load_avg_start": load0,
        "load_avg_end": os.getloadavg()[0],
        "rate_wall": result["records_ok"] / result["elapsed"],
        "agent_events": events,
        "agent_cpu": cpu,
        "rate_cpu": events / cpu if cpu else float("nan"),
        "agent_rss_mb": after["rss"] / 2**20,
        "after": after,
        "deadlocks_recorded": len(records),
        "batch_ms": [b * 1e3 for b in timing["batches"]],
        "latency_visible_ms": visible,
        "latency_done_ms": done,
        "latency_to_apply_ms": found,
        "latency_detector_ms": detector,
        "probe_load_ms": [s * 1e3 for s in probe.samples["load"]],
        "probe_idle_ms": [s * 1e3 for s in probe.samples["idle"]],
        "probe_agent_load_ms": [
            (r["visible"] - r["receipt"]) * 1e3
            for r in probe_records
            if r["receipt"] < idle_from and "visible" in r
        ],
        "probe_agent_idle_ms": [
            (r["visible"] - r["receipt"]) * 1e3
            for r in probe_records
            if r["receipt"] >= idle_from and "visible" in r
        ],
        "probe_missed": probe.missed,
    }


# -- 3/4/5 in fresh processes -------------------------------------------------------------------
def _child(target: Any, *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(child, *args), daemon=True)
    p.start()
    child.close()
    try:
        return parent.recv()
    finally:
        p.join(60)


# -- report -------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(res: dict[str, Any], mode: str) -> str:
    lines: list[str] = []
    add = lines.append
    ip, su, sc, nv = res["inprocess"], res["sustained"], res["scale"], res["naive"]
    add(f"lockscope agent ingest benchmark ({mode})")
    add(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, "
        f"load average {su['load_avg_start']:.1f} when the sustained run began (shared machine)"
    )
    mix = ", ".join(f"{k} {v:.0%}" for k, v in ip["mix"].items())
    add(
        f"workload: {mix}; {ip['heartbeat_entries']:.1f} entries per heartbeat; "
        f"{ip['bytes_per_record']:.0f} B per record on the wire; 512 records per request"
    )
    add("")
    w = 74
    add(f"{'measure':<{w}} {'value':>16}  {'target':<12} result")
    add("-" * (w + 38))

    def row(name: str, value: str, target: str = "", result: str = "") -> None:
        add(f"{name:<{w}} {value:>16}  {target:<12} {result}")

    load = su["load"]
    row(
        "1. sustained ingest, events/s, per agent CPU-second",
        f"{su['rate_cpu']:,.0f}",
        f">= {TARGET_RATE:,}",
        verdict(su["rate_cpu"] >= TARGET_RATE),
    )
    row("   events/s on the wall clock (agent + load gen share 2 cores)", f"{su['rate_wall']:,.0f}")
    row(
        f"   agent CPU per event, all in ({su['agent_events']:,} events, {load['elapsed']:.1f} s)",
        f"{su['agent_cpu'] / max(1, su['agent_events']) * 1e6:.1f} us",
    )
    row(
        "   of which protobuf parse and attribute decoding (in-process, no HTTP)",
        f"{ip['parse_us']:.1f} us",
    )
    row("   of which records to events (in-process)", f"{ip['decode_us']:.1f} us")
    row("   of which AgentState.apply (in-process)", f"{ip['apply_us']:.1f} us")
    row(
        "   in-process apply() rate alone, events/s",
        f"{1e6 / ip['apply_us']:,.0f}",
    )
    row(
        "   in-process parse+decode+apply, events/s",
        f"{1e6 / (ip['parse_us'] + ip['decode_us'] + ip['apply_us']):,.0f}",
    )
    rej = load["rejected"] + load["error_count"]
    row("   records rejected / failed requests", f"{load['rejected']} / {load['error_count']}")
    vis = su["latency_visible_ms"]
    row(
        f"2. detection latency p99, receipt -> visible to API ({len(vis)} rings)",
        f"{_pct(vis, 99):.2f} ms",
        f"<= {TARGET_P99_MS:g} ms",
        verdict(bool(vis) and _pct(vis, 99) <= TARGET_P99_MS),
    )
    row("   p50", f"{_pct(vis, 50):.2f} ms")
    done = su["latency_done_ms"]
    row(
        "   receipt -> its whole 512-record request applied, p50 / p99",
        f"{_pct(done, 50):.2f} / {_pct(done, 99):.2f} ms",
    )
    det = su["latency_detector_ms"]
    row(
        "   detector alone: apply(closing event) -> API query, p50 / p99",
        f"{_pct(det, 50):.3f} / {_pct(det, 99):.3f} ms",
    )
    row(
        "   receipt -> closing event applied (decode + earlier records), p50 / p99",
        f"{_pct(su['latency_to_apply_ms'], 50):.2f} / {_pct(su['latency_to_apply_ms'], 99):.2f} ms",
    )
    for phase, label in (("load", "under load"), ("idle", "idle agent")):
        inside = su[f"probe_agent_{phase}_ms"]
        e2e = su[f"probe_{phase}_ms"]
        row(
            f"   1-record request, {label}: receipt -> visible, p50 / p99 ({len(inside)})",
            f"{_pct(inside, 50):.2f} / {_pct(inside, 99):.2f} ms",
        )
        row(
            f"   1-record request, {label}: POST -> GET lists it (client), p50 / p99",
            f"{_pct(e2e, 50):.1f} / {_pct(e2e, 99):.1f} ms",
        )
    row(
        "   any 512-record request: receipt -> done, p50 / p99",
        f"{_pct(su['batch_ms'], 50):.2f} / {_pct(su['batch_ms'], 99):.2f} ms",
    )
    gcs = su["after"]["gc"]
    row(
        "   agent GC pauses during the run: gen2 count / max, gen0+1 max",
        f"{gcs['2']['count']} / {gcs['2']['max_ms']:.1f} ms, "
        f"{max(gcs['0']['max_ms'], gcs['1']['max_ms']):.1f} ms",
    )
    row(
        "   rings in the fleet stream / reported (fleet rings + probe rings)",
        f"{load['rings_sent']} / {len(vis)} + {su['deadlocks_recorded'] - len(vis)}",
    )
    small, big = sc
    ratio = big["ns_per_event"] / small["ns_per_event"]
    row(
        f"3. per-event cost, {big['holds']:,} vs {small['holds']:,} tracked holds",
        f"{ratio:.2f}x",
        f"<= {TARGET_SCALE:g}x",
        verdict(ratio <= TARGET_SCALE),
    )
    row(
        f"   us per event ({small['mix_events']:,}-event fleet mix, median)",
        f"{big['ns_per_event'] / 1e3:.1f} vs {small['ns_per_event'] / 1e3:.1f}",
    )
    row(
        f"4. memory per tracked hold (RSS growth over {big['holds']:,} holds)",
        f"{big['bytes_per_hold']:.0f} B",
        f"<= {TARGET_BYTES} B",
        verdict(big["bytes_per_hold"] <= TARGET_BYTES),
    )
    row("   load cost per hold (apply of hold.start, CPU)", f"{big['preload_us_per_hold']:.1f} us")
    row(
        f"   one full GC collection with {big['holds']:,} holds ({big['gc_tracked']:,} objects)",
        f"{big['full_gc_ms']:.0f} ms",
    )
    add("")
    add(
        "5. incremental search vs a naive detector: networkx over the whole wait-for graph "
        "after every event (CPU us per event)"
    )
    add(
        f"   {'wait edges':>10} {'incremental':>12} {'simple_cycles':>14} {'find_cycle':>12}"
        f" {'simple/incr':>12}   events timed (incr / simple / find)"
    )
    for r in nv:
        add(
            f"   {r['edges']:>10,} {r['incremental_us']:>12.1f} {r['simple_cycles_us']:>14,.0f}"
            f" {r['find_cycle_us']:>12,.0f} {r['simple_cycles_us'] / r['incremental_us']:>11,.0f}x"
            f"   {r['incremental_events']} / {r['simple_cycles_events']} / {r['find_cycle_events']}"
        )
    del rej
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller and shorter (< 60 s)")
    ap.add_argument("--duration", type=float, help="seconds of sustained load")
    ap.add_argument(
        "--connections", type=int, default=1, help="load generator connections (kept alive)"
    )
    ap.add_argument(
        "--holds", type=int, help="tracked holds for 3 and 4 (1,000,000; quick: 250,000)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    quick = args.quick
    duration = args.duration or (6.0 if quick else 20.0)
    pool = 60_000 if quick else 200_000
    t_start = time.perf_counter()

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.1f}s] {msg}", file=sys.stderr, flush=True)

    res: dict[str, Any] = {}
    step("in-process decode and apply")
    res["inprocess"] = inprocess(30_000 if quick else 100_000, args.seed)
    step(f"sustained ingest over HTTP for {duration:g} s")
    res["sustained"] = sustained(
        duration, pool, args.connections, args.seed, 0.2, 2.0 if quick else 4.0
    )
    mix = 10_000 if quick else 30_000
    reps = 2 if quick else 3
    res["scale"] = []
    holds = args.holds or (250_000 if quick else 1_000_000)
    for n in (1_000, holds):
        step(f"per-event cost with {n:,} tracked holds")
        res["scale"].append(_child(_agent_scale.scale_main, n, mix, reps, args.seed))
    step("naive vs incremental detector")
    res["naive"] = _child(
        _agent_scale.naive_main, [1_000, 10_000, 100_000], 2_000, 0.5 if quick else 3.0, args.seed
    )
    step("done")
    text = report(res, "quick" if quick else "full")
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
