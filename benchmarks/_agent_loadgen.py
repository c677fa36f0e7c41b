"""The load generator of ``benchmarks/agent_ingest.py``, run in its own process.

It simulates the fleet (:mod:`_agent_workload`), encodes the requests before the clock
starts, then posts them to the agent's ``/v1/logs`` for a fixed time over ``connections``
kept-alive HTTP connections (``http.client``, one thread each), taking requests in stream
order.  When the pool is used up it is replayed under new process identities (a new
fleet: same events, new ``service.instance.id``), so the agent never sees a duplicate.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from _agent_workload import Fleet, encode_requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

PER_REQUEST = 512


def fleet_kwargs(base_ns: int, seed: int) -> dict[str, Any]:
    """The fleet every part of the benchmark uses."""
    return {"processes": 1000, "threads": 8, "base_ns": base_ns, "seed": seed, "ring_every": 250}


def main(conn: Connection, pool_events: int, base_ns: int, seed: int) -> None:
    """Entry point of the load generator process (``multiprocessing``, spawn)."""
    t0 = time.process_time()
    fleet = Fleet(**fleet_kwargs(base_ns, seed))
    sim = fleet.run(pool_events)
    requests = encode_requests(sim, PER_REQUEST)
    closings = [i // PER_REQUEST for i in fleet.ring_closings]
    rounds: dict[int, list[bytes]] = {0: [r.body(0) for r in requests]}
    conn.send(
        {
            "requests": len(requests),
            "records": len(sim),
            "rings": len(closings),
            "prepare_cpu": time.process_time() - t0,
            "bytes": sum(len(b) for b in rounds[0]),
        }
    )
    port, duration, connections = conn.recv()

    counter = itertools.count()
    lock = threading.Lock()
    n = len(requests)
    results: list[tuple[int, int, int, float, float, int]] = []
    errors: list[str] = []
    deadline = time.perf_counter() + duration

    def body(i: int) -> tuple[bytes, int]:
        r, k = divmod(i, n)
        with lock:
            bodies = rounds.get(r)
            if bodies is None:
                bodies = rounds[r] = [q.body(r) for q in requests]
                rounds.pop(r - 2, None)
        return bodies[k], requests[k].records

    def worker() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/x-protobuf"}
        while time.perf_counter() < deadline:
            i = next(counter)
            data, records = body(i)
            start = time.perf_counter()
            try:
                c.request("POST", "/v1/logs", body=data, headers=headers)
                resp = c.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            end = time.perf_counter()
            rejected = 0
            if resp.status == 200 and payload:
                msg = ExportLogsServiceResponse.FromString(payload)
                rejected = msg.partial_success.rejected_log_records
            elif resp.status != 200:
                errors.append(f"HTTP {resp.status}: {payload[:200]!r}")
            results.append((i, records, resp.status, start, end, rejected))
        c.close()

    cpu0 = time.process_time()
    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_end = time.perf_counter()
    ok = [r for r in results if r[2] == 200]
    sent_rings = 0
    sent = {r[0] for r in ok}
    for i in sent:
        k = i % n
        sent_rings += sum(1 for c in closings if c == k)
    conn.send(
        {
            "elapsed": t_end - t_start,
            "requests_ok": len(ok),
            "records_ok": sum(r[1] for r in ok),
            "rejected": sum(r[5] for r in ok),
            "errors": errors[:5],
            "error_count": len(errors),
            "rings_sent": sent_rings,
            "post_seconds": sorted(r[4] - r[3] for r in ok),
            "loadgen_cpu": time.process_time() - cpu0,
            "rounds": (max(sent) // n + 1) if sent else 0,
        }
    )
    conn.close()
