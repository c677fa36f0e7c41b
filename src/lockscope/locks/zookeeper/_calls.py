"""Bounded kazoo calls: every server round trip a lock makes ends within ``operation_timeout``.

kazoo's sync calls wait for an unreachable server indefinitely; these run kazoo's async
calls with a deadline instead and raise :class:`~lockscope.errors.BackendUnavailable`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import ConnectionLoss, KazooException, NoNodeError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from lockscope.errors import BackendUnavailable
from lockscope.locks.zookeeper._connection import Connection

# Every contender node of kazoo's lock recipes ends in one of these plus 10 digits.
_CONTENDER_RE = re.compile(r"(?:__lock__|__rlock__)(-?\d{10})$")

_SEQUENCE_RE = re.compile(r"(-?\d{10})$")


def sequence_of(node: str | None) -> int | None:
    """Return the sequence number of a kazoo contender node name (``...__lock__0000000042``)."""
    if not node:
        return None
    match = _SEQUENCE_RE.search(node)
    return int(match.group(1)) if match else None


class BoundedCalls:
    """The server calls of one lock path (a base of the ZooKeeper locks)."""

    path: str
    _conn: Connection
    _operation_timeout: float

    def _wait(
        self,
        request: Callable[[], Any],
        what: str,
        *,
        expiry_passes: bool = False,
        sent: Any = None,
        on_retry: Callable[[], None] | None = None,
    ) -> Any:
        """Run a kazoo async call, retried after a connection loss, for at most
        ``operation_timeout`` seconds in all.

        ``NoNodeError`` (and with ``expiry_passes``, ``SessionExpiredError``: the
        session's nodes are gone) pass through for the caller to interpret. ``sent`` is
        the result of a call of ``request`` already made; ``on_retry`` runs before each
        retry.
        """
        deadline = time.monotonic() + self._operation_timeout
        result = request() if sent is None else sent
        while True:
            try:
                return result.get(timeout=max(0.0, deadline - time.monotonic()))
            except NoNodeError:
                raise
            except SessionExpiredError:
                if expiry_passes:
                    raise
                raise BackendUnavailable(
                    f"ZooKeeper {what} of {self.path}: session expired"
                ) from None
            except ConnectionLoss as exc:
                # The reply was lost with the connection; kazoo reconnects and queues a
                # new request until then. Callers only retry what is safe to repeat.
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(f"ZooKeeper {what} of {self.path}: {exc!r}") from exc
                if on_retry is not None:
                    on_retry()
                result = request()
            except (KazooException, KazooTimeoutError) as exc:
                raise BackendUnavailable(f"ZooKeeper {what} of {self.path}: {exc!r}") from exc

    def _children(self) -> list[str]:
        try:
            children = self._wait(
                functools.partial(self._conn.client.get_children_async, self.path), "listing"
            )
        except NoNodeError:
            return []
        return list(children)

    def _contender_nodes(self) -> list[str]:
        nodes = [child for child in self._children() if _CONTENDER_RE.search(child)]
        return sorted(nodes, key=lambda child: sequence_of(child) or 0)

    def _identifiers(self, nodes: list[str]) -> list[str]:
        # Ask for all nodes' data at once: one round trip of latency, not one per node.
        client = self._conn.client
        requests = [functools.partial(client.get_async, f"{self.path}/{n}") for n in nodes]
        pending = [(request, request()) for request in requests]
        found = []
        for request, sent in pending:
            try:
                data, _stat = self._wait(request, "contenders", sent=sent)
            except NoNodeError:
                continue  # left while we looked
            found.append((data or b"").decode("utf-8", errors="replace"))
        return found

    def _node_stat(self, node: str | None, *, expiry_passes: bool = False) -> Any:
        """The node's stat, ``None`` if it does not exist (or ``node`` is ``None``)."""
        if node is None:
            return None
        return self._wait(
            functools.partial(self._conn.client.exists_async, node),
            "check",
            expiry_passes=expiry_passes,
        )
