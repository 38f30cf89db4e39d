#!/usr/bin/env bash
# On a machine with a GPU and its own torch: build torchext there, run the CUDA tests, run a subset
# of them under compute-sanitizer (memcheck, racecheck), run every benchmark on the GPU, and print
# a short summary table last. On Hopper (sm_90) the Linear tests and bench_linear run a second time
# with TORCHEXT_GEMM=wgmma, the Hopper GEMM that runs only when asked until it has passed here.
#
# Everything runs inside one time budget (BUDGET_S seconds, default 540) so that a whole check fits
# one command with a 10-minute limit: each step gets its own cap or what is left of the budget,
# whichever is smaller, and a step that runs out of time is stopped and marked so. Logs, JSON and
# the summary (summary.md, rewritten after every step) go to OUT_DIR as they are produced, so a
# check cut short still leaves everything it measured.
#
#   bash benchmarks/gpu_check.sh                       # build, tests, sanitizer, bench
#   OUT_DIR=/some/dir BUDGET_S=300 bash benchmarks/gpu_check.sh build tests
#   QUICK=1 bash benchmarks/gpu_check.sh build bench   # smaller benchmark sizes
#
# The CPU tests are not repeated here (CI runs them); the CUDA-parametrised ones are all run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-$ROOT/benchmarks/out}"
BUDGET="${BUDGET_S:-540}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
START=$(date +%s)
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build tests sanitizer bench)
declare -a SUMMARY

wants() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
summary() {
  { echo "## gpu_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)," \
      "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null), $(( $(date +%s) - START )) s)"
    printf '%s\n' "| step | result | detail |" "|---|---|---|" "${SUMMARY[@]}"; } >"$OUT_DIR/summary.md"
}
record() { SUMMARY+=("| $1 | $2 | $3 |"); summary; }

# run NAME CAP LOG CMD...: CMD under the smaller of CAP and the budget left, output to LOG.
# Sets RC (124: stopped at its time limit, 125: not started for lack of time).
run() {
  local name=$1 cap=$2 log=$3 t
  shift 3
  t=$(left)
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 15 ]; then
    RC=125
    record "$name" "not run" "out of time budget"
    return
  fi
  echo "=== $name (up to $t s) -> $log"
  timeout --kill-after=10 "$t" "$@" >"$log" 2>&1
  RC=$?
}

verdict() {  # verdict RC: ok / FAILED / TIMED OUT
  case "$1" in 0) echo ok ;; 124|137) echo "TIMED OUT" ;; *) echo "FAILED rc=$1" ;; esac
}

if wants build; then
  # Build for the GPU that is present unless the caller chose archs.
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    export TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  fi
  t0=$(date +%s)
  run build 300 "$OUT_DIR/build.log" "$PY" -m pip install --no-build-isolation --no-deps -e .
  if [ "$RC" != 0 ]; then
    tail -n 40 "$OUT_DIR/build.log"
    record build "$(verdict "$RC")" "see build.log"
    cat "$OUT_DIR/summary.md"
    exit 1
  fi
  record build ok "$(( $(date +%s) - t0 )) s, archs $TORCH_CUDA_ARCH_LIST"
  "$PY" -m torchext.info | tee "$OUT_DIR/info.txt"
fi

if wants tests; then
  run "CUDA tests" 240 "$OUT_DIR/tests.log" \
    "$PY" -m pytest -q -rfE -p no:cacheprovider --durations=15 -k cuda tests
  result="$(verdict "$RC")"
  # Without a visible GPU every CUDA test skips, which must not read as a pass.
  grep -qE '[0-9]+ passed' "$OUT_DIR/tests.log" || result="NOTHING RAN (no GPU visible?)"
  record "CUDA tests" "$result" "$(grep -E '(passed|failed|skipped|error)' "$OUT_DIR/tests.log" | tail -n 1)"
  grep -E '^(FAILED|ERROR)' "$OUT_DIR/tests.log" | head -n 20
  # The Hopper GEMM (sm_90a) runs only when asked until it has passed here: its Linear tests again.
  if [ "$("$PY" -c 'import torch; print(torch.cuda.get_device_capability()[0])' 2>/dev/null)" = 9 ]; then
    run "CUDA Linear tests, TORCHEXT_GEMM=wgmma" 150 "$OUT_DIR/tests_wgmma.log" \
      env TORCHEXT_GEMM=wgmma "$PY" -m pytest -q -rfE -p no:cacheprovider -k "cuda and (linear or gemm)" \
      tests/test_linear.py tests/test_autograd_kernels.py tests/test_amp.py
    result="$(verdict "$RC")"
    grep -qE '[0-9]+ passed' "$OUT_DIR/tests_wgmma.log" || result="NOTHING RAN"
    record "CUDA Linear tests, wgmma" "$result" "$(grep -E '(passed|failed|skipped|error)' "$OUT_DIR/tests_wgmma.log" | tail -n 1)"
    grep -E '^(FAILED|ERROR)' "$OUT_DIR/tests_wgmma.log" | head -n 20
  fi
fi

if wants sanitizer; then
  if command -v compute-sanitizer >/dev/null; then
    # A subset: every kernel family once in each dtype, without the (slow, many-launch) gradchecks
    # and without the 4M-column Linear (its backward walks K = 4M in one block, which racecheck
    # alone would spend minutes on).
    # Errors are printed as they happen, so a run stopped at its limit still reports them.
    for spec in "memcheck 120 tests/test_relu.py tests/test_mse.py tests/test_linear.py tests/test_optim_adam.py tests/test_optim_sgd.py" \
                "racecheck 60 tests/test_linear.py tests/test_mse.py"; do
      set -- $spec
      tool=$1 cap=$2
      shift 2
      run "compute-sanitizer $tool" "$cap" "$OUT_DIR/sanitizer_$tool.log" \
        compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
        "$PY" -m pytest -v -p no:cacheprovider -k "cuda and not gradcheck and not gradgradcheck and not more_column_tiles" "$@"
      [ "$RC" = 125 ] && continue
      errors=$(grep -cE '^========= +(Invalid|Race|Error|Program hit|Uninitialized|Leaked)' "$OUT_DIR/sanitizer_$tool.log")
      tests_done=$(grep -cE ' (PASSED|FAILED|ERROR)' "$OUT_DIR/sanitizer_$tool.log")
      result="$([ "$errors" = 0 ] && [ "$RC" = 0 ] && echo clean || echo "$(verdict "$RC")")"
      [ "$errors" != 0 ] && result="ERRORS"
      record "compute-sanitizer $tool" "$result" "$errors sanitizer errors over $tests_done tests"
    done
  else
    record compute-sanitizer "not run" "compute-sanitizer not found"
  fi
fi

if wants bench; then
  # Most informative first: the goals name the optimizer and GEMM figures.
  for name in bench_optim bench_linear bench_relu_mse bench_e2e; do
    run "$name" 150 "$OUT_DIR/$name.log" \
      "$PY" "benchmarks/$name.py" --device cuda ${QUICK:+--quick} --json "$OUT_DIR/$name.json"
    [ "$RC" = 125 ] && continue
    record "$name" "$(verdict "$RC")" "$name.log, $name.json"
    if [ "$name" = bench_linear ]; then  # the same table with the Hopper GEMM asked for
      run "bench_linear, TORCHEXT_GEMM=wgmma" 150 "$OUT_DIR/bench_linear_wgmma.log" \
        env TORCHEXT_GEMM=wgmma "$PY" benchmarks/bench_linear.py --device cuda ${QUICK:+--quick} \
        --json "$OUT_DIR/bench_linear_wgmma.json"
      [ "$RC" != 125 ] && record "bench_linear, wgmma" "$(verdict "$RC")" "bench_linear_wgmma.log, .json"
    fi
  done
fi

echo
cat "$OUT_DIR/summary.md"
