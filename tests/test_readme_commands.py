"""The README's Quick start commands are the ones CI runs, and the first one really works.

The Quick start block is the fenced block after the ``<!-- quick-start`` marker in
README.md; its commands (comments stripped) must be exactly the demo command and the test
command.  ``.ci/run`` must run the same test command, the Makefile's shortcuts must call
the same scripts, and the demo command itself is run here (one round, on free ports).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_COMMAND = "./scripts/demo.sh"
TEST_COMMAND = "./scripts/test.sh"


def quick_start_commands(text: str) -> list[str]:
    """The commands of the Quick start block, without comments or blank lines."""
    match = re.search(r"<!-- quick-start\b.*?-->\s*```[a-z]*\n(.*?)```", text, re.DOTALL)
    if match is None:
        raise AssertionError("README.md has no fenced block after a '<!-- quick-start' marker")
    commands = []
    for line in match.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


def test_readme_has_exactly_the_two_commands() -> None:
    assert quick_start_commands(README.read_text()) == [DEMO_COMMAND, TEST_COMMAND]


def test_quick_start_block_sits_under_its_heading() -> None:
    text = README.read_text()
    heading = text.index("## Quick start")
    assert heading < text.index("<!-- quick-start") < text.index("<!-- quick-start end -->")


def test_extraction_fails_without_the_marker() -> None:
    with pytest.raises(AssertionError, match="quick-start"):
        quick_start_commands("# lockscope\n\n```sh\nmake demo\n```\n")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    run_lines = [
        shlex.join(shlex.split(line, comments=True))
        for line in ci.splitlines()
        if shlex.split(line, comments=True)
    ]
    invoked = {line.removeprefix("./") for line in run_lines}
    assert TEST_COMMAND.removeprefix("./") in invoked, run_lines


def test_scripts_exist_and_are_executable() -> None:
    for command in (DEMO_COMMAND, TEST_COMMAND):
        path = ROOT / command
        assert path.is_file(), path
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_makefile_shortcuts_call_the_same_scripts() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed (the README commands do not need it)")
    result = subprocess.run(
        ["make", "-n", "demo", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line.strip() for line in result.stdout.splitlines() if line.strip()] == [
        DEMO_COMMAND,
        TEST_COMMAND,
    ]


def test_demo_command_finds_a_deadlock_and_a_stale_holder() -> None:
    # The first README command, as a new user runs it, plus --once and free ports.  VENV
    # points it at the environment running the tests: when this checkout is installed
    # there (as scripts/test.sh does), the script installs nothing.
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    result = subprocess.run(
        [str(ROOT / DEMO_COMMAND), "--once", "--http", "127.0.0.1:0", "--otlp", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DEADLOCK dl-" in result.stdout
    assert "STALE HOLDER found by the agent" in result.stdout
    assert "installing" not in result.stderr


@pytest.mark.parametrize("command", ["agent", "instrument", "status", "top", "check", "demo"])
def test_every_command_help_says_what_it_does_with_an_example(command: str) -> None:
    from lockscope.cli import COMMANDS

    assert command in COMMANDS
    result = subprocess.run(
        [sys.executable, "-m", "lockscope", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s*Examples?:", result.stdout, re.MULTILINE), result.stdout
    assert f"lockscope {command}" in result.stdout.split("Example", 1)[1]


def test_the_command_list_is_covered() -> None:
    from lockscope.cli import COMMANDS

    assert set(COMMANDS) == {"agent", "instrument", "status", "top", "check", "demo"}
