#!/usr/bin/env bash
# Creates (or re-validates) a virtual environment, installs the pinned torch and the test tools,
# and builds torchext into it. Used by tests/run.sh, examples/run.sh and .ci/run.
#
#   TORCHEXT_VENV     where the environment lives (default: .venv in the checkout)
#   TORCHEXT_PYTHON   interpreter to create it with (default: python3)
#   TORCHEXT_CPU_ONLY=1  skip the CUDA kernels;  MAX_JOBS  parallel compile jobs (default 2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TORCHEXT_VENV:-$ROOT/.venv}"
PY="${TORCHEXT_PYTHON:-python3}"
TORCH_PIN="torch==2.14.1"
export MAX_JOBS="${MAX_JOBS:-2}"

valid_env() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1 || return 1
import importlib, sys
import torch
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
for mod in ("pytest", "hypothesis", "expecttest", "numpy", "ninja", "setuptools", "wheel"):
    importlib.import_module(mod)
PY
}

if valid_env; then
  echo "== reusing validated environment $VENV"
else
  echo "== creating environment $VENV"
  rm -rf "$VENV"
  # torch's CUDA build and its nvidia packages take about 6 GB installed; pip's wheel cache would
  # double that, so it is switched off below. Say so plainly when the disk is short.
  free_kb=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((7 * 1024 * 1024)) ]; then
    echo "warning: $((free_kb / 1024)) MiB free under $(dirname "$VENV"); the environment needs about 6 GiB" >&2
  fi
  "$PY" -m venv "$VENV"
  # (pip's notes about index locations are noise here; real errors still fail the install)
  "$VENV/bin/python" -m pip install -q --no-cache-dir --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/python" -m pip install -q --no-cache-dir "$TORCH_PIN" numpy pytest hypothesis expecttest ninja setuptools wheel 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  valid_env || { echo "environment $VENV failed validation after install" >&2; exit 1; }
fi

# The build: `setup.py build_ext --inplace` into a persistent build directory per configuration, so
# that ninja recompiles only what changed (nothing, on a second run; torch's build puts ccache or
# sccache in front of the compilers when one is on PATH), then, once, an editable install of the
# Python package that builds nothing (TORCHEXT_NO_EXTENSION=1) and points the environment at this
# checkout. Without build isolation: an isolated build would fetch another torch and compile
# against its ABI. One progress line per compiled object, with the build's elapsed time.
CONFIG="$([ "${TORCHEXT_CPU_ONLY:-0}" != 0 ] && echo cpu || echo full)$([ "${TORCHEXT_PORTABLE:-0}" != 0 ] && echo -portable || true)"
BUILD_TEMP="$ROOT/build/temp-$CONFIG"
echo "== building torchext into $BUILD_TEMP (MAX_JOBS=$MAX_JOBS${TORCHEXT_CPU_ONLY:+, TORCHEXT_CPU_ONLY=$TORCHEXT_CPU_ONLY})"
LOG="$(mktemp)"
t0=$(date +%s)
progress() {  # "[3/27 41s] csrc/cuda/relu.cu" from ninja's status lines
  while IFS= read -r line; do
    case "$line" in
      "["*/*"s] "*)
        src=$(printf '%s\n' "$line" | grep -oE "[^ ]+\.(cpp|cu) -o " | head -n 1 | sed 's/ -o $//' || true)
        if [ -n "$src" ]; then echo "   ${line%%] *}] ${src#"$ROOT"/}"; fi ;;
    esac
  done
  return 0
}
# After a build of the other configuration, --force relinks even if no object changed (that
# configuration's .so would look newer than this one's objects); ninja still compiles only what
# changed. Otherwise a build with nothing changed writes nothing.
STAMP="$ROOT/build/last-config"
FORCE=()
[ "$(cat "$STAMP" 2>/dev/null || true)" = "$CONFIG" ] || FORCE=(--force)
if ! (cd "$ROOT" && NINJA_STATUS="[%f/%t %es] " "$VENV/bin/python" setup.py build_ext --inplace ${FORCE[@]+"${FORCE[@]}"} \
        --build-temp "$BUILD_TEMP" 2>&1 | tee "$LOG" | progress); then
  tail -n 60 "$LOG" >&2
  echo "build failed (full log: $LOG)" >&2
  exit 1
fi
t1=$(date +%s)
echo "$CONFIG" >"$STAMP"
{ grep -oE "torchext: building.*" "$LOG" || true; } | head -n 1
# The targets each CUDA object was compiled for (from the compile commands this build ran).
{ grep -E "nvcc .* -c [^ ]+\.cu " "$LOG" || true; } | while read -r line; do
  src=$(echo "$line" | grep -oE "[^ /]+/[^ /]+\.cu " | head -n 1 || true)
  archs=$(echo "$line" | grep -oE "code=(sm|compute)_[0-9]+a?" | sed 's/code=//' | sort -u | tr '\n' ' ' || true)
  echo "   nvcc compiled ${src% } for: $archs"
done
echo "== build took $((t1 - t0)) s"
rm -f "$LOG"
installed() {  # torchext imports from this checkout, outside it
  (cd / && "$VENV/bin/python" -c 'import os, sys, torchext; sys.exit(os.path.dirname(torchext.__file__) != sys.argv[1])' \
    "$ROOT/torchext") >/dev/null 2>&1
}
if ! installed; then
  LOG="$(mktemp)"
  if ! (cd "$ROOT" && TORCHEXT_NO_EXTENSION=1 "$VENV/bin/python" -m pip install -v --no-build-isolation --no-deps -e . \
          >"$LOG" 2>&1) || ! installed; then
    tail -n 60 "$LOG" >&2
    echo "editable install failed (full log: $LOG)" >&2
    exit 1
  fi
  rm -f "$LOG"
fi
"$VENV/bin/python" -m torchext.info
