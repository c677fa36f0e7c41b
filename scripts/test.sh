#!/usr/bin/env bash
# The test command: lint, type-check and run the whole test suite against real servers.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k redis -x     # extra arguments go to pytest
#
# Sets up everything on a fresh Debian machine: the server packages (scripts/setup-system.sh,
# a no-op once they are installed; LOCKSCOPE_SKIP_SYSTEM_SETUP=1 skips it), then .venv
# (Python >= 3.11) with lockscope and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${LOCKSCOPE_SKIP_SYSTEM_SETUP:-0} != 1 ]]; then
  scripts/setup-system.sh
fi

python=${PYTHON:-python3}
venv=.venv

if [[ ! -x $venv/bin/python ]]; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "test.sh: $python is $("$python" --version 2>&1); lockscope needs Python >= 3.11 (set PYTHON=...)" >&2
    exit 2
  fi
  "$python" -m venv "$venv"
fi

"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[test]'

export PATH="$PWD/$venv/bin:$PATH"
echo "== ruff check"
ruff check .
echo "== ruff format --check"
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
pytest "$@"
