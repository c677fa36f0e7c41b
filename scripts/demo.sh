#!/usr/bin/env bash
# The demo command: watch lockscope find a real deadlock and a stale lock holder.
#
#   scripts/demo.sh                    # one round, then serve the web view until Ctrl-C
#   scripts/demo.sh --once             # extra arguments go to `lockscope demo`
#
# Needs only Python >= 3.11: no server, no Docker. Creates .venv on first use and installs
# lockscope with the `agent` extra (skipped when this checkout is already installed there).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${VENV:-.venv}

if [[ ! -x $venv/bin/python ]]; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "demo.sh: $python is $("$python" --version 2>&1); lockscope needs Python >= 3.11 (set PYTHON=...)" >&2
    exit 2
  fi
  "$python" -m venv "$venv"
fi

# Installed from this checkout, with the agent's dependencies? Then there is nothing to do.
if ! "$venv/bin/python" - "$PWD/src" 2>/dev/null <<'PY'
import os, sys
import aiohttp, google.protobuf, networkx, prometheus_client  # noqa: F401  (the agent extra)
import lockscope
src = os.path.realpath(sys.argv[1]) + os.sep
sys.exit(not os.path.realpath(lockscope.__file__).startswith(src))
PY
then
  echo "demo.sh: installing lockscope[agent] into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e '.[agent]'
fi

exec "$venv/bin/lockscope" demo "$@"
