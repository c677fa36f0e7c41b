"""What each tier of a sharded deployment costs per event (CPU time, in-process).

    .venv/bin/python benchmarks/shard_tier.py               # 200,000 events
    .venv/bin/python benchmarks/shard_tier.py --events 50000 --idle 0

The event stream is the one of ``benchmarks/agent_ingest.py`` (1,000 busy processes of 8
threads each: contended and FIFO locks, timeouts, heartbeats listing each process's holds
and waits, deadlock rings), plus ``--idle`` processes that only send their empty heartbeat
every second (most of a real fleet is idle at any moment).  The processes are spread over
three shards by process, as ``LOCKSCOPE_ENDPOINT`` or a Collector routing by resource
would do.  Measured, each in CPU seconds of this process:

- **standalone**: decode (the agent's protobuf fast path) and apply every event in one
  ``AgentState``: one agent for the whole fleet;
- **shard**: decode and apply the shard's events, run the forwarding filter and encode the
  forwarded requests (what a shard adds on top of a standalone agent);
- **detector**: decode and apply what the three shards forwarded, in one ``AgentState``
  with ``stale_holder_findings`` off.

HTTP serving (aiohttp) is not included; it costs each tier about the same per request.
The deadlocks found by the detector are compared with the standalone agent's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agent_loadgen import fleet_kwargs
from _agent_workload import Fleet, encode_requests

from lockscope import events as ev
from lockscope.agent import otlp_fastlogs
from lockscope.agent.config import AgentConfig
from lockscope.agent.model import Event
from lockscope.agent.otlp_decode import decode_logs, parse_request
from lockscope.agent.shard_forward import BATCH, ForwardFilter, encode_forwarded
from lockscope.agent.state import AgentState

S = 1_000_000_000
SHARDS = 3


def idle_heartbeats(sim: list[Any], idle: int, base: int) -> list[Any]:
    """Interleave ``idle`` processes' empty heartbeats (1/s each) into the stream."""
    if not sim or not idle:
        return sim
    start, end = sim[0][2], sim[-1][2]
    out: list[Any] = []
    beats: list[tuple[int, int]] = []
    for i in range(idle):
        t = start + (i * S) // idle
        while t <= end:
            beats.append((t, base + i))
            t += S
    beats.sort()
    j = 0
    attrs = {ev.ATTR_HEARTBEAT_INTERVAL: 1.0, ev.ATTR_WAITS: [], ev.ATTR_HOLDS: []}
    for item in sim:
        while j < len(beats) and beats[j][0] <= item[2]:
            out.append((beats[j][1], ev.EVENT_HEARTBEAT, beats[j][0], attrs))
            j += 1
        out.append(item)
    return out


def bodies(sim: list[Any]) -> list[bytes]:
    return [r.body(0) for r in encode_requests(sim, 512)]


def ingest(state: AgentState, payloads: list[bytes], tap: Any = None) -> tuple[float, int]:
    """Decode and apply; returns (CPU seconds, events applied)."""
    n = 0
    t0 = time.process_time()
    for body in payloads:
        batch = decode_logs(parse_request("logs", body, "protobuf"), time.time_ns())
        for event in batch.events:
            try:
                state.apply(event, event.time_ns)
            except ValueError:
                continue
            n += 1
            if tap is not None:
                tap(event)
    state.tick(time.time_ns())
    return time.process_time() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--idle", type=int, default=9_000, help="idle processes (empty beats)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    base = time.time_ns() - 3600 * S
    fleet = Fleet(**fleet_kwargs(base, args.seed))
    sim = idle_heartbeats(fleet.run(args.events), args.idle, 100_000)
    config = AgentConfig()

    whole = bodies(sim)
    ingest(AgentState(config, clock=time.time_ns), whole)  # warm the decoder's caches
    standalone = AgentState(config, clock=time.time_ns)
    cpu_one, n_one = ingest(standalone, whole)
    otlp_fastlogs.keep_raw(True)  # what a shard's forwarding turns on

    shard_cpu: list[float] = []
    forwarded: list[Event] = []
    shard_events = 0
    for k in range(SHARDS):
        part = [item for item in sim if item[0] % SHARDS == k]
        payloads = bodies(part)
        flt = ForwardFilter()
        picked: list[Event] = []

        def tap(event: Event, flt: ForwardFilter = flt, picked: list[Event] = picked) -> None:
            if flt.wants(event):
                picked.append(event)

        state = AgentState(config, clock=time.time_ns)
        cpu, n = ingest(state, payloads, tap)
        t0 = time.process_time()
        for i in range(0, len(picked), BATCH):
            encode_forwarded(picked[i : i + BATCH])
        cpu += time.process_time() - t0
        shard_cpu.append(cpu)
        shard_events += n
        forwarded.extend(picked)
    otlp_fastlogs.keep_raw(False)
    detector = AgentState(AgentConfig(stale_holder_findings=False), clock=time.time_ns)
    # The detector receives the three shards' requests interleaved in time order.
    forwarded.sort(key=lambda e: e.time_ns)
    det_bodies = [
        encode_forwarded(forwarded[i : i + BATCH]) for i in range(0, len(forwarded), BATCH)
    ]
    cpu_det, n_det = ingest(detector, det_bodies)

    def per(cpu: float, n: int) -> str:
        return f"{cpu / max(n, 1) * 1e6:6.2f} µs/event  ({n / max(cpu, 1e-9):9,.0f} events/CPU-s)"

    found_one = {f.id for f in standalone.findings() if f.kind == "deadlock"}
    found_det = {f.id for f in detector.findings() if f.kind == "deadlock"}
    print(f"stream: {len(sim):,} events ({args.idle:,} idle processes' beats included)")
    print(f"standalone agent      {per(cpu_one, n_one)}")
    print(f"shard (x{SHARDS}, all in)    {per(sum(shard_cpu), shard_events)}")
    print(
        f"forwarded             {len(forwarded):,} events = "
        f"{len(forwarded) / max(shard_events, 1):.1%} of what the shards applied"
    )
    print(f"detector              {per(cpu_det, n_det)} per forwarded event")
    print(
        f"detector load vs one agent: {cpu_det / max(cpu_one, 1e-9):.1%} of the CPU; "
        f"deadlocks standalone {len(found_one)}, detector {len(found_det)}, "
        f"same ids: {found_one == found_det}"
    )
    return 0 if found_one == found_det else 1


if __name__ == "__main__":
    sys.exit(main())
