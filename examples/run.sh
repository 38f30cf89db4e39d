#!/usr/bin/env bash
# Installs everything into a virtual environment, then trains the two-layer net with torchext
# modules and optimizer. Extra arguments go to examples/two_layer_net.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/.ci/env.sh"
VENV="${TORCHEXT_VENV:-$ROOT/.venv}"
"$VENV/bin/python" "$ROOT/examples/two_layer_net.py" "$@"
