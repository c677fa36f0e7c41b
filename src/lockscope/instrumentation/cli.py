"""Run a command with the lockscope shim active, like ``opentelemetry-instrument``.

The command's Python processes (and the Python subprocesses they start) load the shim at
start-up through a ``sitecustomize`` module put on ``PYTHONPATH``; nothing in the app
changes.  Options set the matching ``LOCKSCOPE_*`` environment variables.

Example:
  lockscope instrument --service-name orders -- gunicorn -w 4 orders.app:wsgi
  lockscope instrument --threading -- python worker.py --queue high
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping

__all__ = ["add_arguments", "build_environment", "run"]

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lockscope instrument`` options."""
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="agent OTLP/HTTP base URL, e.g. http://127.0.0.1:4318 (LOCKSCOPE_ENDPOINT)",
    )
    parser.add_argument("--service-name", help="service name (OTEL_SERVICE_NAME)")
    parser.add_argument(
        "--report-after", type=float, metavar="SECONDS", help="LOCKSCOPE_REPORT_AFTER (0.2)"
    )
    parser.add_argument(
        "--heartbeat", type=float, metavar="SECONDS", help="LOCKSCOPE_HEARTBEAT (1.0)"
    )
    parser.add_argument("--threading", action="store_true", help="also record threading.Lock/RLock")
    parser.add_argument("--asyncio", action="store_true", help="also record asyncio.Lock")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...", help="the command to run"
    )


def build_environment(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ``env`` plus the bootstrap path and the options."""
    out = dict(env)
    paths = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    if BOOTSTRAP_DIR not in paths:
        paths.insert(0, BOOTSTRAP_DIR)
    out["PYTHONPATH"] = os.pathsep.join(paths)
    options = {
        "LOCKSCOPE_ENDPOINT": args.endpoint,
        "OTEL_SERVICE_NAME": args.service_name,
        "LOCKSCOPE_REPORT_AFTER": args.report_after,
        "LOCKSCOPE_HEARTBEAT": args.heartbeat,
        "LOCKSCOPE_INSTRUMENT_THREADING": "true" if args.threading else None,
        "LOCKSCOPE_INSTRUMENT_ASYNCIO": "true" if args.asyncio else None,
    }
    for key, value in options.items():
        if value is not None:
            out[key] = str(value)
    return out


def run(args: argparse.Namespace) -> int:
    """Replace this process with the command (exit status is the command's)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("lockscope instrument: no command given (lockscope instrument -- CMD ARGS...)",
              file=sys.stderr)  # fmt: skip
        return 2
    from lockscope.instrumentation.config import (
        EndpointError,
        check_endpoint,
        endpoint_error,
        env_flag,
    )

    try:
        if args.endpoint is not None:
            for item in args.endpoint.split(","):
                check_endpoint(item, "--endpoint")
    except EndpointError as exc:
        print(f"lockscope instrument: {exc}", file=sys.stderr)
        return 2
    env = build_environment(args, os.environ)
    problem = None if env_flag(env, "LOCKSCOPE_DISABLED") else endpoint_error(env)
    if problem is not None:
        print(f"lockscope instrument: {problem}", file=sys.stderr)
        return 2
    executable = shutil.which(command[0])
    if executable is None:
        print(f"lockscope instrument: command not found: {command[0]}", file=sys.stderr)
        return 127
    os.execve(executable, command, env)
