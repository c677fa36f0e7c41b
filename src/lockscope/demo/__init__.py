"""Watch lockscope find a real deadlock and a stale lock holder, with nothing to install.

The demo starts a lockscope agent in this process, then worker processes that use
lockscope's DatabaseLock on a SQLite file in a temporary directory, each instrumented by
the shim exactly as your app would be (LockscopeInstrumentor().instrument()):

  1. three transfers each lock one account, then want the next one's: a ring of three,
     a real deadlock.  The agent finds it within about a second and names a victim.
     The deadlock is left in place for --linger seconds (20; Enter goes on) for you to
     look at in the web view; then the victim gives up its acquire and the other two
     complete.
  2. a report job crashes (SIGKILL) while holding a lease; the agent reports the stale
     holder as soon as its heartbeats stop; a retry takes the lock when the lease ends.

The findings are printed as tables (as `lockscope status` shows them) together with the
web view's URL; the agent keeps serving until Ctrl-C.

Examples:

  lockscope demo                                  # SQLite, agent on 127.0.0.1:4318/9477
  lockscope demo --once                           # one round, exit 0 if both were found
  lockscope demo --backend redis --redis-url redis://127.0.0.1:6379/0
  lockscope demo --backend redis --redis-url redis://redis:6379/0 \\
      --agent-otlp http://agent:4318 --agent-http http://agent:9477 --repeat 60

Exit status: 0 when the deadlock and the stale holder were found and resolved; 1 when
one was not (the message says which); 2 for a bad option, an unreachable backend or
agent, or a port in use.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from lockscope.demo.agent_link import AgentLink
    from lockscope.demo.console import Console
    from lockscope.demo.scenario import RoundResult

__all__ = ["add_arguments", "run"]

DEFAULT_OTLP: Final = ("127.0.0.1", 4318)
DEFAULT_HTTP: Final = ("127.0.0.1", 9477)
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
ENV_AGENT_TOKEN: Final = "LOCKSCOPE_AGENT_TOKEN"
DEFAULT_LINGER: Final = 20.0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
WORKER_ENV: Final = {
    "LOCKSCOPE_REPORT_AFTER": "0.2",
    # A short heartbeat makes a crashed holder visible within about a second.
    "LOCKSCOPE_HEARTBEAT": "0.3",
    "PYTHONUNBUFFERED": "1",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope demo`` options."""
    parser.add_argument(
        "--backend",
        choices=("sqlite", "redis"),
        default="sqlite",
        help="lock backend: sqlite (DatabaseLock, no server; default) or redis (RedisLock)",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        default=DEFAULT_REDIS_URL,
        help=f"Redis server for --backend redis (default {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--otlp",
        metavar="HOST:PORT",
        help="where the in-process agent receives OTLP (default 127.0.0.1:4318, "
        "or a free port if that is taken)",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="where the in-process agent serves the API and web view (default "
        "127.0.0.1:9477, or a free port if that is taken)",
    )
    parser.add_argument(
        "--agent-otlp",
        metavar="URL",
        help="use a running agent instead: its OTLP base URL (with --agent-http)",
    )
    parser.add_argument(
        "--agent-http", metavar="URL", help="the running agent's HTTP base URL (with --agent-otlp)"
    )
    parser.add_argument(
        "--agent-token",
        metavar="TOKEN",
        help=f"the running agent's bearer token, if it has one (env {ENV_AGENT_TOKEN})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for each finding before failing (default 15)",
    )
    parser.add_argument(
        "--linger",
        type=float,
        metavar="SECONDS",
        help="leave the deadlock (and the dead holder's lease) in place this long before "
        "resolving, to look at it (default 0 with --once, else 20; Enter ends it early)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="play one round and exit (0 if both were found)"
    )
    mode.add_argument(
        "--repeat",
        type=float,
        metavar="SECONDS",
        help="play a new round every SECONDS until Ctrl-C (for dashboards)",
    )


class _UsageError(Exception):
    pass


def _address(value: str | None, default: tuple[str, int], what: str) -> tuple[str, int]:
    if value is None:
        return default
    from lockscope.agent.cli import SettingsError, parse_address

    try:
        return parse_address(value, what)
    except SettingsError as exc:
        raise _UsageError(str(exc)) from None


def _port_free(address: tuple[str, int]) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _check_redis(url: str) -> None:
    try:
        import redis
    except ImportError:
        raise _UsageError(
            "--backend redis needs redis-py: pip install 'lockscope[redis]'"
        ) from None
    try:
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        client.ping()
        client.close()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise _UsageError(f"cannot reach Redis at {url}: {exc}") from None


def _start_agent(args: argparse.Namespace) -> AgentLink:
    from lockscope.demo.agent_link import ExternalAgent, LocalAgent

    if args.agent_otlp or args.agent_http:
        if not (args.agent_otlp and args.agent_http):
            raise _UsageError("--agent-otlp and --agent-http go together")
        if args.otlp or args.http:
            raise _UsageError(
                "--otlp/--http start an agent here; not with --agent-otlp/--agent-http"
            )
        token = args.agent_token or os.environ.get(ENV_AGENT_TOKEN) or None
        agent = ExternalAgent(args.agent_otlp, args.agent_http, token)
        agent.wait_ready(60.0)
        return agent
    if args.agent_token:
        raise _UsageError("--agent-token goes with --agent-otlp/--agent-http")
    otlp = _address(args.otlp, DEFAULT_OTLP, "--otlp")
    http = _address(args.http, DEFAULT_HTTP, "--http")
    notes = []
    # Defaults fall back to free ports (another agent may be running); explicit ones do not.
    if args.otlp is None and not _port_free(otlp):
        notes.append(f"{otlp[0]}:{otlp[1]} is in use, OTLP on a free port instead")
        otlp = (otlp[0], 0)
    if args.http is None and not _port_free(http):
        notes.append(f"{http[0]}:{http[1]} is in use, HTTP on a free port instead")
        http = (http[0], 0)
    for note in notes:
        print(f"lockscope demo: {note}")
    return LocalAgent(otlp, http).start()


def _worker_env(otlp_url: str, token: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCKSCOPE_DISABLED", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")
    }
    env.update(WORKER_ENV)
    env["LOCKSCOPE_ENDPOINT"] = otlp_url
    if token is not None:
        # The shim's header syntax is OTEL_EXPORTER_OTLP_HEADERS's: percent-encoded values.
        env["LOCKSCOPE_HEADERS"] = "Authorization=" + urllib.parse.quote(f"Bearer {token}")
    return env


def run(args: argparse.Namespace) -> int:
    """Run the demo; see the module docstring for the exit status."""
    from lockscope.demo.agent_link import AgentError
    from lockscope.demo.console import Console

    negative = [v for v in (args.repeat, args.linger) if v is not None and v < 0]
    if negative or args.timeout <= 0:
        print("lockscope demo: --repeat and --linger must be >= 0, --timeout > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.backend == "redis":
            _check_redis(args.redis_url)
        agent = _start_agent(args)
    except (_UsageError, AgentError) as exc:
        print(f"lockscope demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    previous = _exit_on_sigterm()
    try:
        return _play(args, agent, Console())
    finally:
        agent.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, ``docker stop``, a CI timeout) leave through the ``finally``
    blocks, as Ctrl-C does: the workers are stopped and the demo's temporary directory
    (``lockscope-demo-*``) is removed.  Returns the previous handler (None off the main
    thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, terminate)


def _play(args: argparse.Namespace, agent: AgentLink, console: Console) -> int:
    from lockscope.demo.agent_link import AgentError
    from lockscope.demo.processes import WorkerPool
    from lockscope.demo.scenario import DemoFailed, Round

    rounds_ok = 0
    linger = args.linger if args.linger is not None else (0.0 if args.once else DEFAULT_LINGER)
    with tempfile.TemporaryDirectory(prefix="lockscope-demo-") as tmp:
        if args.backend == "redis":
            url, where = args.redis_url, f"RedisLock on {args.redis_url}"
        else:
            path = Path(tmp) / "locks.db"
            url, where = f"sqlite:///{path}", f"DatabaseLock on the SQLite file {path}"
        console.write(f"lockscope demo: {where}")
        console.write(f"  agent OTLP receiver  {agent.otlp_url}")
        console.write(f"  agent web view       {agent.http_url}/")
        console.write(f"  findings as tables   lockscope status --http {agent.http_url}")
        pool = WorkerPool(_worker_env(agent.otlp_url, agent.token), Path(tmp))
        number = 0
        try:
            while True:
                number += 1
                game = Round(
                    agent,
                    pool,
                    console,
                    backend=args.backend,
                    url=url,
                    number=number,
                    find_timeout=args.timeout,
                    linger=linger,
                )
                try:
                    result = game.run()
                except DemoFailed as exc:
                    console.write(f"\nlockscope demo: FAILED: {exc}")
                    result = game.result
                except AgentError as exc:
                    console.write(f"\nlockscope demo: FAILED: {exc}")
                    return EXIT_USAGE
                finally:
                    pool.stop_all()
                rounds_ok += result.ok
                _summary(console, result, agent.http_url)
                if args.once:
                    return 0 if result.ok else EXIT_NOT_FOUND
                if args.repeat is None:
                    console.write(f"\nServing the web view at {agent.http_url}/ until Ctrl-C.")
                    while True:
                        time.sleep(3600)
                console.write(f"\nNext round in {args.repeat:g} s (Ctrl-C to stop).")
                time.sleep(args.repeat)
        except KeyboardInterrupt:
            console.write("\nlockscope demo: stopped.")
            return 0 if rounds_ok else 130
        finally:
            pool.stop_all()


def _summary(console: Console, result: RoundResult, http_url: str) -> None:
    def seen(found: object, latency: float | None, after: str) -> str:
        if not found:
            return "NO"
        return "yes" if latency is None else f"yes, {latency:.2f} s after {after}"

    console.heading("Summary")
    console.write(
        f"  deadlock found:     {seen(result.deadlock, result.deadlock_latency, 'it formed')}"
    )
    console.write(f"  stale holder found: {seen(result.stale, result.stale_latency, 'the crash')}")
    console.write(f"  both resolved:      {'yes' if result.ok else 'NO'}")
    console.write(f"  web view:           {http_url}/")
