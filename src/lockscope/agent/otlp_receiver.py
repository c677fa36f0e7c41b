"""The OTLP/HTTP receiver: ``POST /v1/logs``, ``/v1/traces`` and ``/v1/metrics``.

Bodies are protobuf (``application/x-protobuf``) or OTLP/JSON (``application/json``),
optionally ``Content-Encoding: gzip`` (or ``deflate``).  The response is an
Export*ServiceResponse in the request's format, with ``partial_success`` counting the
records the agent rejected and the first reason.

Bad input never earns a 5xx and never stops the agent:

- 415 for another content type or content encoding;
- 413 when the body exceeds ``max_request_bytes`` on the wire *or after decompression*;
  decompression is streamed with a cap, so a gzip bomb never allocates its full size;
- 400 when the body does not decode (garbage, truncated protobuf or gzip, invalid JSON);
- 408 when the body does not arrive within ``body_timeout`` (the connection is closed).

The aiohttp server must run with ``auto_decompress=False`` (as
:mod:`lockscope.agent.app` does), so this module sees the bytes on the wire and applies its
own limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from typing import Final

from aiohttp import web

from lockscope.agent.app_keys import (
    EVENT_TAPS_KEY,
    METRICS_STORE_KEY,
    RECEIVER_LIMITS_KEY,
    RECEIVER_STATS_KEY,
    STATE_KEY,
)
from lockscope.agent.model import RejectedEvent
from lockscope.agent.otlp_decode import (
    DecodeError,
    Signal,
    WireFormat,
    decode_logs,
    decode_traces,
    encode_response,
    encode_status,
    parse_request,
)
from lockscope.agent.otlp_decode_metrics import HistogramPoint, SumPoint, decode_metrics
from lockscope.agent.state import AgentState
from lockscope.agent.string_caps import cap_event, cap_point

__all__ = ["read_body", "setup_otlp_routes"]

log = logging.getLogger(__name__)

_CONTENT_TYPES: Final[dict[str, WireFormat]] = {
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/json": "json",
}
_MEDIA_TYPE: Final[dict[WireFormat, str]] = {
    "protobuf": "application/x-protobuf",
    "json": "application/json",
}
_IDENTITY: Final = frozenset({"", "identity"})
_COMPRESSED: Final = frozenset({"gzip", "x-gzip", "deflate"})
_CHUNK: Final = 64 * 1024

# gRPC status codes for the google.rpc.Status error bodies.
_INVALID_ARGUMENT: Final = 3
_RESOURCE_EXHAUSTED: Final = 8
_INTERNAL_ERRORS_LOGGED: Final = 20
_YIELD_EVERY: Final = 128
"""Events applied between yields to the event loop: an API request or a probe waits for at
most one slice (~1 ms), not a whole batch; a yield costs ~0.2 µs per event."""


class BodyTooLarge(Exception):
    """The body exceeds the limit, compressed or decompressed."""


async def read_body(request: web.Request, encoding: str, limit: int) -> bytes:
    """Read and decompress the request body, never holding more than ``limit`` bytes of
    either the compressed or the decompressed body (plus one chunk).

    Raises :class:`BodyTooLarge` above the limit and :class:`DecodeError` for a corrupt or
    truncated compressed stream.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    compressed = 0
    out = bytearray()
    # wbits 47 = zlib or gzip header, detected automatically (HTTP "deflate" is zlib).
    decompressor = None if encoding in _IDENTITY else zlib.decompressobj(wbits=47)
    async for chunk in request.content.iter_chunked(_CHUNK):
        compressed += len(chunk)
        if compressed > limit:
            raise BodyTooLarge
        if decompressor is None:
            out += chunk
            continue
        data = chunk
        while data:
            if decompressor.eof:
                # Concatenated gzip members (allowed by RFC 1952): start the next one.
                decompressor = zlib.decompressobj(wbits=47)
            try:
                out += decompressor.decompress(data, limit + 1 - len(out))
            except zlib.error as exc:
                raise DecodeError(f"invalid {encoding} stream: {exc}") from None
            if len(out) > limit:
                raise BodyTooLarge
            # max_length caps output at limit + 1, so input is left unconsumed only when
            # the limit was hit (raised above); data after a finished member is the next one.
            data = decompressor.unused_data if decompressor.eof else b""
    if decompressor is not None:
        if not decompressor.eof:
            raise DecodeError(f"truncated {encoding} stream")
        out += decompressor.flush()
        if len(out) > limit:
            raise BodyTooLarge
    return bytes(out)


def _error(wire: WireFormat, status: int, code: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=encode_status(wire, code, message),
        content_type=_MEDIA_TYPE[wire],
    )


async def _handle(request: web.Request, signal: Signal) -> web.Response:
    stats = request.app[RECEIVER_STATS_KEY]
    wire = _CONTENT_TYPES.get(request.content_type)
    if wire is None:
        stats.reject("unsupported_media_type")
        return _error(
            "json",
            415,
            _INVALID_ARGUMENT,
            f"unsupported content type {request.content_type!r}; "
            "use application/x-protobuf or application/json",
        )
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _IDENTITY and encoding not in _COMPRESSED:
        stats.reject("unsupported_encoding")
        return _error(wire, 415, _INVALID_ARGUMENT, f"unsupported content encoding {encoding!r}")
    limits = request.app[RECEIVER_LIMITS_KEY]
    limit = limits.max_request_bytes
    try:
        # A body trickling in a byte at a time would hold its connection (and a descriptor)
        # for as long as the client likes: it gets body_timeout in all.
        async with asyncio.timeout(limits.body_timeout):
            body = await read_body(request, encoding, limit)
        message = parse_request(signal, body, wire)
    except TimeoutError:
        stats.reject("body_timeout")
        response = _error(wire, 408, _INVALID_ARGUMENT, "request body not received in time")
        response.force_close()
        return response
    except BodyTooLarge:
        stats.reject("too_large")
        return _error(wire, 413, _RESOURCE_EXHAUSTED, f"body larger than {limit} bytes")
    except DecodeError as exc:
        stats.reject("decode_error")
        return _error(wire, 400, _INVALID_ARGUMENT, str(exc))
    try:
        rejected, error_message = await _ingest(request.app, signal, message, len(body))
    except Exception:
        # A decoder bug on odd input: 400 (not retryable) rather than a 5xx that makes the
        # exporter resend the same batch forever.
        log.exception("failed to process an OTLP %s request", signal)
        stats.reject("internal_error")
        return _error(wire, 400, _INVALID_ARGUMENT, "the agent could not process this request")
    return web.Response(
        body=encode_response(signal, wire, rejected, error_message),
        content_type=_MEDIA_TYPE[wire],
    )


async def _ingest(
    app: web.Application, signal: Signal, message: object, body_len: int
) -> tuple[int, str]:
    """Hand the decoded records to the state (or the metrics store); returns the number of
    rejected records and the first reason, for ``partial_success``.

    Strings longer than ``limits.max_string_length`` are cut first (:mod:`string_caps`);
    a body shorter than the limit cannot hold one, so most requests skip the check.
    """
    stats = app[RECEIVER_STATS_KEY]
    max_string = app[STATE_KEY].config.limits.max_string_length
    long_strings = body_len > max_string
    if signal == "metrics":
        metrics = decode_metrics(message)
        if long_strings:
            metrics.points = [cap_point(p, max_string, stats.truncated) for p in metrics.points]
        stats.received["metrics"] += metrics.received
        stats.ignored["metrics"] += metrics.ignored
        stats.reject_all(metrics.rejected)
        dropped = app[METRICS_STORE_KEY].add(metrics.points)
        _seen(app[STATE_KEY], metrics.points)
        stats.reject("metric_series_limit", dropped)
        rejected = metrics.rejected.total() + dropped
        first = next(iter(metrics.rejected), "metric_series_limit" if dropped else "")
        return rejected, first
    batch = decode_logs(message, time.time_ns()) if signal == "logs" else decode_traces(message)
    if long_strings:
        batch.events = [cap_event(e, max_string, stats.truncated) for e in batch.events]
    stats.received[signal] += batch.received
    stats.ignored[signal] += batch.ignored
    stats.reject_all(batch.rejected)
    rejected = batch.rejected.total()
    first = next(iter(batch.rejected), "")
    apply = app[STATE_KEY].apply
    taps = app.get(EVENT_TAPS_KEY, ())
    # A span became two events (start, end): a span is rejected if either is.
    group = 1 if signal == "logs" else 2
    events = batch.events
    for start in range(0, len(events), group):
        if start and not start % _YIELD_EVERY:
            # Let ticks, probes and API calls run meanwhile (a 512-record batch takes ~5 ms).
            await asyncio.sleep(0)
        failed = ""
        for event in events[start : start + group]:
            try:
                apply(event)
            except ValueError as exc:
                failed = failed or f"{event.name}: {exc}"
                stats.reject(str(getattr(exc, "reason", "invalid")))
            except Exception:
                # A state bug must not turn one odd record into a 500 or stop the batch.
                stats.reject("internal_error")
                failed = failed or f"{event.name}: internal error"
                if stats.rejected["internal_error"] <= _INTERNAL_ERRORS_LOGGED:
                    log.exception("agent state failed on %s", event)
            else:
                stats.events += 1
                for tap in taps:
                    tap(event)
        if failed:
            rejected += 1
            first = first or failed
    return rejected, first


def _seen(state: AgentState, points: list[SumPoint | HistogramPoint]) -> None:
    """A process is known from its metrics too, under the same identity as its events."""
    now = time.time_ns()
    for process in {p.process.instance: p.process for p in points}.values():
        with contextlib.suppress(RejectedEvent):  # limits.max_processes: counted
            state.procs.seen(process, now)


async def _logs(request: web.Request) -> web.Response:
    return await _handle(request, "logs")


async def _traces(request: web.Request) -> web.Response:
    return await _handle(request, "traces")


async def _metrics(request: web.Request) -> web.Response:
    return await _handle(request, "metrics")


def setup_otlp_routes(app: web.Application) -> None:
    """Add the three OTLP/HTTP export routes; the app must carry the keys of
    :mod:`lockscope.agent.app_keys`."""
    app.router.add_post("/v1/logs", _logs)
    app.router.add_post("/v1/traces", _traces)
    app.router.add_post("/v1/metrics", _metrics)
