"""Zero-code: an unmodified script reports its locks under ``opentelemetry-instrument`` and
under ``lockscope instrument --``; with the shim disabled it reports nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockscope import events
from lockscope.testing.otlp_sink import OtlpSink

BIN = Path(sys.executable).parent

SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    import redis

    r = redis.Redis.from_url(sys.argv[1])
    held = r.lock("zero-code:1", timeout=30)
    assert held.acquire()
    def waiter():
        # Waits past report_after, then gives up.
        assert r.lock("zero-code:1", timeout=30).acquire(blocking_timeout=0.5) is False
    t = threading.Thread(target=waiter)
    t.start()
    t.join()
    held.release()
    print(os.getpid())
    """
)


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


def _run(tmp_path: Path, sink: OtlpSink, redis_url: str, prefix: list[str],
         **env: str) -> int:  # fmt: skip
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    full_env = {
        **os.environ,
        "LOCKSCOPE_ENDPOINT": sink.endpoint,
        "LOCKSCOPE_METRICS_EXPORT": "none",
        "OTEL_SERVICE_NAME": "zero-code-app",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    done = subprocess.run(
        [*prefix, sys.executable, str(script), redis_url],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def _reported(sink: OtlpSink, pid: int) -> None:
    start = sink.wait_for(lambda e: e.name == events.EVENT_WAIT_START and e.pid == pid, timeout=10)
    assert start.attrs[events.ATTR_LOCK_NAME] == "zero-code:1"
    assert start.event.process.service == "zero-code-app"
    # Flushed at exit: the end of the wait and of the reported hold.
    sink.wait_for(lambda e: e.name == events.EVENT_WAIT_END and e.pid == pid, timeout=10)
    sink.wait_for(lambda e: e.name == events.EVENT_HOLD_END and e.pid == pid, timeout=10)


def test_opentelemetry_instrument_activates_the_shim(
    tmp_path: Path, sink: OtlpSink, redis_url: str
) -> None:
    pid = _run(tmp_path, sink, redis_url, [str(BIN / "opentelemetry-instrument")])
    _reported(sink, pid)


def test_lockscope_instrument_activates_the_shim(
    tmp_path: Path, sink: OtlpSink, redis_url: str
) -> None:
    pid = _run(tmp_path, sink, redis_url, [str(BIN / "lockscope"), "instrument", "--"])
    _reported(sink, pid)


@pytest.mark.parametrize(
    ("runner", "env"),
    [
        (["lockscope", "instrument", "--"], {"LOCKSCOPE_DISABLED": "true"}),
        (["opentelemetry-instrument"], {"LOCKSCOPE_DISABLED": "true"}),
        (["opentelemetry-instrument"], {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "lockscope"}),
    ],
)
def test_disabled_reports_nothing(
    tmp_path: Path, sink: OtlpSink, redis_url: str, runner: list[str], env: dict[str, str]
) -> None:
    _run(tmp_path, sink, redis_url, [str(BIN / runner[0]), *runner[1:]], **env)
    # The process has exited: anything it would have sent (exit flush included) is in.
    assert sink.requests == []


def test_lockscope_instrument_help_has_an_example() -> None:
    done = subprocess.run(
        [str(BIN / "lockscope"), "instrument", "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "lockscope instrument" in done.stdout
    assert "-- gunicorn" in done.stdout


def test_lockscope_instrument_without_a_command_fails() -> None:
    done = subprocess.run(
        [str(BIN / "lockscope"), "instrument"], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no command" in done.stderr
