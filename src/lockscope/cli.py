"""The ``lockscope`` command: one sub-command per stage, each defined in its own module.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; they are
imported only when their command runs, so ``lockscope instrument`` does not import aiohttp.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# command -> (module, one-line help).  The module's docstring is the long help.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("lockscope.agent.cli", "run the agent: OTLP receiver, detectors, API, metrics"),
    "instrument": ("lockscope.instrumentation.cli", "run a command with the shim active"),
    "status": ("lockscope.client.status", "print the agent's active findings as a table"),
    "top": ("lockscope.client.top", "live view of the hottest locks and active findings"),
    "check": ("lockscope.client.check", "send a test event and confirm the agent got it"),
    "demo": ("lockscope.demo", "run a self-contained deadlock demo on SQLite"),
}


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    from lockscope import __version__

    parser = argparse.ArgumentParser(
        prog="lockscope",
        description="Distributed locks and a live view of who holds and waits for them.",
        epilog="Example: lockscope agent --http 127.0.0.1:9477",
    )
    parser.add_argument("--version", action="version", version=f"lockscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for command, (module_name, summary) in COMMANDS.items():
        if command != wanted:
            sub.add_parser(command, help=summary)
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(
            command,
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command_parser)
        if hasattr(module, "epilog"):  # e.g. a settings table generated from the options
            command_parser.epilog = module.epilog(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lockscope`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(args_list)
    args = parser.parse_args(args_list)
    run = getattr(args, "_run", None)
    if run is None:  # pragma: no cover - argparse already rejected an unknown command
        parser.error(f"unknown command {args.command!r}")
    result: int = run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
