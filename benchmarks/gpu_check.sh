#!/usr/bin/env bash
# On a machine with a GPU and its own torch: build torchext there, run every test (CUDA included),
# run the CUDA tests under compute-sanitizer (memcheck), run every benchmark on the GPU, and print
# a short summary table last. Results (logs, JSON) go to ${OUT_DIR:-benchmarks/out}.
#
#   bash benchmarks/gpu_check.sh                 # everything
#   SANITIZER=0 QUICK=1 bash benchmarks/gpu_check.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-$ROOT/benchmarks/out}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
declare -a SUMMARY

record() { SUMMARY+=("| $1 | $2 | $3 |"); }

# Build for the GPU that is present unless the caller chose archs.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
fi
t0=$(date +%s)
if "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT_DIR/build.log" 2>&1; then
  record build ok "$(( $(date +%s) - t0 )) s, archs $TORCH_CUDA_ARCH_LIST"
else
  tail -n 40 "$OUT_DIR/build.log"; record build FAILED "see build.log"
  printf '%s\n' "| step | result | detail |" "|---|---|---|" "${SUMMARY[@]}"; exit 1
fi
"$PY" -m torchext.info | tee "$OUT_DIR/info.txt"

"$PY" -m pytest -q -rs tests 2>&1 | tee "$OUT_DIR/tests.log"
record "tests (all)" "$([ "${PIPESTATUS[0]}" = 0 ] && echo ok || echo FAILED)" "$(tail -n 1 "$OUT_DIR/tests.log")"

if [ "${SANITIZER:-1}" != 0 ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    # Only the CUDA-parametrised tests; the sanitizer slows every kernel down a lot.
    compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
      "$PY" -m pytest -q -x -k "cuda" tests 2>&1 | tail -n 30 >"$OUT_DIR/sanitizer_$tool.log"
    rc=${PIPESTATUS[0]}
    record "compute-sanitizer $tool" "$([ "$rc" = 0 ] && echo clean || echo "FAILED rc=$rc")" \
      "$(grep -E 'ERROR SUMMARY|passed|failed' "$OUT_DIR/sanitizer_$tool.log" | tail -n 2 | tr '\n' ' ')"
  done
fi

for script in benchmarks/bench_*.py; do
  name=$(basename "$script" .py)
  "$PY" "$script" --device cuda ${QUICK:+--quick} --json "$OUT_DIR/$name.json" 2>&1 | tee "$OUT_DIR/$name.log"
  record "$name" "$([ "${PIPESTATUS[0]}" = 0 ] && echo ok || echo FAILED)" "$OUT_DIR/$name.json"
done

echo
echo "## gpu_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1), torch $("$PY" -c 'import torch; print(torch.__version__)'))"
printf '%s\n' "| step | result | detail |" "|---|---|---|" "${SUMMARY[@]}"
