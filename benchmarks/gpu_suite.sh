#!/usr/bin/env bash
# GPU readiness in one command: every test marked `gpu`, then the GPU benchmarks (training MFU of a ~1B preset at
# seq 4096 in bf16 with compile, the same shape against transformers, 7B-shaped decode, masked attention).
#
#   benchmarks/gpu_suite.sh                  # full sizes: about 40 minutes on one H100
#   QUICK=1 benchmarks/gpu_suite.sh          # fewer steps and tokens: fits one 10-minute device call (8 min budget)
#   STEPS="decode_7b" QUICK=1 ...            # only the named steps (device tests bench_mfu train_vs_hf attention
#                                            # decode_7b): a skipped step, in a second call
#   SMOKE=1 benchmarks/gpu_suite.sh          # tiny sizes on the CPU: every step starts and prints its figures
#   LIST=1 benchmarks/gpu_suite.sh           # print each step's command (tab-separated), run nothing
#
# Results go to $OUT (the device tool's folder, which comes back) or else build/gpu_suite: <step>.log for each
# step and summary.txt (each step's command, last lines, status and time), 8 files at most. Each step is cut at
# LIMIT seconds, and no step outlives BUDGET seconds from the start (later steps are then skipped, not run).
# PY: the python to use (default .venv/bin/python if there, else python3). On the lent GPU machine, whose python3
# lacks the server's packages, carry the wheels benchmarks/gpu_wheels.sh fetches (README, "On a lent GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${PY:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
RESULTS=${OUT:-build/gpu_suite}
if [[ -n ${SMOKE:-} ]]; then
    MODE=smoke BUDGET=${BUDGET:-1800} LIMIT=${LIMIT:-600}
elif [[ -n ${QUICK:-} ]]; then
    MODE=quick BUDGET=${BUDGET:-480} LIMIT=${LIMIT:-300}
else
    MODE=full BUDGET=${BUDGET:-2400} LIMIT=${LIMIT:-900}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
deadline=$(($(date +%s) + BUDGET))
failures=0
if [[ -z ${LIST:-} ]]; then
    mkdir -p "$RESULTS"
    SUMMARY="$RESULTS/summary.txt"
    echo "gpu_suite ($MODE, budget $BUDGET s, $LIMIT s a step) on $(hostname) at $(date -u +%FT%TZ)" | tee "$SUMMARY"
fi

# step NAME LIMIT COMMAND...: run COMMAND into $RESULTS/NAME.log within min(LIMIT, what is left of the budget)
step() {
    local name=$1 limit=$2
    shift 2
    if [[ -n ${STEPS:-} && " $STEPS " != *" $name "* ]]; then
        return 0
    fi
    if [[ -n ${LIST:-} ]]; then
        printf '%s' "$name"
        printf '\t%s' "$@"
        printf '\n'
        return 0
    fi
    local left=$((deadline - $(date +%s)))
    echo "== $name: $*" | tee -a "$SUMMARY"
    if ((left < 30)); then
        echo "-- $name: SKIPPED (budget of $BUDGET s spent)" | tee -a "$SUMMARY"
        failures=$((failures + 1))
        return 0
    fi
    ((limit > left)) && limit=$left
    local start status rc
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    case $rc in
    0) status=ok ;;
    124 | 137) status="TIMED OUT at $limit s" ;;
    *) status="FAILED (exit $rc)" ;;
    esac
    ((rc == 0)) || failures=$((failures + 1))
    tail -n 25 "$RESULTS/$name.log" | tee -a "$SUMMARY"
    echo "-- $name: $status in $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
}

# the test files that hold `gpu` tests (collecting them alone needs no package the GPU machine lacks)
mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'mark\.gpu\b' tests | sort)

case $MODE in
full)
    bench=(--preset llama-1b --seq-len 4096 --batch 1 --dtype bfloat16 --compile --steps 12 --warmup 4)
    vs_hf=(--preset llama-1b --seq-len 4096 --batch 1 --dtype bfloat16 --compile --steps 10 --warmup 4)
    decode=(--preset llama2-7b --compile --server)
    attention=()
    ;;
quick)
    bench=(--preset llama-1b --seq-len 4096 --batch 1 --dtype bfloat16 --compile --steps 8 --warmup 3)
    vs_hf=(--preset llama-1b --seq-len 4096 --batch 1 --dtype bfloat16 --compile --steps 6 --warmup 3)
    decode=(--preset llama2-7b --compile --new-tokens 128 --repeats 2 --server)
    attention=(--repeats 2)
    ;;
smoke)
    bench=(--preset tiny --seq-len 128 --batch 2 --dtype float32 --compile --steps 4 --warmup 2)
    vs_hf=(--preset tiny --seq-len 128 --batch 2 --dtype float32 --compile --steps 4 --warmup 2)
    decode=(--device cpu --preset tiny --compile --prompt-len 16 --new-tokens 8 --repeats 1 --server)
    attention=(--device cpu --seq 256 512 --window 128 --heads 2 --head-dim 16 --repeats 1)
    ;;
esac

# decode's --server needs packages the GPU machine lacks: benchmarks/gpu_wheels.sh fetches them for `carry`
if [[ -z ${LIST:-} ]] && ! "$PY" -c "import fastapi, uvicorn, mistral_common" 2>/dev/null; then
    kept=()
    for arg in "${decode[@]}"; do [[ $arg == --server ]] || kept+=("$arg"); done
    decode=("${kept[@]}")
    echo "decode_7b runs without --server: no fastapi/uvicorn/mistral-common (benchmarks/gpu_wheels.sh)" |
        tee -a "$SUMMARY"
fi

step device 60 "$PY" -c "import torch, transformers, bessemer.device as d; x = d.default_device(); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__); \
print(x, d.device_name(x), 'peak', d.peak_flops(x), 'memory', d.total_memory(x), 'backend', d.dist_backend(x))"
step tests "$LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m gpu "${gpu_tests[@]}"
step bench_mfu "$LIMIT" "$PY" -m bessemer bench "${bench[@]}"
step train_vs_hf "$LIMIT" "$PY" benchmarks/train_vs_hf.py "${vs_hf[@]}"
step attention "$LIMIT" "$PY" benchmarks/attention.py "${attention[@]}"
# last: the longest step (two 7B models, each compiled), alone in a second call if the budget runs out first
step decode_7b "$LIMIT" "$PY" benchmarks/decode.py "${decode[@]}"

if [[ -z ${LIST:-} ]]; then
    echo "gpu_suite: $failures step(s) failed or skipped; logs and summary.txt in $RESULTS" | tee -a "$SUMMARY"
fi
exit $((failures > 0))
