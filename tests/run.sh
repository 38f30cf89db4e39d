#!/usr/bin/env bash
# Installs everything (pinned torch, test tools, torchext with its CUDA kernels when a toolkit is
# found) into a virtual environment and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/.ci/env.sh"
VENV="${TORCHEXT_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/python" -m pytest -q tests "$@"
