"""The agent's tunables: detection thresholds, lock-name templating and memory limits.

Every field has a documented default; ``lockscope agent --config FILE`` reads a TOML file
with the same names (see docs/agent.md, "Configuration")::

    max_hold = 300
    lease_grace = 0.5

    [max_hold_overrides]
    "order:{id}" = 30          # a template or an fnmatch pattern; 0 disables the check

    [[template_rules]]
    pattern = '^tenant/[^/]+/'
    replacement = 'tenant/{tenant}/'

    [limits]
    max_processes = 10000

Durations are seconds (int or float).  Unknown keys and wrong types are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from os import PathLike
from typing import Any

__all__ = ["AgentConfig", "ConfigError", "Limits"]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds on what the agent keeps (docs/design.md, principle 6).

    When a limit is hit the new item is not tracked and the hit is counted
    (``AgentState.counters.limits_hit[name]``); nothing already tracked is dropped, so a
    limit can hide a deadlock but never invent one.
    """

    max_processes: int = 10_000
    """Reporting processes tracked at once (alive or recently dead)."""
    max_locks: int = 2_000_000
    """Locks with at least one reported hold or wait."""
    max_holds: int = 2_000_000
    """Reported holds across the fleet."""
    max_waits: int = 1_000_000
    """Reported waits across the fleet."""
    max_findings: int = 10_000
    """Findings kept (active and resolved); the oldest resolved ones go first."""
    max_label_values: int = 1_000
    """Distinct lock templates used as metric label values; the rest become ``{other}``."""
    max_order_pairs: int = 100_000
    """Distinct (first, second) lock-template pairs in the merged lock-order graph."""
    max_token_history: int = 100_000
    """Locks whose recent fencing tokens are remembered (least recently used go first)."""
    max_tombstones: int = 200_000
    """Remembered ended holds/waits, so a late start event cannot resurrect them."""
    max_heartbeat_entries: int = 100_000
    """Holds plus waits accepted from one heartbeat; the rest of that heartbeat is ignored."""
    max_string_length: int = 1_024
    """Characters kept of any string an event brings (lock names, owners, code locations,
    actor, service and instance names); a longer one is cut to this length, ending in a
    digest of the whole so distinct names stay distinct, and counted (at least 64)."""
    max_connections: int = 1_000
    """Client connections on both listeners together; lowered to the file-descriptor limit
    minus a reserve of 128.  Over it, the oldest connection with no request in progress is
    closed (see docs/reliability.md, Slow clients)."""
    max_explore: int = 100_000
    """Graph nodes one cycle search may visit before it gives up (counted)."""
    timeline_size: int = 10_000
    """Recent lock events kept for ``/api/v1/locks/{name}``'s timeline (one ring, all locks)."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Detection thresholds and limits of one agent.

    Build one with keyword arguments, :meth:`from_toml` or :meth:`from_mapping`; derive a
    variant with :func:`dataclasses.replace`.
    """

    report_after: float = 0.2
    """The shims' reporting threshold (design principle 1).  The agent does not filter by it;
    it documents what a missing short wait means and is what ``lockscope.testing`` passes to
    the shims it starts."""
    heartbeat_interval: float = 1.0
    """Heartbeat interval assumed for a process that does not announce its own."""
    heartbeat_miss_factor: float = 3.0
    """A process is presumed dead after this many of its own heartbeat intervals of silence."""
    heartbeat_timeout_floor: float = 1.0
    """...but never sooner than this many seconds."""
    silent_process_timeout: float = 60.0
    """Liveness timeout for a process that has never sent a heartbeat (e.g. an app in another
    language that only sends lock spans)."""
    dead_process_retention: float = 600.0
    """How long a dead process and its orphaned holds are kept before being forgotten."""
    in_process_systems: tuple[str, ...] = ("threading", "asyncio")
    """Lock systems whose locks die with their process: no orphaned finding for them."""
    max_hold: float = 300.0
    """Stale-holder threshold in seconds (reason ``max_hold``); 0 disables."""
    max_hold_overrides: Mapping[str, float] = field(default_factory=dict)
    """Per lock template (exact, or an fnmatch pattern such as ``"report:*"``) ``max_hold``;
    the first matching entry wins, 0 disables the check for those locks."""
    lease_grace: float = 0.5
    """A hold still reported this long after its lease ended is a ``lease_expired`` stale
    holder; an orphaned hold is dropped this long after its lease ends."""
    max_clock_ahead: float = 10.0
    """An event dated more than this many seconds after it arrived counts as dated this
    far ahead: a fast or forged clock cannot make a process's later reports look old.
    Processes that number their events (lockscope's shim) are ordered by the numbers."""
    clock_skew: float = 0.05
    """Tolerated clock difference between hosts: two holds of one exclusive lock must
    overlap by more than this to be a mutual-exclusion violation."""
    confirm_after: float = 0.0
    """Seconds a deadlock candidate must persist before it is re-checked and reported.
    0 confirms at once (lowest latency); a few hundred ms rides out reordered delivery."""
    evidence_timeout: float = 2.5
    """A deadlock is reported once the evidence shows all its participants stuck at one
    instant (every wait and hold asserted after the last wait began, see docs/agent.md);
    until then the candidate waits for the participants' next heartbeats, at most this long
    (senders that never heartbeat always wait this long).  0 reports candidates at once."""
    finding_ttl: float = 300.0
    """One-shot findings (violations, lost locks) stay active this long, then resolve."""
    tombstone_ttl: float = 30.0
    """How long an ended hold or wait is remembered (see ``Limits.max_tombstones``)."""
    stale_holder_findings: bool = True
    """Report stale holders (``max_hold``, ``orphaned``, ``lease_expired``).  False on a
    detector agent (``lockscope agent --role detector``): its shards own their processes'
    liveness and stale holders, and a detector that stops hearing from a shard must not call
    that shard's holders orphaned."""
    order_self_pairs: bool = False
    """Report a lock-order pair whose two templates are equal (``order:{id}`` then
    ``order:{id}``) as an inversion.  Off: apps that lock ids in sorted order are fine."""
    template_rules: tuple[tuple[str, str], ...] = ()
    """Extra lock-name templating rules ``(regex, replacement)`` for events that arrive
    without a ``lockscope.lock.template`` (see :mod:`lockscope.naming`)."""
    state_file: str | None = None
    """SQLite file keeping what a restart would lose (lock-order pairs, holds of processes
    that may not report again, one-shot findings; :mod:`lockscope.agent.durable_sync`).
    None: ``lockscope agent`` uses ``$LOCKSCOPE_AGENT_STATE_FILE``, else
    ``$XDG_STATE_HOME/lockscope/agent-<OTLP port>.sqlite`` (``~/.local/state/...``), an
    embedded agent keeps nothing; ``""``: keep nothing."""
    header_timeout: float = 10.0
    """A client connection with no request in progress (sending its headers slowly, or
    idle between requests) is closed after this many seconds (also the TLS handshake's
    limit)."""
    body_timeout: float = 30.0
    """An OTLP request body must arrive within this many seconds of its headers (408)."""
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float":
                _check_seconds(f.name, value)
        for name, value in self.max_hold_overrides.items():
            if not isinstance(name, str):
                raise ConfigError(f"max_hold_overrides: key {name!r} must be a string")
            _check_seconds(f"max_hold_overrides.{name}", value)
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval must be > 0")
        if self.limits.max_string_length < 64:
            raise ConfigError("limits.max_string_length must be at least 64")
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ConfigError("header_timeout and body_timeout must be > 0")
        if self.heartbeat_miss_factor < 1:
            raise ConfigError("heartbeat_miss_factor must be >= 1")
        for f in dataclasses.fields(self.limits):
            value = getattr(self.limits, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{f.name} must be a positive integer, got {value!r}")

    # -- derived values -------------------------------------------------------------------
    def max_hold_for(self, template: str) -> float:
        """The ``max_hold`` threshold for a lock template (0 = no check)."""
        for pattern, seconds in self.max_hold_overrides.items():
            if pattern == template or fnmatchcase(template, pattern):
                return seconds
        return self.max_hold

    def liveness_timeout(self, interval: float | None) -> float:
        """Silence after which a process with heartbeat ``interval`` is presumed dead."""
        if interval is None:
            return self.silent_process_timeout
        return max(self.heartbeat_miss_factor * interval, self.heartbeat_timeout_floor)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | PathLike[str]) -> AgentConfig:
        """Read a TOML file; raises :class:`ConfigError` naming the file and the bad key."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        try:
            return cls.from_mapping(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: AgentConfig | None = None) -> AgentConfig:
        """Build from a TOML-shaped mapping, starting from ``base`` (default: the defaults).

        Used by the CLI to layer file, environment and flags: each layer is a partial mapping.
        """
        base = base or cls()
        known = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in data.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
            if key == "limits":
                changes[key] = _limits(value, base.limits)
            elif key == "max_hold_overrides":
                if not isinstance(value, Mapping):
                    raise ConfigError("max_hold_overrides must be a table of template = seconds")
                changes[key] = {
                    str(k): _seconds(f"max_hold_overrides.{k}", v) for k, v in value.items()
                }
            elif key == "template_rules":
                changes[key] = _rules(value)
            elif key == "state_file":
                if not isinstance(value, str):
                    raise ConfigError(f"state_file must be a path (a string), got {value!r}")
                changes[key] = value
            elif key == "in_process_systems":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise ConfigError("in_process_systems must be a list of strings")
                changes[key] = tuple(value)
            elif f.type == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be true or false, got {value!r}")
                changes[key] = value
            else:
                changes[key] = _seconds(key, value)
        return dataclasses.replace(base, **changes)


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _seconds(name: str, value: object) -> float:
    _check_seconds(name, value)
    assert isinstance(value, int | float)
    return float(value)


def _limits(value: object, base: Limits) -> Limits:
    if not isinstance(value, Mapping):
        raise ConfigError("limits must be a table")
    known = {f.name for f in dataclasses.fields(Limits)}
    for key, v in value.items():
        if key not in known:
            raise ConfigError(f"unknown key limits.{key!r} (known: {', '.join(sorted(known))})")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"limits.{key} must be a positive integer, got {v!r}")
    return dataclasses.replace(base, **dict(value))


def _rules(value: object) -> tuple[tuple[str, str], ...]:
    import re

    if not isinstance(value, list | tuple):
        raise ConfigError("template_rules must be an array of {pattern, replacement} tables")
    rules: list[tuple[str, str]] = []
    for i, rule in enumerate(value):
        if isinstance(rule, Mapping):
            extra = set(rule) - {"pattern", "replacement"}
            if extra:
                raise ConfigError(f"template_rules[{i}]: unknown key(s) {sorted(extra)}")
            pattern, replacement = rule.get("pattern"), rule.get("replacement")
        elif isinstance(rule, list | tuple) and len(rule) == 2:
            pattern, replacement = rule
        else:
            raise ConfigError(f"template_rules[{i}] must be a {{pattern, replacement}} table")
        if not isinstance(pattern, str) or not isinstance(replacement, str):
            raise ConfigError(f"template_rules[{i}]: pattern and replacement must be strings")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"template_rules[{i}]: bad regular expression: {exc}") from exc
        rules.append((pattern, replacement))
    return tuple(rules)
