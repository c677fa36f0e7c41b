"""The state listener: kazoo's connection states turned into a hold's ``uncertain`` and
``lost`` flags and the ``on_uncertain``/``on_lost`` callbacks.

``SUSPENDED`` during a hold makes it uncertain (it may still be valid; cleared when the
session reconnects); ``LOST`` makes it lost. The listener is registered only while the
lock holds, waits or has leftovers to sweep, so idle lock objects cost kazoo nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.protocol.states import KazooState

from lockscope.locks.zookeeper._connection import Connection

log = logging.getLogger("lockscope.locks.zookeeper")

Callback = Callable[..., object]


def call_safely(callback: Callback, *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("lockscope ZooKeeper callback %r failed", callback)


class StateListener:
    """Connection-state handling of one lock object (a base of the ZooKeeper locks)."""

    _conn: Connection
    _mutex: threading.Lock
    _held: bool
    _acquiring: bool
    _listening: bool
    _lost_count: int
    _pending: list[Any]
    _abandoned: int
    lost: bool
    uncertain: bool
    on_lost: Callback | None
    on_uncertain: Callback | None

    _sweep_pending: Callable[[], None]  # provided by another base of the lock

    def _update_listener(self) -> None:
        with self._mutex:
            want = self._held or self._acquiring or bool(self._pending) or self._abandoned > 0
            change = want != self._listening
            self._listening = want
        if change:
            if want:
                self._conn.client.add_listener(self._on_state)
            else:
                self._conn.client.remove_listener(self._on_state)

    def _on_state(self, state: str) -> bool:
        # Runs on kazoo's connection thread: never block here, never call ZooKeeper.
        fire: tuple[Callback, tuple[object, ...]] | None = None
        sweep = False
        with self._mutex:
            if state == KazooState.LOST:
                self._lost_count += 1
                if self._held and not self.lost:
                    self.lost = True
                    self.uncertain = False
                    if self.on_lost is not None:
                        fire = (self.on_lost, (self,))
            elif state == KazooState.SUSPENDED:
                if self._held and not self.lost and not self.uncertain:
                    self.uncertain = True
                    if self.on_uncertain is not None:
                        fire = (self.on_uncertain, (self, True))
            elif state == KazooState.CONNECTED:
                if self.uncertain:
                    self.uncertain = False
                    if self.on_uncertain is not None:
                        fire = (self.on_uncertain, (self, False))
                sweep = bool(self._pending)
        handler = self._conn.client.handler
        if fire is not None:
            handler.spawn(call_safely, fire[0], *fire[1])
        if sweep:
            handler.spawn(self._sweep_pending)
        return False

    def _mark_lost(self) -> None:
        with self._mutex:
            first = self._held and not self.lost
            self.lost = True
            self.uncertain = False
        if first and self.on_lost is not None:
            call_safely(self.on_lost, self)
