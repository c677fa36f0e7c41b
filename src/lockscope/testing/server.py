"""The life cycle every test server shares: free port, private directory, start, faults, stop.

Process supervision is mirakuru's (:class:`mirakuru.Executor`): it starts the server in its
own session, waits for a readiness check with a deadline, stops with a signal and falls back
to SIGKILL, tags every child with an environment marker and kills leftovers at interpreter
exit. On top of that this module adds what lock tests need: a port and data directory that
survive restarts (so :meth:`Server.start` after :meth:`Server.kill` brings back the same
server), pause/resume of the whole process group, and a clear error naming the Debian
package when a server binary is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Self, TypedDict

from lockscope.testing import faults

__all__ = [
    "Server",
    "ServerNotInstalled",
    "ServerOptions",
    "ServerStartError",
    "free_port",
    "port_open",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ServerNotInstalled(RuntimeError):
    """A server binary the test harness needs is missing.

    The message names the Debian package that provides it, e.g.
    ``apt-get install redis-server``. Tests must fail on this, never skip: a missing
    server would otherwise turn a red build green.
    """


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time; the message has its log."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerOptions(TypedDict, total=False):
    """The options every server takes (see :meth:`Server.__init__`); each server class
    accepts them as keyword arguments next to its own."""

    port: int | None
    host: str
    base_dir: str | os.PathLike[str] | None
    startup_timeout: float | None


def _executor_class() -> type[Any]:
    # mirakuru is a test-only dependency; import it when a server starts, so that importing
    # lockscope.testing (which pytest does for every run through the plugin) never needs it.
    try:
        from mirakuru import Executor
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ServerNotInstalled(
            "lockscope.testing needs mirakuru: pip install 'lockscope[test]' (or mirakuru)"
        ) from exc

    class _ReadyExecutor(Executor):
        """A mirakuru executor whose readiness is decided by the server object."""

        def __init__(
            self,
            command: Sequence[str],
            *,
            ready: Callable[[], bool],
            in_use: Callable[[], bool],
            **kwargs: Any,
        ) -> None:
            super().__init__(list(command), **kwargs)
            self._ready = ready
            self._in_use = in_use

        def pre_start_check(self) -> bool:
            return self._in_use()

        def after_start_check(self) -> bool:
            return self._ready()

    return _ReadyExecutor


# Strong references: a server nobody holds on to keeps running (and is closed at exit)
# rather than being killed by the garbage collector at a random moment.
_live: set[Server] = set()
_live_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    """Stop servers and remove directories left behind when the interpreter exits."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.close()
        except Exception:  # best effort at exit: keep closing the others
            log.exception("could not close %r at exit", server)


class Server(ABC):
    """A real server process on a free loopback port, for tests.

    Use it as a context manager (``with RedisServer() as r: ...``) or call :meth:`start`
    and :meth:`close`. The port and the data directory are chosen once and kept, so
    :meth:`stop`/:meth:`kill` followed by :meth:`start` restarts the same server on the
    same port with the data it persisted.

    Fault helpers act on the whole process group the server leads: :meth:`pause` freezes
    it (clients time out, connections stay open), :meth:`resume` thaws it, :meth:`kill`
    crashes it with SIGKILL.
    """

    #: Human-readable name, used in messages and directory names.
    name: ClassVar[str] = "server"
    #: Debian package that provides the binaries, named in :class:`ServerNotInstalled`.
    package: ClassVar[str] = ""
    #: Signal that asks the server for a fast, clean shutdown.
    stop_signal: ClassVar[int] = signal.SIGTERM
    #: Seconds to wait for readiness unless the caller says otherwise.
    default_startup_timeout: ClassVar[float] = 60.0

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float | None = None,
    ) -> None:
        """Prepare (but do not start) a server.

        :param port: TCP port; a free one is picked when omitted.
        :param host: address to listen on; loopback by default.
        :param base_dir: directory for data, logs and sockets; a fresh temporary directory
            (removed by :meth:`close`) when omitted.
        :param startup_timeout: seconds to wait for the server to become ready
            (:attr:`default_startup_timeout` when omitted).
        """
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.startup_timeout = (
            startup_timeout if startup_timeout is not None else self.default_startup_timeout
        )
        self._own_dir = base_dir is None
        self.base_dir = Path(
            tempfile.mkdtemp(prefix=f"lockscope-{self.name}-") if base_dir is None else base_dir
        )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.base_dir / f"{self.name}.log"
        self._executor: Any = None
        self._log_file: IO[str] | None = None
        self._initialised = False  # initialise() done
        self._provisioned = False  # after_first_start() done
        self._paused = False
        self._closed = False
        with _live_lock:
            _live.add(self)

    # -- to be provided by each server -------------------------------------------------

    def binaries(self) -> Sequence[str]:
        """Paths of the executables this server needs (checked before the first start);
        by default the one its :meth:`command` runs."""
        return [self.command()[0]]

    @abstractmethod
    def command(self) -> Sequence[str]:
        """The command line that runs the server in the foreground."""

    def required_files(self) -> Sequence[str]:
        """Paths of other files this server needs, such as jars (checked like binaries)."""
        return []

    def initialise(self) -> None:  # noqa: B027 - optional hook
        """Create the data directory and config; runs once, before the first start."""

    def after_first_start(self) -> None:  # noqa: B027 - optional hook
        """Create databases or users; runs once, after the first successful start."""

    def ready(self) -> bool:
        """Return True once the server answers requests (default: accepts TCP)."""
        return port_open(self.host, self.port)

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra :class:`subprocess.Popen` arguments (e.g. ``user=`` to drop root)."""
        return {}

    def environment(self) -> dict[str, str]:
        """Environment variables to add for the server process."""
        return {}

    def run_tool(
        self,
        args: Sequence[str],
        *,
        timeout: float = 30.0,
        error: type[Exception] = RuntimeError,
        **popen: Any,
    ) -> str:
        """Run one of the server's command-line tools (initdb, a SQL client...) to the end
        and return its output; raise ``error`` with what it printed when it fails."""
        result: subprocess.CompletedProcess[str] = subprocess.run(
            args, capture_output=True, text=True, check=False, timeout=timeout, **popen
        )
        if result.returncode != 0:
            said = "\n".join(out for out in (result.stdout.strip(), result.stderr.strip()) if out)
            raise error(f"{os.path.basename(args[0])} failed: {said}")
        return result.stdout

    @property
    def address(self) -> str:
        """``host:port``, where the server listens."""
        return f"{self.host}:{self.port}"

    # -- life cycle --------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Process id of the running server (the leader of its process group)."""
        if self._executor is None or self._executor.process is None:
            raise RuntimeError(f"{self.name} server is not running")
        pid: int = self._executor.process.pid
        return pid

    @property
    def running(self) -> bool:
        """True while the server process exists (paused counts as running)."""
        return self._executor is not None and bool(self._executor.running())

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    def check_installed(self) -> None:
        """Raise :class:`ServerNotInstalled` naming the package if a binary is missing."""
        missing = [
            binary
            for binary in self.binaries()
            if not os.access(
                (binary if os.sep in binary else shutil.which(binary)) or binary, os.X_OK
            )
        ]
        missing += [path for path in self.required_files() if not os.path.isfile(path)]
        if missing:
            raise ServerNotInstalled(
                f"{self.name}: {', '.join(missing)} not found; install the Debian package "
                f"'{self.package}' (apt-get install {self.package})"
            )

    def start(self) -> Self:
        """Start the server (or resume it if paused) and wait until it is ready.

        Idempotent: a running server is left as it is. After :meth:`stop` or
        :meth:`kill` it restarts on the same port with the same data directory.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} server was closed; create a new one")
        if self.running:
            if self._paused:
                self.resume()
            return self
        self.check_installed()
        if not self._initialised:
            self.initialise()
            self._initialised = True
        self._discard_executor()
        self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _discard_executor
        executor = _executor_class()(
            self.command(),
            ready=self.ready,
            in_use=lambda: port_open(self.host, self.port, timeout=0.2),
            cwd=str(self.base_dir),
            timeout=self.startup_timeout,
            sleep=0.05,
            stop_signal=self.stop_signal,
            envvars=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            popen_kwargs=self.popen_kwargs(),
        )
        self._executor = executor
        self._paused = False
        try:
            executor.start()
        except Exception as exc:
            self._discard_executor()
            raise ServerStartError(
                f"{self.name} server did not start on {self.address}: {exc}\n"
                f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
            ) from exc
        if not self._provisioned:
            self.after_first_start()
            self._provisioned = True
        return self

    def stop(self) -> None:
        """Shut the server down cleanly (it may persist its data); no-op when stopped."""
        if self._executor is None:
            return
        if self.running:
            # A stopped (SIGSTOPped) process would never act on the shutdown signal.
            self._signal_group(signal.SIGCONT)
            self._paused = False
            try:
                self._executor.stop()
            except Exception as exc:  # the exit status of a stopped server is moot
                log.debug("%s server stop: %s", self.name, exc)
        self._discard_executor()

    def kill(self) -> None:
        """Crash the server: SIGKILL to its whole process group, then wait for it."""
        if self._executor is None:
            return
        if self.running:
            pid = self.pid
            self._signal_group(signal.SIGKILL)
            self._executor.process.wait()
            # Children (PostgreSQL backends) must be gone too: a restart would find their
            # shared memory still attached.
            faults.wait_exited(pid, group=True)
        self._paused = False
        self._discard_executor()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to its process group): it accepts no more work.

        Returns once every thread of every process in the group is stopped.
        """
        if not self.running:
            raise RuntimeError(f"{self.name} server is not running")
        faults.pause(self.pid, group=True)
        self._paused = True

    def resume(self) -> None:
        """Thaw a server frozen by :meth:`pause` (SIGCONT)."""
        if not self.running:
            raise RuntimeError(f"{self.name} server is not running")
        self._signal_group(signal.SIGCONT)
        self._paused = False

    def restart(self) -> Self:
        """Stop cleanly and start again on the same port."""
        self.stop()
        return self.start()

    def ensure_running(self) -> Self:
        """Undo faults left behind by a test: resume if paused, start if stopped."""
        if self._closed:
            return self
        if self.running:
            self._signal_group(signal.SIGCONT)
            self._paused = False
            return self
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary directory (if it created one)."""
        if self._closed:
            return
        try:
            self.stop()
        except Exception:  # make sure the process is gone regardless
            self.kill()
        finally:
            self._closed = True
            with _live_lock:
                _live.discard(self)
            if self._own_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _discard_executor(self) -> None:
        if self._executor is not None:
            if self._executor.process is not None:
                # Reaps the process (if it died on its own) and closes its pipes.
                self._executor.kill()
            self._executor = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.address} {state}>"
