"""Redlock: one lock over N independent Redis servers, held by a majority of them.

::

    from lockscope.locks import Redlock

    urls = ["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0", "redis://10.0.0.3:6379/0"]
    lock = Redlock("invoice:42", urls, ttl=10)
    with lock:
        storage.write(..., fence=lock.fencing_token)

The algorithm is antirez's (https://redis.io/docs/latest/develop/use/patterns/distributed-locks/):

1. Note the monotonic time, then ``SET key owner NX PX ttl`` on every server, each call
   bounded by a per-server timeout much smaller than ``ttl``.
2. The lock is held when a quorum (``N // 2 + 1``) of servers said yes and the validity
   ``ttl - elapsed - drift`` (drift = 1 % of ``ttl`` + 2 ms) is still positive.
3. Otherwise release on *every* server (a timed-out SET may still have landed) and retry
   after a random delay.

On top of it, a **fencing token** that strictly increases per lock name across holders.
A per-server counter is not enough, because two acquisitions may use different quorums.
So the acquire script on each server also returns that server's fence counter; the token
is ``max(counters of the acquired servers) + 1``; a second, token-checked script then
raises ``fence = max(fence, token)`` on every acquired server, and the acquisition counts
only if that write succeeded on a quorum while the keys were still ours.  Any two quorums
share a server, and on that server the earlier holder's fence write happened while it held
the key, so before the later holder's SET: the later holder reads a counter at least as
large as the earlier token and takes a larger one.

What this does **not** guarantee is documented in docs/locks.md ("Redlock"): it assumes
bounded process pauses, bounded clock drift and servers that keep their data across a
restart.  Where those fail, mutual exclusion can fail too; the fencing token, checked by
the protected resource, is the real protection.

The sync :class:`Redlock` talks to the servers one after the other (as antirez's reference
description does): no threads, so it is safe in forked workers, and a slow server costs its
per-server timeout, which the validity accounts for.  :class:`AsyncRedlock` talks to all
servers at once with :func:`asyncio.gather`. Both run the same algorithm, written once as
sans-IO operations (:mod:`lockscope.locks._sansio`) that yield batches of server calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import redis
import redis.asyncio

from lockscope.errors import BackendUnavailable, LockError, LockLost, LockNotOwned
from lockscope.locks._redis_common import (
    ACQUIRE_READING_FENCE,
    DEFAULT_PREFIX,
    EXTEND,
    HOLDER,
    RAISE_FENCE,
    RELEASE,
    LockHolder,
    decode,
    new_owner,
    parse_holder,
    to_ms,
)
from lockscope.locks._redis_family import AsyncRedisFamily, RedisFamily, SyncRedisFamily
from lockscope.locks._sansio import Batch, Call, Failure, GiveBack, Op
from lockscope.locks.base import validate_ttl

__all__ = ["AsyncRedlock", "LockHolder", "Redlock", "clock_drift"]

DEFAULT_MAX_EXTENSIONS = 3
_MIN_TTL = 0.01


def clock_drift(seconds: float) -> float:
    """The drift allowance for a lease of ``seconds``: 1 % of it plus 2 ms."""
    return seconds * 0.01 + 0.002


def default_server_timeout(ttl: float) -> float:
    """A tenth of the ttl, kept between 50 ms and 500 ms."""
    return max(0.05, min(0.5, ttl / 10))


SCRIPTS = {
    "acquire": ACQUIRE_READING_FENCE,
    "fence": RAISE_FENCE,
    "release": RELEASE,
    "extend": EXTEND,
    "holder": HOLDER,
}

_C = TypeVar("_C")


def _failures(replies: Sequence[Any]) -> list[Failure]:
    return [r for r in replies if isinstance(r, Failure)]


class _RedlockCommon(RedisFamily, Generic[_C]):
    """Configuration, quorum arithmetic and every operation (sans-IO) of both flavours."""

    system: ClassVar[str] = "redlock"

    def __init__(
        self,
        name: str,
        clients_or_urls: Sequence[_C | str],
        *,
        ttl: float,
        blocking_timeout: float | None = None,
        retry_interval: float = 0.1,
        prefix: str = DEFAULT_PREFIX,
        server_timeout: float | None = None,
        max_extensions: int | None = DEFAULT_MAX_EXTENSIONS,
    ) -> None:
        if ttl is None:
            raise TypeError("Redlock needs a ttl (seconds); None is not allowed")
        super().__init__(
            name, ttl=ttl, blocking_timeout=blocking_timeout, retry_interval=retry_interval
        )
        self.ttl: float = validate_ttl(ttl)
        if self.ttl < _MIN_TTL:
            raise ValueError(f"Redlock ttl must be at least {_MIN_TTL}s, got {ttl!r}")
        self._set_keys(prefix)
        self.server_timeout = (
            default_server_timeout(self.ttl)
            if server_timeout is None
            else validate_ttl(server_timeout, "server_timeout")
        )
        if max_extensions is not None and (
            isinstance(max_extensions, bool) or not isinstance(max_extensions, int)
        ):
            raise TypeError(f"max_extensions must be an int or None, not {max_extensions!r}")
        if max_extensions is not None and max_extensions < 0:
            raise ValueError(f"max_extensions must not be negative, got {max_extensions}")
        self.max_extensions = max_extensions
        servers: object = clients_or_urls
        if isinstance(servers, str | bytes) or not isinstance(servers, Sequence):
            raise TypeError("clients_or_urls must be a list of redis clients or URLs")
        if not servers:
            raise ValueError("Redlock needs at least one server")
        self._ttl_ms = to_ms(self.ttl)
        self.owner: str | None = None
        """Owner token of this object's latest acquisition (stored on every server)."""
        self._held = False
        self._valid_until = 0.0
        self._extensions = 0
        self._owned_clients: list[Any] = []
        clients: list[_C] = [
            self._client_of(item, "each server", self.server_timeout) for item in servers
        ]
        self.clients = clients
        self._io = self._io_class(clients, SCRIPTS, collect_failures=True)
        self._servers = self._io.namespaces
        if len(set(self._servers)) != len(self._servers):
            raise ValueError(f"Redlock servers must be distinct, got {self._servers}")

    @property
    def servers(self) -> list[str]:
        """``host:port/db`` of each server, in the order given."""
        return list(self._servers)

    @property
    def namespace(self) -> str:
        """All servers, sorted and comma-separated: the set of servers is the lock's home."""
        return ",".join(sorted(self._servers))

    @property
    def quorum(self) -> int:
        """How many servers must agree: ``N // 2 + 1``."""
        return len(self._servers) // 2 + 1

    @property
    def key(self) -> str:
        """The Redis key of the lock on every server."""
        return self._key

    @property
    def validity(self) -> float:
        """Seconds this object may still rely on holding the lock (0 when not held).

        Counted from *before* the first SET, minus the drift allowance, on the monotonic
        clock: the servers' keys live at least this long, if clocks drift by less.
        """
        if not self._held:
            return 0.0
        return max(0.0, self._valid_until - time.monotonic())

    @property
    def extensions(self) -> int:
        """How many times the current hold was extended."""
        return self._extensions

    def _check_held(self) -> str:
        if not self._held or self.owner is None:
            raise LockNotOwned(f"{self.name!r} is not held by this lock object")
        return self.owner

    def _unavailable(self, failures: Sequence[Failure], what: str) -> BackendUnavailable:
        answered = len(self._servers) - len(failures)
        first = failures[0].error if failures else None
        return BackendUnavailable(
            f"{what} {self.name!r}: only {answered} of {len(self._servers)} redis servers "
            f"answered, a quorum needs {self.quorum} (first error: {first})"
        )

    def _quorum_impossible(self, failures: Sequence[Failure]) -> bool:
        return len(self._servers) - len(failures) < self.quorum

    def _counters(self, replies: Sequence[Any]) -> dict[int, int]:
        """Phase 1: server index -> fence counter, for every server whose SET succeeded."""
        return {
            i: int(r) for i, r in enumerate(replies) if not isinstance(r, Failure) and int(r) >= 0
        }

    def _settle_acquire(self, owner: str, start: float, token: int, fenced: int) -> bool:
        """Decide an attempt once the fence writes are done; record a successful one."""
        validity = self.ttl - (time.monotonic() - start) - clock_drift(self.ttl)
        if fenced < self.quorum or validity <= 0:
            return False
        self.owner, self.fencing_token, self._held = owner, token, True
        self._valid_until = start + self.ttl - clock_drift(self.ttl)
        self._extensions = 0
        return True

    def _check_extension_allowed(self) -> None:
        if self.max_extensions is not None and self._extensions >= self.max_extensions:
            raise LockError(
                f"{self.name!r} was already extended {self._extensions} times "
                f"(max_extensions={self.max_extensions}); release and acquire again"
            )

    def _settle_extend(self, seconds: float, start: float, replies: Sequence[Any]) -> bool:
        """True if extended; False if lost; raises BackendUnavailable if undecidable."""
        extended = sum(1 for r in replies if not isinstance(r, Failure) and int(r))
        failures = _failures(replies)
        validity = seconds - (time.monotonic() - start) - clock_drift(seconds)
        if extended >= self.quorum and validity > 0:
            self._valid_until = start + seconds - clock_drift(seconds)
            self._extensions += 1
            return True
        if extended < self.quorum and extended + len(failures) >= self.quorum:
            raise self._unavailable(failures, "extend of")
        self._held = False
        return False

    def _settle_release(self, replies: Sequence[Any]) -> None:
        released = sum(1 for r in replies if not isinstance(r, Failure) and int(r))
        failures = _failures(replies)
        if released >= self.quorum:
            return
        if released + len(failures) >= self.quorum:
            raise self._unavailable(failures, "release of")
        raise self._lost("release of")

    def _lost(self, what: str) -> LockLost:
        self._held = False
        return LockLost(
            f"{what} {self.name!r}: fewer than {self.quorum} of {len(self._servers)} servers "
            f"still hold our key (lease expired or taken; our fencing token was "
            f"{self.fencing_token})"
        )

    def _count_matching(
        self, replies: Sequence[Any], match: Callable[[Any], bool], what: str
    ) -> bool:
        """Quorum vote over per-server answers; BackendUnavailable if undecidable."""
        yes = sum(1 for r in replies if not isinstance(r, Failure) and match(r))
        failures = _failures(replies)
        if yes >= self.quorum:
            return True
        if yes + len(failures) >= self.quorum:
            raise self._unavailable(failures, what)
        return False

    def _pick_holder(self, replies: Sequence[Any]) -> LockHolder | None:
        failures = _failures(replies)
        if len(failures) == len(replies):
            raise self._unavailable(failures, "holder of")
        seen: dict[str, list[LockHolder]] = {}
        for reply in replies:
            if isinstance(reply, Failure):
                continue
            holder = parse_holder(reply)
            if holder is not None:
                seen.setdefault(holder.owner, []).append(holder)
        for owner, views in seen.items():
            if len(views) >= self.quorum:
                # The lease lasts while a quorum of keys lives: the quorum-th longest one.
                ttls = sorted((v.ttl for v in views if v.ttl is not None), reverse=True)
                ttl = ttls[self.quorum - 1] if len(ttls) >= self.quorum else None
                return LockHolder(owner, max(v.fencing_token for v in views), ttl)
        return None

    # -- the operations, written once --------------------------------------------------------
    def _everywhere(self, command: str, keys: tuple[Any, ...], args: tuple[Any, ...] = ()) -> Batch:
        return [Call(i, command, keys, args) for i in range(len(self._servers))]

    def _release_everywhere(self, owner: str) -> Batch:
        return self._everywhere("release", (self._key,), (owner,))

    def _acquire_op(self) -> Op[bool]:
        owner = new_owner()
        keys = (self._key, self._fence_key)
        try:
            start = time.monotonic()
            replies = yield self._everywhere("acquire", keys, (owner, self._ttl_ms))
            failures = _failures(replies)
            counters = self._counters(replies)
            if len(counters) >= self.quorum:
                token = max(counters.values()) + 1
                fenced = yield [Call(i, "fence", keys, (owner, token)) for i in counters]
                failures += _failures(fenced)
                ok = sum(1 for r in fenced if not isinstance(r, Failure) and int(r))
                if self._settle_acquire(owner, start, token, ok):
                    return True
        except GiveBack:
            # Keys set before the cancellation would block everyone for a whole ttl.
            yield self._release_everywhere(owner)
            raise
        yield self._release_everywhere(owner)
        if self._quorum_impossible(failures):
            raise self._unavailable(failures, "acquire of")
        return False

    def _release_op(self) -> Op[None]:
        owner = self._check_held()
        self._held = False
        self._settle_release((yield self._release_everywhere(owner)))

    def _extend_op(self, seconds: float) -> Op[None]:
        ms = to_ms(seconds, "seconds")
        owner = self._check_held()
        self._check_extension_allowed()
        start = time.monotonic()
        replies = yield self._everywhere("extend", (self._key,), (owner, ms))
        if not self._settle_extend(seconds, start, replies):
            yield self._release_everywhere(owner)
            raise self._lost("extend of")

    def _locked_op(self) -> Op[bool]:
        replies = yield self._everywhere("exists", (self._key,))
        return self._count_matching(replies, bool, "locked() of")

    def _owned_op(self) -> Op[bool]:
        if not self._held or self.owner is None or self.validity <= 0:
            return False
        owner = self.owner
        replies = yield self._everywhere("get", (self._key,))
        mine = self._count_matching(
            replies, lambda v: v is not None and decode(v) == owner, "owned() of"
        )
        return mine and self.validity > 0

    def _holder_op(self) -> Op[LockHolder | None]:
        return self._pick_holder((yield self._everywhere("holder", (self._key, self._fence_key))))


class Redlock(_RedlockCommon[redis.Redis], SyncRedisFamily):
    """An exclusive lock held by a majority of N independent Redis servers.

    :param name: lock name; the key on every server is ``<prefix>:{name}``.
    :param clients_or_urls: one ``redis.Redis`` client or URL per server (use an odd number,
        3 or 5).  Clients made from URLs use ``server_timeout`` and no retries; clients you
        pass keep their own timeouts, which should be much smaller than ``ttl``.
    :param ttl: lease in seconds (at least 0.01).
    :param blocking_timeout: how long ``with lock:`` waits (``None`` = forever).
    :param retry_interval: mean random delay between attempts while the lock is busy.
    :param prefix: key prefix (no braces).
    :param server_timeout: connect/read timeout per server call for clients made from URLs
        (default: ``ttl / 10`` within 50..500 ms).
    :param max_extensions: how often one hold may be extended (``None`` = no cap).  The cap
        stops a stuck holder from keeping the lock forever; use ``None`` under an
        auto-renewing wrapper.

    ``acquire`` returns ``False`` while the lock is busy or an attempt ran out of validity,
    and raises :class:`~lockscope.errors.BackendUnavailable` when so many servers failed
    that no quorum was possible.
    """

    _client_types = (redis.Redis,)
    _wrong_client = "redis.Redis client (use AsyncRedlock for redis.asyncio)"


class AsyncRedlock(_RedlockCommon[redis.asyncio.Redis], AsyncRedisFamily):
    """The asyncio flavour of :class:`Redlock`; all servers are asked concurrently.

    Same parameters and behaviour, on ``redis.asyncio.Redis`` clients or URLs.
    """

    _client_types = (redis.asyncio.Redis,)
    _wrong_client = "redis.asyncio.Redis client (use Redlock for sync clients)"
