#!/usr/bin/env bash
# GPU readiness in one command: every test marked `gpu`, then the GPU benchmarks (training MFU of a ~1B preset at
# seq 4096 in bf16 with compile, the same shape against transformers, 7B-shaped decode, masked attention).
# Each step's output goes to $OUT/<step>.log; its tail and status go to one summary file, $OUT/summary.txt.
#
#   benchmarks/gpu_suite.sh                 # PY=.venv/bin/python OUT=build/gpu_suite LIMIT=900 (s per step)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-build/gpu_suite}
LIMIT=${LIMIT:-900}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
failures=0

step() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$SUMMARY"
    local start status
    start=$(date +%s)
    if timeout "$LIMIT" "$@" >"$OUT/$name.log" 2>&1; then
        status=ok
    else
        status="FAILED (exit $?)"
        failures=$((failures + 1))
    fi
    tail -n 12 "$OUT/$name.log" >>"$SUMMARY"
    echo "-- $name: $status in $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
}

step device "$PY" -c "import torch; from bessemer import device as d; x = d.default_device(); \
print(torch.__version__, x, d.device_name(x), 'peak', d.peak_flops(x), 'backend', d.dist_backend(x))"
step tests "$PY" -m pytest -q -m gpu
step bench_mfu "$PY" -m bessemer bench --preset llama-1b --seq-len 4096 --batch 1 --dtype bfloat16 --compile \
    --steps 12 --warmup 4
step train_vs_hf "$PY" benchmarks/train_vs_hf.py --preset llama-1b --seq-len 4096 --batch 1 --dtype bfloat16 \
    --compile --steps 10 --warmup 4
step decode_7b "$PY" benchmarks/decode.py --preset llama2-7b --compile
step attention "$PY" benchmarks/attention.py

echo "$failures step(s) failed; summary in $SUMMARY" | tee -a "$SUMMARY"
exit $((failures > 0))
