#!/usr/bin/env bash
# Cross-compiles torchext's CPU kernels for Linux aarch64 on an x86-64 machine and links them into
# torchext/_C for an aarch64 torch, to check that the portable kernels build there. Not part of CI
# (it needs a cross toolchain and an aarch64 torch wheel); run by hand:
#
#   TORCH_DIR=<unpacked aarch64 torch wheel>/torch \
#   PY_INCLUDES="-I<aarch64 python include dir> [...]" \
#   OUT=<output dir> bash .ci/cross_aarch64.sh
#
#   CXX            cross compiler (default aarch64-linux-gnu-g++)
#   STD            C++ standard (default c++20, as torch >= 2.10 builds extensions; c++17 before)
#   TORCH_VERSION  recorded in the library (default: read from TORCH_DIR/version.py)
#
# The result, OUT/_C.cpython-311-aarch64-linux-gnu.so (suffix from PY_SUFFIX), goes beside a copy of
# the torchext package on the aarch64 machine (or emulator), with a _build_info.py naming the same
# torch version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${TORCH_DIR:?set TORCH_DIR to the torch/ directory of an unpacked aarch64 torch wheel}"
: "${PY_INCLUDES:?set PY_INCLUDES to -I flags for the aarch64 Python headers}"
: "${OUT:?set OUT to an output directory}"
CXX="${CXX:-aarch64-linux-gnu-g++}"
STD="${STD:-c++20}"
PY_SUFFIX="${PY_SUFFIX:-cpython-311-aarch64-linux-gnu}"
if [ -z "${TORCH_VERSION:-}" ] && [ -f "$TORCH_DIR/version.py" ]; then
  TORCH_VERSION="$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$TORCH_DIR/version.py")"
fi
: "${TORCH_VERSION:?set TORCH_VERSION (TORCH_DIR has no version.py)}"
mkdir -p "$OUT/obj"

# The flags setup.py gives a CPU-only build.
flags=(-O3 -fopenmp -fno-math-errno -fPIC -std="$STD" -Wall -D_GLIBCXX_USE_CXX11_ABI=1
       -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C
       "-DTORCHEXT_TORCH_VERSION=\"$TORCH_VERSION\"" '-DTORCHEXT_CUDA_ARCHS=""'
       -I"$ROOT/csrc" -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include")
read -r -a py_flags <<<"$PY_INCLUDES"

echo "== cross-compiling for aarch64 with $CXX against torch $TORCH_VERSION ($STD)"
status=0
# Every .cpp under csrc/, as setup.py builds them.
while IFS= read -r src; do
  obj="$OUT/obj/$(echo "${src#"$ROOT"/}" | tr / _).o"
  if ! "$CXX" "${flags[@]}" "${py_flags[@]}" -c "$src" -o "$obj" 2>"$obj.log"; then
    echo "FAILED: $src"; grep -m 20 "error" "$obj.log" || true; status=1
  fi
  grep -h "warning:" "$obj.log" || true
done < <(find "$ROOT/csrc" -name "*.cpp" | sort)
[ "$status" = 0 ] || exit 1
# torch's wheels keep some libraries (OpenBLAS, libgomp) in torch.libs beside torch/.
"$CXX" -shared -fopenmp "$OUT"/obj/*.o -o "$OUT/_C.$PY_SUFFIX.so" -L"$TORCH_DIR/lib" \
  -lc10 -ltorch -ltorch_cpu -ltorch_python \
  -Wl,-rpath-link,"$TORCH_DIR/lib:$(dirname "$TORCH_DIR")/torch.libs" -Wl,--allow-shlib-undefined
echo "== built $OUT/_C.$PY_SUFFIX.so"
