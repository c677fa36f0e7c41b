"""Orphan sweeping: no node of a failed, timed-out or cancelled attempt outlives it.

An orphaned contender node would block the lock for the life of the session, so an
attempt's nodes are deleted at once, or, when the server cannot be reached, recorded and
deleted as soon as the session reconnects (the state listener triggers the sweep).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import KazooException, NoNodeError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from lockscope.locks.zookeeper._connection import Connection

log = logging.getLogger("lockscope.locks.zookeeper")

Targets = list[tuple[str, str]]
"""(parent path, node name prefix) of every node one attempt may have created."""


class Sweeping:
    """Leftover nodes of failed attempts and their removal (a base of the ZooKeeper locks)."""

    path: str
    _conn: Connection
    _mutex: threading.Lock
    _operation_timeout: float
    _pending: list[Targets]
    _abandoned: int
    _recipe: Any

    _update_listener: Callable[[], None]  # provided by another base of the lock

    def _attempt_nodes(self, recipe: Any) -> Targets:
        """(parent, name prefix) of every node this attempt may have created."""
        return [(recipe.path, recipe.prefix)]

    def _discard(self, recipe: Any) -> None:
        """Make sure no node of this attempt outlives it (now, or at the next reconnect)."""
        if self._recipe is recipe:
            self._recipe = None
        targets = self._attempt_nodes(recipe)
        if not self._sweep(targets):
            with self._mutex:
                self._pending.append(targets)
            self._update_listener()

    def _sweep(self, targets: Targets) -> bool:
        client = self._conn.client
        if not client.connected:
            return False
        # Async calls with a timeout: kazoo's sync calls wait for a lost server forever.
        wait = self._operation_timeout
        try:
            for parent, prefix in targets:
                try:
                    names = client.get_children_async(parent).get(timeout=wait)
                except NoNodeError:
                    continue
                for child in names:
                    if child.startswith(prefix):
                        with contextlib.suppress(NoNodeError):
                            client.delete_async(f"{parent}/{child}").get(timeout=wait)
        except SessionExpiredError:
            return True  # ephemeral nodes ended with the session
        except (KazooException, KazooTimeoutError):
            log.warning("ZooKeeper unreachable: %s leftovers removed on reconnect", self.path)
            return False
        return True

    def _sweep_pending(self) -> None:
        with self._mutex:
            pending, self._pending = self._pending, []
        for targets in pending:
            if not self._sweep(targets):
                with self._mutex:
                    self._pending.append(targets)
        self._update_listener()

    @property
    def pending_cleanups(self) -> int:
        """Failed attempts whose nodes still wait to be removed (the server was unreachable)."""
        with self._mutex:
            return len(self._pending) + self._abandoned
