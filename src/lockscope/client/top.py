"""A live terminal view of the agent: the hottest locks and the active findings, refreshed
in place (like ``top``, ``htop`` or ``pg_activity``).

Example:

    lockscope top                                   # the agent at http://127.0.0.1:9477
    lockscope top --http http://agent.internal:9477 --interval 1
    lockscope top -n 1 | less                       # one plain frame, for a pipe

Each lock row shows its waiters and how long the oldest has waited, the 99th percentile
of its wait times over the last refresh interval (from the agent's /metrics histogram of
the lock's name template; the whole history on the first frame), its holders and how long
the oldest has held it.  Only locks with a reported (long) hold or wait are known to the
agent.  Below them: every active finding, with when it began.

Keys on a terminal: ``q`` (or Ctrl-C) quits, ``space`` refreshes now.  When the output is
not a terminal, frames are printed one after another as plain text, without escape codes
(``-n`` frames; one by default).

Exit status: 0; 2 when the agent cannot be reached at the first frame (later failures are
shown in the frame and retried).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import select
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from lockscope.client import (
    AgentClient,
    AgentError,
    add_agent_arguments,
    address_origin,
    agent_token,
)
from lockscope.client.status import SECTIONS

__all__ = ["Frame", "add_arguments", "fetch_frame", "render_frame", "run", "wait_p99"]

EXIT_UNREACHABLE: Final = 2
_BUCKET = re.compile(
    r"^lockscope_lock_wait_seconds_bucket"
    r'\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\} (?P<value>\S+)'  # values may hold "}"
)
_KINDS: Final = {
    "deadlocks": "deadlock",
    "stale_holders": "stale",
    "violations": "violation",
    "order_inversions": "inversion",
}
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope top`` flags."""
    add_agent_arguments(parser)
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="between refreshes (2)"
    )
    parser.add_argument(
        "-n",
        "--iterations",
        type=int,
        default=None,
        metavar="N",
        help="frames to show, then exit (default: until q on a terminal, 1 otherwise)",
    )


@dataclass
class Frame:
    """What one refresh read from the agent."""

    url: str
    locks: list[dict[str, Any]]
    total_locks: int
    findings: dict[str, list[dict[str, Any]]]
    p99: dict[str, float | None] = field(default_factory=dict)
    """Wait p99 in seconds by lock template (None: no waits in the interval)."""
    error: str | None = None
    at: float = field(default_factory=time.time)


def _buckets(text: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative ``(le, count)`` buckets of the wait histogram, by ``lock`` label."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if "lock" not in labels or "le" not in labels:
            continue
        try:
            bound, count = float(labels["le"]), float(match["value"])
        except ValueError:
            continue
        out.setdefault(labels["lock"], []).append((bound, count))
    for series in out.values():
        series.sort()
    return out


def _merge(series: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sum buckets of equal bound (one template can come from several systems)."""
    merged: dict[float, float] = {}
    for bound, count in series:
        merged[bound] = merged.get(bound, 0.0) + count
    return sorted(merged.items())


def wait_p99(
    now: Mapping[str, list[tuple[float, float]]],
    before: Mapping[str, list[tuple[float, float]]] | None = None,
) -> dict[str, float | None]:
    """The 99th percentile wait by template, from cumulative histogram buckets: of the
    waits since ``before`` when given, else of all.  The bucket's upper bound is reported
    (as Prometheus' ``histogram_quantile`` does, without interpolation)."""
    out: dict[str, float | None] = {}
    for template, series in now.items():
        current = _merge(series)
        previous = dict(_merge(list((before or {}).get(template, []))))
        delta = [(b, c - previous.get(b, 0.0)) for b, c in current]
        total = delta[-1][1] if delta else 0.0
        if total <= 0:
            out[template] = None
            continue
        target = 0.99 * total
        out[template] = next((b for b, c in delta if c >= target), math.inf)
    return out


def fetch_frame(
    client: AgentClient, rows: int, before: Mapping[str, list[tuple[float, float]]] | None
) -> tuple[Frame, dict[str, list[tuple[float, float]]] | None]:
    """One frame (raises :class:`AgentError` when the API cannot be read) and the histogram
    buckets read for it (None when /metrics could not be read)."""
    body = client.get(f"/api/v1/locks?limit={max(1, rows)}")
    locks = body.get("locks", []) if isinstance(body, dict) else []
    total = body.get("total", len(locks)) if isinstance(body, dict) else len(locks)
    findings = {key: client.findings(path, key, "active") for path, key, _t, _c in SECTIONS}
    for lock in locks[:rows]:
        detail = client.lock_detail(str(lock.get("name", "")))
        if detail is not None:
            lock["holders"] = detail.get("holders", [])
    frame = Frame(client.url, locks, int(total), findings)
    buckets = None
    try:
        buckets = _buckets(client.get_text("/metrics"))
        frame.p99 = wait_p99(buckets, before)
    except AgentError:
        pass  # e.g. /metrics behind a token the user has not given: no p99 column values
    return frame, buckets


def _age(since: Any, now: float) -> str:
    if not isinstance(since, str):
        return "-"
    try:
        then = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "-"
    return _seconds(max(0.0, now - then))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return ">max"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def _fit(text: str, width: int) -> str:
    """``text`` in ``width`` columns; a cut is marked with "~" at the end, never silent."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _holder(lock: Mapping[str, Any]) -> str:
    holders = lock.get("holders") or []
    if not holders:
        return "-"
    who = str(holders[0].get("actor") or "?")  # service:pid/thread, as the agent names it
    return who + (f" +{len(holders) - 1}" if len(holders) > 1 else "")


def _finding_line(kind: str, item: Mapping[str, Any], now: float) -> str:
    since = item.get("detected_at") or item.get("since")
    locks = item.get("locks") or ([item["lock"]] if item.get("lock") else [])
    where = ", ".join(str(x) for x in locks) or "-"
    who = item.get("service") or ", ".join(
        sorted({str(p.get("service")) for p in item.get("participants") or [] if p})
    )
    return f"{kind:<12} {item.get('id', '-')!s:<18} {_age(since, now):>7}  {where}  ({who or '-'})"


def render_frame(frame: Frame, width: int, height: int | None) -> list[str]:
    """The frame's lines, each at most ``width`` columns; at most ``height`` lines."""
    now = frame.at
    stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S")
    counts = {key: len(items) for key, items in frame.findings.items()}
    head = [
        f"lockscope top - {frame.url} - {stamp} UTC",
        f"{frame.total_locks} locks with long holds or waits; active findings: "
        f"{counts.get('deadlocks', 0)} deadlocks, {counts.get('stale_holders', 0)} stale, "
        f"{counts.get('violations', 0)} violations, "
        f"{counts.get('order_inversions', 0)} inversions",
    ]
    if frame.error:
        head.append(f"! {frame.error}")
    head.append("")
    fixed = [("WAITERS", 7), ("WAITED", 7), ("P99", 7), ("HOLDERS", 7), ("HELD", 7)]
    name_width = max(12, min(60, width - sum(w + 2 for _n, w in fixed) - 24))
    header = f"{'LOCK':<{name_width}}  " + "  ".join(f"{n:>{w}}" for n, w in fixed) + "  HOLDER"
    body = [header]
    findings_lines = ["", "ACTIVE FINDINGS (kind, id, age, locks, services)"]
    for _path, key, _title, _c in SECTIONS:
        for item in frame.findings.get(key, []):
            findings_lines.append(_finding_line(_KINDS.get(key, key), item, now))
    if len(findings_lines) == 2:
        findings_lines.append("none")
    room = None if height is None else max(1, height - len(head) - len(findings_lines) - 1)
    for lock in frame.locks[:room]:
        template = str(lock.get("template") or lock.get("name") or "")
        cells = [
            str(lock.get("waiter_count", 0)),
            _age(lock.get("oldest_wait_since"), now),
            _seconds(frame.p99.get(template)),
            str(lock.get("holder_count", 0)),
            _age(lock.get("held_since"), now),
        ]
        name = _fit(str(lock.get("name", "")), name_width)
        row = f"{name:<{name_width}}  " + "  ".join(
            f"{c:>{w}}" for c, (_n, w) in zip(cells, fixed, strict=True)
        )
        body.append(row + "  " + _holder(lock))
    if len(body) == 1:
        body.append("(no lock has a long hold or wait)")
    lines = head + body + findings_lines
    if height is not None:
        lines = lines[:height]
    return [_fit(line, width) for line in lines]


@contextlib.contextmanager
def _screen(out: TextIO) -> Iterator[None]:
    """The alternate screen in cbreak mode (keys without Enter), restored on exit."""
    import termios
    import tty

    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    out.write("\x1b[?1049h\x1b[?25l")
    out.flush()
    try:
        if fd is not None:
            tty.setcbreak(fd)
        yield
    finally:
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()


def _size(out: TextIO, live: bool) -> os.terminal_size:
    """The terminal's own size when live (it follows resizes); else ``COLUMNS`` or 100."""
    if live:
        with contextlib.suppress(OSError, ValueError):
            return os.get_terminal_size(out.fileno())
    return shutil.get_terminal_size((100, 40))


def _key(timeout: float) -> str | None:
    """A key pressed within ``timeout`` seconds, or None."""
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return None
    ready, _w, _x = select.select([sys.stdin], [], [], timeout)
    return os.read(sys.stdin.fileno(), 1).decode(errors="replace") if ready else None


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Show frames until ``q`` (terminal) or ``-n`` frames; see the module docstring."""
    try:
        return _run(args, out if out is not None else sys.stdout)
    except KeyboardInterrupt:  # Ctrl-C is how many people leave top
        return 0


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        client = AgentClient(
            args.http, token=agent_token(args.token), timeout=max(1.0, args.interval)
        )
    except ValueError as exc:
        print(f"lockscope top: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    live = out.isatty()
    iterations = args.iterations if args.iterations is not None else (None if live else 1)
    before: dict[str, list[tuple[float, float]]] | None = None
    frame: Frame | None = None
    shown = 0
    with _screen(out) if live else contextlib.nullcontext():
        while iterations is None or shown < iterations:
            size = _size(out, live)
            try:
                frame, buckets = fetch_frame(client, size.lines if live else 50, before)
                before = buckets if buckets is not None else before
            except AgentError as exc:
                if frame is None:
                    if live:
                        out.write("\x1b[?25h\x1b[?1049l")
                    print(f"lockscope top: {exc}{address_origin(args.http)}", file=sys.stderr)
                    return EXIT_UNREACHABLE
                frame.error = f"{exc} (retrying)"
                frame.at = time.time()
            lines = render_frame(frame, size.columns, size.lines if live else None)
            if live:
                out.write("\x1b[H" + "".join(line + "\x1b[K\r\n" for line in lines) + "\x1b[J")
            else:
                if shown:
                    out.write("\n")
                out.write("\n".join(lines) + "\n")
            out.flush()
            shown += 1
            if iterations is not None and shown >= iterations:
                break
            if not live:
                time.sleep(args.interval)
                continue
            deadline = time.monotonic() + args.interval
            while (left := deadline - time.monotonic()) > 0:
                key = _key(left)
                if key in ("q", "Q", "\x03"):
                    return 0
                if key == " ":
                    break
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    """``python -m lockscope.client.top``: the same as ``lockscope top``."""
    parser = argparse.ArgumentParser(prog="lockscope top", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
