#!/usr/bin/env bash
# Run the other-client compatibility tests with their tools installed in temporary folders
# (never in the repository or the project's environment):
#   - a throwaway virtualenv with the PyPI packages faktory and pyfaktory;
#   - an npm prefix with Node's faktory-worker.
# Usage: bash tests/compat/run.sh   (from the repository root; needs python3, node and npm)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet faktory pyfaktory
npm install --silent --no-audit --no-fund --prefix "$work/npm" faktory-worker@4
cd "$root"
KAFFI_COMPAT_PYTHON="$work/venv/bin/python" \
KAFFI_COMPAT_NODE_MODULES="$work/npm/node_modules" \
  "${PYTHON:-python}" -m pytest -m compat tests/compat -rs "$@"
