#!/usr/bin/env bash
# The emulated CUDA kernel tests under AddressSanitizer, with each block's threads run in reverse
# order: every out-of-bounds read or write of a kernel (a tensor's allocation has poisoned bytes on
# both sides under ASan) stops the run with a report. Run from the repository root with the project's Python first on PATH (or PYTHON=...);
# extra arguments go to pytest (run uncaptured, so that a report is not lost when ASan aborts).
set -euo pipefail
PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ASAN_LIB="$("${CXX:-c++}" -print-file-name=libasan.so)"
[ -f "$ASAN_LIB" ] || { echo "asan.sh: the compiler has no AddressSanitizer runtime (libasan.so)" >&2; exit 1; }
# Torch and Python are not instrumented: leaks are theirs, and the fibers' stack switches make ASan
# warn once.
export TORCHEXT_EMU_ASAN=1
# Threads run last to first between barriers here (first to last in the plain run), so a missing
# barrier shows in one of the two runs.
export TORCHEXT_EMU_REVERSE=1
export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:${ASAN_OPTIONS:-}"
# libstdc++ goes in with it, so that ASan's exception interceptor finds the real __cxa_throw.
CXX_LIB="$("${CXX:-c++}" -print-file-name=libstdc++.so)"
# The emulated test files (the kernels, the PTX models in test_emulated_ptx*.py, and the
# test_*_emulated.py files of one family's kernels), unless the arguments name test files or node
# ids of their own.
FILES=(tests/test_emulated_*.py tests/test_*_emulated.py)
for arg in "$@"; do
  case "$arg" in *.py | *.py::*) FILES=(); break ;; esac
done
LD_PRELOAD="$ASAN_LIB $CXX_LIB" "$PYTHON" -m pytest -q -s -p no:cacheprovider ${FILES[@]+"${FILES[@]}"} "$@"
