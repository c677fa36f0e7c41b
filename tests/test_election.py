"""LeaderElection against a real ZooKeeper (the ``zookeeper_server`` fixture)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import IO, Any

import pytest
from kazoo.client import KazooClient

from lockscope.errors import LockError
from lockscope.locks import LeaderElection as ExportedElection
from lockscope.locks import aio
from lockscope.locks.election import (
    RESIGNED,
    SESSION_LOST,
    AsyncLeaderElection,
    LeaderElection,
)
from polling import wait_until

WAIT = 15.0


wait_for = functools.partial(wait_until, timeout=WAIT)


@pytest.fixture
def path() -> str:
    return f"/lockscope-test/election-{uuid.uuid4().hex}"


class Recorder:
    """Collects callback calls of several candidates in one ordered log."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def candidate(self, client: Any, path: str, name: str, **kw: Any) -> LeaderElection:
        return LeaderElection(
            client,
            path,
            name,
            on_elected=lambda: self._add(name, "elected"),
            on_lost=lambda reason: self._add(name, f"lost:{reason}"),
            **kw,
        )

    def _add(self, name: str, what: str) -> None:
        with self._lock:
            self.log.append((name, what))


def _queued(candidate: LeaderElection) -> bool:
    return candidate.sequence is not None


def test_lowest_sequence_leads_and_resign_hands_over(
    new_client: Callable[..., Any], path: str
) -> None:
    assert ExportedElection is LeaderElection
    rec = Recorder()
    candidates = [rec.candidate(new_client(), path, f"c{i}") for i in range(3)]
    for candidate in candidates:
        candidate.start()
        wait_for(functools.partial(_queued, candidate), what="queued")
    wait_for(lambda: candidates[0].is_leader)
    assert candidates[0].contenders() == ["c0", "c1", "c2"]
    assert candidates[2].leader() == "c0"
    assert [c.sequence for c in candidates] == sorted(c.sequence for c in candidates)  # type: ignore[type-var]
    assert not candidates[1].is_leader
    with pytest.raises(LockError, match="already running"):
        candidates[0].start()

    candidates[0].resign()  # returns once the node is gone
    assert not candidates[0].is_leader
    assert not candidates[0].running
    wait_for(lambda: candidates[1].is_leader, what="c1 elected")
    assert candidates[1].contenders() == ["c1", "c2"]
    candidates[1].resign()
    wait_for(lambda: candidates[2].is_leader, what="c2 elected")
    candidates[2].resign()
    assert rec.log == [
        ("c0", "elected"),
        ("c0", f"lost:{RESIGNED}"),
        ("c1", "elected"),
        ("c1", f"lost:{RESIGNED}"),
        ("c2", "elected"),
        ("c2", f"lost:{RESIGNED}"),
    ]
    assert [c.terms for c in candidates] == [1, 1, 1]


def test_each_candidate_watches_only_its_predecessor(
    new_client: Callable[..., Any], path: str
) -> None:
    """No herd effect: the leader's departure wakes exactly one candidate."""
    clients = [new_client() for _ in range(5)]
    candidates = [LeaderElection(client, path, f"c{i}") for i, client in enumerate(clients)]
    for candidate in candidates:
        candidate.start()
        wait_for(functools.partial(_queued, candidate))
    wait_for(lambda: candidates[0].is_leader)
    for i, client in enumerate(clients):
        # Watches registered by each candidate's own session (kazoo's client-side table).
        watched = {p for p, watchers in client._data_watchers.items() if watchers}
        assert not any(client._child_watchers.get(p) for p in client._child_watchers)
        if i == 0:
            assert watched == set()
        else:

            def watches_its_predecessor(c: KazooClient = client, i: int = i) -> bool:
                predecessor = f"{path}/{candidates[i - 1].node}"
                return {p for p, w in c._data_watchers.items() if w} == {predecessor}

            wait_for(watches_its_predecessor)
    for candidate in reversed(candidates):
        candidate.resign()


def test_resign_from_the_elected_callback(new_client: Callable[..., Any], path: str) -> None:
    events: list[str] = []
    election: LeaderElection

    def elected() -> None:
        events.append("elected")
        election.resign()

    election = LeaderElection(new_client(), path, "solo", on_elected=elected, on_lost=events.append)
    election.run()  # returns because the callback resigned
    assert events == ["elected", RESIGNED]
    assert not election.running
    assert election.contenders() == []


def test_resign_while_waiting_leaves_no_node(new_client: Callable[..., Any], path: str) -> None:
    leader = LeaderElection(new_client(), path, "leader")
    waiting_calls: list[str] = []
    waiting = LeaderElection(
        new_client(), path, "waiting", on_elected=lambda: waiting_calls.append("elected")
    )
    leader.start()
    wait_for(lambda: leader.is_leader)
    waiting.start()
    wait_for(lambda: waiting.sequence is not None)
    waiting.resign()
    assert not waiting.running
    assert leader.contenders() == ["leader"]
    leader.resign()
    assert waiting_calls == []


def test_lost_session_ends_the_term_and_the_candidate_rejoins(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    rec = Recorder()
    leader_client = new_client(timeout=2.0)
    first = rec.candidate(leader_client, path, "first")
    second = rec.candidate(new_client(), path, "second")
    first.start()
    wait_for(lambda: first.is_leader)
    second.start()
    wait_for(lambda: second.sequence is not None)

    session_id, password = leader_client.client_id
    other = KazooClient(hosts=zookeeper_server.hosts, client_id=(session_id, password))
    other.start(timeout=20)
    other.stop()  # closes the leader's session on the server
    other.close()

    wait_for(lambda: second.is_leader, what="second elected")
    wait_for(lambda: ("first", f"lost:{SESSION_LOST}") in rec.log)
    # The old leader queues again on its new session, behind the new leader.
    wait_for(lambda: second.contenders() == ["second", "first"], what="first rejoined")
    assert not first.is_leader
    second.resign()
    wait_for(lambda: first.is_leader, what="first elected again")
    first.resign()
    # A lost session is noticed after the fact, so "second elected" may come first there;
    # a resignation is announced before the hand-over.
    assert sorted(rec.log[:3]) == [
        ("first", "elected"),
        ("first", f"lost:{SESSION_LOST}"),
        ("second", "elected"),
    ]
    assert rec.log[0] == ("first", "elected")
    assert rec.log[3:] == [
        ("second", f"lost:{RESIGNED}"),
        ("first", "elected"),
        ("first", f"lost:{RESIGNED}"),
    ]
    assert first.terms == 2


# -- asyncio -------------------------------------------------------------------------------
async def until(predicate: Callable[[], object], what: str = "") -> None:
    """Poll without blocking the loop, which delivers the callbacks."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


async def test_async_candidates_lead_in_turn_with_callbacks_on_the_loop(
    new_client: Callable[..., Any], path: str
) -> None:
    assert aio.LeaderElection is AsyncLeaderElection
    loop_thread = threading.get_ident()
    log: list[tuple[str, str, bool]] = []

    async def first_elected() -> None:  # coroutine callbacks are awaited
        await asyncio.sleep(0)
        log.append(("first", "elected", threading.get_ident() == loop_thread))

    first = AsyncLeaderElection(
        new_client(),
        path,
        "first",
        on_elected=first_elected,
        on_lost=lambda r: log.append(("first", r, threading.get_ident() == loop_thread)),
    )
    second = AsyncLeaderElection(
        new_client(),
        path,
        "second",
        on_elected=lambda: log.append(("second", "elected", threading.get_ident() == loop_thread)),
    )
    await first.start()
    await until(lambda: first.is_leader, "first elected")
    await second.start()
    await until(lambda: second.sequence is not None, "second queued")
    assert await second.contenders() == ["first", "second"]
    assert await second.leader() == "first"
    await until(lambda: log, "on_elected delivered")
    assert not second.is_leader
    assert log == [("first", "elected", True)]  # once, on the loop's thread

    await first.resign()  # returns once the node is gone, on_lost delivered before
    assert log[1] == ("first", RESIGNED, True)
    assert not first.is_leader
    assert not first.running
    await until(lambda: second.is_leader, "second elected")
    await until(lambda: len(log) == 3, "second's on_elected delivered")
    assert log[2] == ("second", "elected", True)
    assert await second.contenders() == ["second"]
    await second.aclose()
    assert first.terms == 1
    assert second.terms == 1


async def test_async_close_leaves_no_node_behind(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    observer = LeaderElection(new_client(), path, "observer")
    elected: list[str] = []
    async with AsyncLeaderElection(zookeeper_server.hosts, path, "leader") as leader:
        await until(lambda: leader.is_leader, "leader elected")
        waiting = AsyncLeaderElection(
            zookeeper_server.hosts, path, "waiting", on_elected=lambda: elected.append("w")
        )
        await waiting.start()
        await until(lambda: waiting.sequence is not None, "waiting queued")
        owned = waiting.client
        await waiting.aclose()  # leaves the queue and stops the client it created
        assert not waiting.running
        assert not owned.connected
        assert await asyncio.to_thread(observer.contenders) == ["leader"]
    assert not leader.running
    assert await asyncio.to_thread(observer.contenders) == []
    assert elected == []


async def test_async_callback_may_resign_and_failures_are_logged(
    new_client: Callable[..., Any], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    lost: list[str] = []
    refused: list[str] = []
    election: AsyncLeaderElection

    async def elected() -> None:
        try:
            await election.aclose()  # would wait for the thread that waits for us
        except LockError as exc:
            refused.append(str(exc))
        await election.resign()  # returns at once here; the thread hands over
        raise RuntimeError("boom")

    election = AsyncLeaderElection(
        new_client(), path, "solo", on_elected=elected, on_lost=lost.append
    )
    with caplog.at_level(logging.ERROR, logger="lockscope.locks.election"):
        await election.start()
        await until(lambda: not election.running, "resigned from the callback")
    assert lost == [RESIGNED]
    assert "boom" in caplog.text
    assert len(refused) == 1
    assert "cannot run inside" in refused[0]
    assert await election.contenders() == []


# -- candidates in separate processes -----------------------------------------------------
CANDIDATE = """
import sys
import time
from kazoo.client import KazooClient
from lockscope.locks.election import LeaderElection

hosts, path, name = sys.argv[1:4]
client = KazooClient(hosts=hosts, timeout=1.0)  # the smallest session the server grants
client.start(timeout=20)
say = lambda *words: print(*words, flush=True)
election = LeaderElection(
    client, path, name,
    on_elected=lambda: say("elected"),
    on_lost=lambda reason: say("lost", reason),
)
election.start()
while election.sequence is None:  # poll until this candidate's node exists
    time.sleep(0.01)
say("queued")
for line in sys.stdin:
    if line.strip() == "resign":
        election.resign()
        say("resigned")
"""


class Candidate:
    def __init__(self, hosts: str, path: str, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CANDIDATE, hosts, path, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.strip())

    def expect(self, line: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {line!r} (saw {self.seen})")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)


def test_killing_the_leader_process_elects_the_next_candidate(
    zookeeper_server: Any, path: str, new_client: Callable[..., Any]
) -> None:
    zookeeper_server.ensure_running()
    candidates: list[Candidate] = []
    try:
        for name in ("p0", "p1", "p2"):
            candidate = Candidate(zookeeper_server.hosts, path, name)
            candidates.append(candidate)
            candidate.expect("queued", timeout=60)
        p0, p1, p2 = candidates
        p0.expect("elected")
        observer = LeaderElection(new_client(), path, "observer")
        assert observer.contenders() == ["p0", "p1", "p2"]

        p0.proc.send_signal(signal.SIGKILL)  # no clean-up: only the session timeout helps
        p0.proc.wait(WAIT)
        p1.expect("elected")
        assert observer.contenders() == ["p1", "p2"]

        p1.send("resign")
        p1.expect("resigned")
        p2.expect("elected")
        assert observer.contenders() == ["p2"]
        p2.send("resign")
        p2.expect("resigned")
        assert p1.drain() == ["queued", "elected", f"lost {RESIGNED}", "resigned"]
        assert p2.drain() == ["queued", "elected", f"lost {RESIGNED}", "resigned"]
        assert sorted(p0.drain()) == ["elected", "queued"]  # never told it lost: it died
    finally:
        for candidate in candidates:
            candidate.stop()


def test_without_rejoin_a_lost_leader_leaves_and_an_owned_client_closes(
    zookeeper_server: Any, path: str
) -> None:
    lost: list[str] = []
    election = LeaderElection(
        zookeeper_server.hosts,
        path,
        "solo",
        on_lost=lost.append,
        rejoin=False,
        session_timeout=2.0,
    )
    election.start()
    wait_for(lambda: election.is_leader)
    client = election.client
    session_id, password = client.client_id
    other = KazooClient(hosts=zookeeper_server.hosts, client_id=(session_id, password))
    other.start(timeout=20)
    other.stop()
    other.close()
    wait_for(lambda: not election.running, what="candidate left")
    assert lost == [SESSION_LOST]
    assert not election.is_leader
    wait_for(lambda: client.connected, what="new session")
    assert election.contenders() == []  # did not queue again
    election.close()
    assert not client.connected


async def test_async_close_is_a_deprecated_alias_of_aclose(
    new_client: Callable[..., Any], path: str, zookeeper_server: Any
) -> None:
    observer = LeaderElection(new_client(), path, "observer")
    election = AsyncLeaderElection(zookeeper_server.hosts, path, "old-style")
    await election.start()
    await until(lambda: election.is_leader, "elected")
    owned = election.client
    with pytest.deprecated_call(match="aclose"):
        await election.close()
    assert not election.running
    assert not owned.connected
    assert await asyncio.to_thread(observer.contenders) == []
