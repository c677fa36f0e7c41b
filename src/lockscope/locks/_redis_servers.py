"""The I/O half of the Redis-family locks: run a :data:`~lockscope.locks._sansio.Batch`
of calls on one or more Redis servers, blocking (:class:`SyncServers`) or on the event
loop (:class:`AsyncServers`).

A lock names its Lua scripts once (``{"acquire": ACQUIRE_COUNTING, ...}``); a
:class:`~lockscope.locks._sansio.Call` names a script or a plain client method. With
``collect_failures`` (Redlock) a server that fails answers a
:class:`~lockscope.locks._sansio.Failure` and the algorithm counts it; without (one
server) its error raises :class:`~lockscope.errors.BackendUnavailable`. The first call
to each server also checks, once per process, whether it may evict lock keys
(:mod:`lockscope.locks._redis_eviction`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from lockscope.locks._redis_common import backend_errors, client_namespace
from lockscope.locks._redis_eviction import check_eviction, check_eviction_async
from lockscope.locks._sansio import Batch, Call, Failure

__all__ = ["AsyncServers", "SyncServers"]

SERVER_ERRORS = (redis.RedisError, OSError)


class _Servers:
    def __init__(
        self, clients: Sequence[Any], scripts: Mapping[str, str], *, collect_failures: bool = False
    ) -> None:
        self.clients = list(clients)
        self.namespaces = [client_namespace(c) for c in self.clients]
        self._scripts = {
            name: [c.register_script(source) for c in self.clients]
            for name, source in scripts.items()
        }
        self._collect = collect_failures
        self._unchecked = set(range(len(self.clients)))

    def _invoke(self, call: Call) -> Any:
        scripts = self._scripts.get(call.command)
        if scripts is not None:
            return scripts[call.server](keys=list(call.keys), args=list(call.args))
        return getattr(self.clients[call.server], call.command)(*call.keys, *call.args)

    def _to_check(self, batch: Batch) -> list[int]:
        if not self._unchecked:
            return []
        servers = sorted({call.server for call in batch} & self._unchecked)
        self._unchecked.difference_update(servers)
        return servers


class SyncServers(_Servers):
    def execute(self, batch: Batch) -> list[Any]:
        for i in self._to_check(batch):
            check_eviction(self.clients[i], self.namespaces[i])
        # One server after the other (no threads, so safe in forked workers); each call
        # is bounded by its client's socket timeout.
        replies: list[Any] = []
        for call in batch:
            if not self._collect:
                with backend_errors(self.namespaces[call.server]):
                    replies.append(self._invoke(call))
                continue
            try:
                replies.append(self._invoke(call))
            except SERVER_ERRORS as exc:
                replies.append(Failure(exc))
        return replies


class AsyncServers(_Servers):
    async def execute(self, batch: Batch) -> list[Any]:
        checks = self._to_check(batch)
        if checks:
            await asyncio.gather(
                *(check_eviction_async(self.clients[i], self.namespaces[i]) for i in checks)
            )
        if not self._collect:
            replies = []
            for call in batch:
                with backend_errors(self.namespaces[call.server]):
                    replies.append(await self._invoke(call))
            return replies
        # Every server at once.
        results = await asyncio.gather(
            *(self._invoke(call) for call in batch), return_exceptions=True
        )
        collected: list[Any] = []
        for result in results:
            if isinstance(result, SERVER_ERRORS):
                collected.append(Failure(result))
            elif isinstance(result, BaseException):
                raise result
            else:
                collected.append(result)
        return collected
