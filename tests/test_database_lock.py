"""DatabaseLock against real SQLite files, PostgreSQL and MariaDB servers.

Several scenarios run the contenders as separate processes (``python -c`` scripts below),
because what matters is behaviour across processes: mutual exclusion, fencing tokens, a
holder paused with SIGSTOP, a client whose clock is hours off (Debian's ``faketime``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import polling
from fencing import held_token
from lockscope.errors import BackendUnavailable, LockLost, LockNotAcquired, LockNotOwned
from lockscope.locks import DatabaseLock
from lockscope.locks.aio import DatabaseLock as AsyncDatabaseLock
from lockscope.locks.database import LeaseHolder
from lockscope.testing.faults import pause, resume

DIALECTS = ["sqlite", "postgresql", "mysql"]
SERVER_FIXTURES = {"postgresql": "postgres_server", "mysql": "mariadb_server"}


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL per dialect: a fresh SQLite file, or the session's server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/locks.db"
    return str(request.getfixturevalue(SERVER_FIXTURES[request.param]).url)


@pytest.fixture(params=list(SERVER_FIXTURES))
def db_server(request: pytest.FixtureRequest) -> Any:
    """The PostgreSQL or MariaDB session server (fault tests: kill, pause)."""
    return request.getfixturevalue(SERVER_FIXTURES[request.param])


@pytest.fixture
def name() -> str:
    """A lock name no other test uses (the servers are shared by the whole session)."""
    return f"test:{uuid.uuid4().hex[:12]}"


wait_until = functools.partial(polling.wait_until, timeout=15.0)


def run_script(script: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- the basics ---------------------------------------------------------------------------


def test_acquire_release_and_holder(db_url: str, name: str) -> None:
    a = DatabaseLock(name, db_url, ttl=10)
    b = DatabaseLock(name, db_url, ttl=10)
    assert a.system == "database"
    assert a.mode == "exclusive"
    assert a.holder() is None
    assert not a.locked()

    assert a.acquire(blocking=False)
    assert a.owner is not None
    assert a.fencing_token is not None
    holder = a.holder()
    assert isinstance(holder, LeaseHolder)
    assert (holder.owner, holder.fencing_token) == (a.owner, a.fencing_token)
    assert 0 < holder.ttl <= 10
    assert a.locked()
    assert a.owned()
    assert not b.owned()
    seen_by_b = b.holder()
    assert seen_by_b is not None
    assert seen_by_b.owner == a.owner

    assert not b.acquire(blocking=False)
    assert not b.acquire(timeout=0.2)

    a.release()
    released = a  # a new name: mypy keeps a.owner narrowed (to str) past release()
    assert released.owner is None
    assert not a.locked()
    assert b.acquire(blocking=False)
    assert b.fencing_token == a.fencing_token + 1
    b.release()
    with pytest.raises(LockNotOwned):
        b.release()
    with pytest.raises(LockNotOwned):
        a.extend(5)


def test_namespace_names_the_database_without_password(db_url: str, name: str) -> None:
    lock = DatabaseLock(name, db_url)
    if db_url.startswith("sqlite"):
        assert lock.namespace == "sqlite:" + db_url.removeprefix("sqlite:///")
    else:
        scheme = db_url.split("://")[0]
        host_port_db = db_url.split("@", 1)[1]
        assert lock.namespace == f"{scheme}://{host_port_db}"
        assert "@" not in lock.namespace


def test_context_manager_and_blocking_timeout(db_url: str, name: str) -> None:
    with DatabaseLock(name, db_url, ttl=10) as held:
        assert held.owned()
        with pytest.raises(LockNotAcquired):  # noqa: SIM117 - the inner one must not enter
            with DatabaseLock(name, db_url, blocking_timeout=0.2):
                pass
    assert not DatabaseLock(name, db_url).locked()


def test_extend_sets_the_lease_from_now(db_url: str, name: str) -> None:
    lock = DatabaseLock(name, db_url, ttl=2)
    assert lock.acquire()
    lock.extend(60)
    holder = lock.holder()
    assert holder is not None
    assert 50 < holder.ttl <= 60
    lock.extend(1)
    holder = lock.holder()
    assert holder is not None
    assert holder.ttl <= 1
    # Extending to the same end twice (MySQL then "changes" no row) still counts as held.
    lock.extend(30)
    lock.extend(30)
    lock.release()


def test_fencing_counter_survives_release_and_expiry(db_url: str, name: str) -> None:
    tokens = []
    for ttl in (10, 0.2, 10, 0.2):
        lock = DatabaseLock(name, db_url, ttl=ttl)
        assert lock.acquire(timeout=10)
        tokens.append(held_token(lock))
        if ttl == 10:
            lock.release()
        # the 0.2 s leases are abandoned: the next acquire takes them over once expired
    assert tokens == sorted(set(tokens))
    assert tokens == list(range(tokens[0], tokens[0] + 4))


def test_names_are_exact(db_url: str, name: str) -> None:
    # MySQL's default collations would make these the same key; the lease table must not.
    variants = [name, name.upper(), name + " ", "ü" + name, "u" + name]
    locks = [DatabaseLock(v, db_url, ttl=10) for v in variants]
    assert all(lock.acquire(blocking=False) for lock in locks)
    for lock in locks:
        lock.release()


def test_long_and_unicode_names(db_url: str) -> None:
    long_name = "n" * 1024
    lock = DatabaseLock(long_name, db_url, ttl=10)
    assert lock.acquire(blocking=False)
    lock.release()
    emoji = "🔒" + uuid.uuid4().hex
    lock = DatabaseLock(emoji, db_url, ttl=10)
    assert lock.acquire(blocking=False)
    holder = lock.holder()
    assert holder is not None
    assert holder.owner == lock.owner
    lock.release()


# --- lease expiry -------------------------------------------------------------------------


def test_expired_lease_release_and_extend_raise(db_url: str, name: str) -> None:
    old = DatabaseLock(name, db_url, ttl=0.3)
    assert old.acquire()
    old_token = old.fencing_token
    wait_until(lambda: not old.locked(), what="lease expiry")
    assert not old.owned()
    with pytest.raises(LockLost):
        old.extend(10)

    assert old.acquire()
    wait_until(lambda: not old.locked(), what="lease expiry")
    new = DatabaseLock(name, db_url, ttl=10)
    assert new.acquire(blocking=False)
    assert new.fencing_token is not None
    assert old.fencing_token is not None
    assert old_token is not None
    assert new.fencing_token > old.fencing_token > old_token
    with pytest.raises(LockNotOwned):  # LockLost is a LockNotOwned
        old.release()
    assert new.owned()  # the failed release did not touch the new holder's lease
    new.release()


def test_release_of_expired_but_untaken_lease_raises(db_url: str, name: str) -> None:
    lock = DatabaseLock(name, db_url, ttl=0.2)
    assert lock.acquire()
    wait_until(lambda: not lock.locked(), what="lease expiry")
    with pytest.raises(LockLost):
        lock.release()


# --- across processes ---------------------------------------------------------------------

INCREMENT_WORKER = """
import json, sys, time
from lockscope.locks import DatabaseLock

url, name, path, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lock = DatabaseLock(name, url, ttl=30, retry_interval=0.005)
tokens, backwards = [], 0
for _ in range(iterations):
    with lock:
        with open(path) as f:
            count, last = map(int, f.read().split())
        # Widen the read-modify-write window: without mutual exclusion, updates get lost.
        time.sleep(0.001)
        if lock.fencing_token <= last:
            backwards += 1
        with open(path, "w") as f:
            f.write(f"{count + 1} {lock.fencing_token}")
    tokens.append(lock.fencing_token)
print(json.dumps({"tokens": tokens, "backwards": backwards}))
"""


def test_mutual_exclusion_across_processes(db_url: str, name: str, tmp_path: Path) -> None:
    processes, iterations = 4, 25
    counter = tmp_path / "counter"
    counter.write_text("0 0")
    workers = [
        run_script(INCREMENT_WORKER, db_url, name, str(counter), str(iterations))
        for _ in range(processes)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=100)
        assert worker.returncode == 0, err
        results.append(json.loads(out))

    count, last_token = map(int, counter.read_text().split())
    assert count == processes * iterations  # no lost update
    assert all(r["backwards"] == 0 for r in results)  # tokens rose from holder to holder
    tokens = [t for r in results for t in r["tokens"]]
    assert len(set(tokens)) == len(tokens)
    assert last_token == max(tokens)
    for r in results:
        assert r["tokens"] == sorted(r["tokens"])


HOLDER = """
import sys
from lockscope.errors import LockNotOwned
from lockscope.locks import DatabaseLock

url, name, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
lock = DatabaseLock(name, url, ttl=ttl)
assert lock.acquire(timeout=10)
print(lock.fencing_token, flush=True)
for line in sys.stdin:
    command = line.strip()
    try:
        if command == "extend":
            lock.extend(30)
        else:
            lock.release()
        print("ok", flush=True)
    except LockNotOwned as exc:
        print(type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("command", ["extend", "release"])
def test_paused_holder_loses_the_lock(db_url: str, name: str, command: str) -> None:
    holder = run_script(HOLDER, db_url, name, "1.0")
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        old_token = int(holder.stdout.readline())
        pause(holder.pid)  # a GC pause, swap storm or SIGSTOP longer than the lease
        try:
            taker = DatabaseLock(name, db_url, ttl=30)
            assert taker.acquire(timeout=20)
            assert taker.fencing_token is not None
            assert taker.fencing_token > old_token
        finally:
            resume(holder.pid)
        holder.stdin.write(command + "\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "LockLost"
        assert taker.owned()  # the resumed holder did not disturb the new lease
        taker.release()
    finally:
        holder.kill()
        holder.communicate()


# --- client clock skew --------------------------------------------------------------------

SKEWED_CLIENT = """
import json, sys, time
from lockscope.locks import DatabaseLock

url, held_name, own_name = sys.argv[1:4]
other = DatabaseLock(held_name, url, ttl=10)
took = other.acquire(blocking=False)
seen = other.holder()
mine = DatabaseLock(own_name, url, ttl=10)
assert mine.acquire(blocking=False)
own = mine.holder()
print(json.dumps({
    "now": time.time(),
    "took": took,
    "held_ttl": seen and seen.ttl,
    "own_ttl": own and own.ttl,
}))
"""

_FAKETIME = shutil.which("faketime")


@pytest.mark.skipif(_FAKETIME is None, reason="needs Debian's faketime: apt-get install faketime")
@pytest.mark.parametrize("offset_hours", [3, -3])
@pytest.mark.parametrize(
    "dialect",
    [
        "postgresql",
        "mysql",
        pytest.param(
            "sqlite",
            marks=pytest.mark.xfail(
                strict=True,
                reason="SQLite runs inside each process: its clock is the client's clock",
            ),
        ),
    ],
)
def test_client_clock_skew_does_not_matter(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, dialect: str, offset_hours: int
) -> None:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/locks.db"
    else:
        url = request.getfixturevalue(SERVER_FIXTURES[dialect]).url
    held = DatabaseLock(name + ":held", url, ttl=30)
    assert held.acquire(blocking=False)

    client = run_script(
        SKEWED_CLIENT,
        url,
        name + ":held",
        name + ":own",
        prefix=(_FAKETIME or "", "-f", f"{offset_hours:+d}h"),
    )
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    seen = json.loads(out)
    assert math.isclose(seen["now"] - time.time(), offset_hours * 3600, abs_tol=600)  # skewed

    # The skewed client neither judged our lease expired nor mis-measured it...
    assert seen["took"] is False
    assert 0 < seen["held_ttl"] <= 30
    # ...and its own lease is 10 s long by the database's clock, as seen from both sides.
    assert 0 < seen["own_ttl"] <= 10
    own = DatabaseLock(name + ":own", url, ttl=10)
    holder = own.holder()
    assert holder is not None
    assert 0 < holder.ttl <= 10
    assert not own.acquire(blocking=False)
    held.release()


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "x" * 1025])
def test_bad_names_are_value_errors(db_url: str, bad: str) -> None:
    with pytest.raises(ValueError, match="name"):
        DatabaseLock(bad, db_url)


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["list"]])
def test_non_string_names_are_type_errors(db_url: str, bad: Any) -> None:
    with pytest.raises(TypeError, match="name"):
        DatabaseLock(bad, db_url)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": -1}, ValueError),
        ({"ttl": math.nan}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"ttl": True}, TypeError),
        ({"ttl": None}, TypeError),
        ({"connect_timeout": 0}, ValueError),
        ({"connect_timeout": "5"}, TypeError),
        ({"statement_timeout": -2}, ValueError),
        ({"statement_timeout": "5"}, TypeError),
        ({"blocking_timeout": "1"}, TypeError),
        ({"blocking_timeout": -1}, ValueError),
        ({"table": "locks; DROP TABLE users"}, ValueError),
        ({"table": 3}, TypeError),
        ({"dialect": "sqlite"}, TypeError),
        ({"connect": sqlite3.connect}, TypeError),
    ],
)
def test_bad_options(db_url: str, name: str, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        DatabaseLock(name, db_url, **kwargs)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda lock: lock.acquire(timeout="1"), TypeError),
        (lambda lock: lock.acquire(timeout=-1), ValueError),
        (lambda lock: lock.extend(0), ValueError),
        (lambda lock: lock.extend("5"), TypeError),
    ],
)
def test_bad_call_arguments(db_url: str, name: str, call: Any, error: type) -> None:
    lock = DatabaseLock(name, db_url)
    with pytest.raises(error):
        call(lock)


@pytest.mark.parametrize(
    "url",
    ["redis://localhost/0", "sqlite://", "sqlite:///:memory:", "locks.db", "sqlite:/x.db"],
)
def test_unusable_urls(url: str, name: str) -> None:
    with pytest.raises(ValueError, match=r"SQLite|URL|sqlite"):
        DatabaseLock(name, url)


def test_url_or_connect_required(name: str) -> None:
    with pytest.raises(TypeError):
        DatabaseLock(name)
    with pytest.raises(TypeError):
        DatabaseLock(name, 42)  # type: ignore[arg-type]


def test_mysql_name_byte_limit(request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("mariadb_server").url
    with pytest.raises(ValueError, match="3072"):
        DatabaseLock("🔒" * 1000, url)


# --- the server is down -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_killed_server_gives_backend_unavailable(db_server: Any, name: str) -> None:
    lock = DatabaseLock(name, db_server.url, ttl=10, connect_timeout=1, statement_timeout=1)
    assert lock.acquire(blocking=False)
    db_server.kill()
    try:
        for call in (lock.release, lambda: lock.extend(5), lock.holder, lock.acquire):
            with pytest.raises(BackendUnavailable):
                call()
        # a lock object created while the server is down fails the same way
        with pytest.raises(BackendUnavailable):
            DatabaseLock(name + "x", db_server.url, connect_timeout=1).acquire(timeout=0.5)
    finally:
        db_server.start()
    # the lease survived the restart (both servers persist it), and the holder still has it
    assert lock.owned()
    lock.release()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends leave the postmaster's group)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(60)
def test_paused_server_gives_backend_unavailable(db_server: Any, name: str) -> None:
    lock = DatabaseLock(name, db_server.url, ttl=10, connect_timeout=2, statement_timeout=1)
    assert lock.acquire(blocking=False)
    # Freeze the server and every backend process: the kernel still acknowledges TCP,
    # nothing answers. Only a client-side deadline ends the wait.
    frozen = [*children(db_server.pid)]
    db_server.pause()
    for pid in frozen:
        pause(pid)
    try:
        with pytest.raises(BackendUnavailable):
            lock.extend(5)
    finally:
        for pid in frozen:
            resume(pid)
        db_server.resume()
    assert lock.owned()
    lock.release()


def test_sqlite_file_that_cannot_be_opened(tmp_path: Path, name: str) -> None:
    lock = DatabaseLock(name, f"sqlite:///{tmp_path}/missing-dir/locks.db")
    with pytest.raises(BackendUnavailable):
        lock.acquire(blocking=False)


# --- connection factories -----------------------------------------------------------------


def test_sqlite_connection_factory(tmp_path: Path, name: str) -> None:
    path = tmp_path / "factory.db"
    lock = DatabaseLock(name, connect=lambda: sqlite3.connect(path, check_same_thread=False))
    assert lock.acquire(blocking=False)
    assert lock.namespace == f"sqlite:{path}"
    # the same table, reached through a URL, sees the same lease
    same = DatabaseLock(name, f"sqlite:///{path}")
    holder = same.holder()
    assert holder is not None
    assert holder.owner == lock.owner
    lock.release()


def test_mariadb_simultaneous_assignment_mode(request: pytest.FixtureRequest, name: str) -> None:
    import pymysql

    server = request.getfixturevalue("mariadb_server")

    def connect() -> Any:
        return pymysql.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password or "",
            database=server.dbname,
            init_command="SET SESSION sql_mode = CONCAT(@@sql_mode, ',SIMULTANEOUS_ASSIGNMENT')",
        )

    a = DatabaseLock(name, connect=connect, ttl=0.3)
    assert a.namespace == f"mysql://{server.host}:{server.port}/{server.dbname}"
    assert a.acquire(blocking=False)
    first = held_token(a)
    assert not DatabaseLock(name, connect=connect).acquire(blocking=False)
    wait_until(lambda: not a.locked(), what="lease expiry")
    b = DatabaseLock(name, connect=connect, ttl=10)
    assert b.acquire(blocking=False)
    assert b.fencing_token == first + 1
    holder = b.holder()
    assert holder is not None
    assert 5 < holder.ttl <= 10
    b.release()


def test_postgres_connection_factory(request: pytest.FixtureRequest, name: str) -> None:
    import psycopg

    server = request.getfixturevalue("postgres_server")
    lock = DatabaseLock(name, connect=lambda: psycopg.connect(server.dsn), ttl=5)
    assert lock.acquire(blocking=False)
    assert lock.namespace == f"postgresql://{server.host}:{server.port}/{server.dbname}"
    assert DatabaseLock(name, server.url).holder() is not None
    lock.release()


def test_custom_table(db_url: str, name: str) -> None:
    a = DatabaseLock(name, db_url, table="other_leases", ttl=10)
    b = DatabaseLock(name, db_url, ttl=10)
    assert a.acquire(blocking=False)
    assert b.acquire(blocking=False)  # a different table is a different lock
    a.release()
    b.release()


# --- asyncio ------------------------------------------------------------------------------


async def test_async_lock(db_url: str, name: str) -> None:
    a = AsyncDatabaseLock(name, db_url, ttl=10)
    b = AsyncDatabaseLock(name, db_url, ttl=10, retry_interval=0.01)
    assert a.system == "database"
    assert await a.acquire(blocking=False)
    assert await a.owned()
    assert await b.locked()
    holder = await b.holder()
    assert holder is not None
    assert holder.owner == a.owner

    assert not await b.acquire(timeout=0.1)
    waiter = asyncio.create_task(b.acquire(timeout=10))
    await a.extend(20)
    await a.release()
    assert await waiter
    assert b.fencing_token is not None
    assert a.fencing_token is not None
    assert b.fencing_token > a.fencing_token
    await b.release()
    with pytest.raises(LockNotOwned):
        await b.release()

    async with AsyncDatabaseLock(name, db_url) as held:
        assert await held.owned()
    assert not await a.locked()


async def test_async_cancelled_acquire_leaves_no_lease(db_url: str, name: str) -> None:
    lock = AsyncDatabaseLock(name, db_url, ttl=30)
    task = asyncio.create_task(lock.acquire())
    # One loop turn: the task starts its acquire statement in a worker thread and awaits
    # it; the cancel below lands there, while the statement (on a free lock) succeeds.
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    probe = DatabaseLock(name, db_url)
    # Without the background release the 30 s lease would outlive this wait.
    assert await asyncio.to_thread(probe.acquire, True, 10)
    probe.release()


async def test_async_twin_exposes_its_sync_lock_as_sync(db_url: str, name: str) -> None:
    lock = AsyncDatabaseLock(name, db_url, ttl=30)
    assert isinstance(lock.sync, DatabaseLock)
    assert lock._sync is lock.sync  # the name it had before the twins were aligned
    assert await lock.acquire()
    assert lock.sync.owner == lock.owner is not None
    await lock.release()
    await lock.aclose()  # every asyncio lock has aclose(); here there is nothing to close


async def test_async_cancelled_waiter(db_url: str, name: str) -> None:
    holder = AsyncDatabaseLock(name, db_url, ttl=30)
    assert await holder.acquire()
    waiter = AsyncDatabaseLock(name, db_url, ttl=30, retry_interval=0.01)
    task = asyncio.create_task(waiter.acquire())
    assert not await AsyncDatabaseLock(name, db_url).acquire(timeout=0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await holder.owned()
    await holder.release()


async def test_async_expiry(db_url: str, name: str) -> None:
    lock = AsyncDatabaseLock(name, db_url, ttl=0.2)
    assert await lock.acquire()
    probe = DatabaseLock(name, db_url)
    await asyncio.to_thread(wait_until, lambda: not probe.locked(), timeout=10, what="lease expiry")
    with pytest.raises(LockLost):
        await lock.extend(5)


async def test_async_bad_input(db_url: str, name: str) -> None:
    with pytest.raises(ValueError, match="ttl"):
        AsyncDatabaseLock(name, db_url, ttl=0)
    lock = AsyncDatabaseLock(name, db_url)
    with pytest.raises(TypeError):
        await lock.acquire(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        await lock.extend(-1)


# --- the example --------------------------------------------------------------------------


def test_sqlite_turns_example(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "examples" / "sqlite_turns.py"
    done = subprocess.run(
        [sys.executable, str(example), "--rounds", "2", "--db", str(tmp_path / "turns.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if "fencing token" in line]
    tokens = [int(line.split("fencing token ")[1].split()[0]) for line in lines]
    assert tokens == [1, 2, 3, 4]
    assert {line.split()[0] for line in lines} == {"alice", "bob"}


def test_per_lock_factories_do_not_pile_up_pools(tmp_path: Path, name: str) -> None:
    import gc

    from lockscope.locks import _database_store

    path = tmp_path / "factory.db"
    before = len(_database_store._factory_stores)
    for _ in range(20):
        # a fresh lambda per lock object, as a request handler might write it
        lock = DatabaseLock(name, connect=lambda: sqlite3.connect(path, check_same_thread=False))
        assert lock.acquire(blocking=False)
        lock.release()
    del lock
    gc.collect()
    assert len(_database_store._factory_stores) <= before


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_server_that_never_answers_gives_backend_unavailable(scheme: str, name: str) -> None:
    import socket

    # Accepts TCP connections (the kernel does, from the backlog) but never says a word:
    # a hung server or a middlebox. The timeouts must end the wait (PyMySQL awaits the
    # server's greeting with its read timeout, our statement_timeout).
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        url = f"{scheme}://u@127.0.0.1:{port}/db"
        lock = DatabaseLock(f"{name}:{scheme}", url, connect_timeout=1, statement_timeout=1)
        with pytest.raises(BackendUnavailable, match="connect"):
            lock.acquire(blocking=False)
    finally:
        silent.close()
