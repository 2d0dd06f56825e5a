#!/usr/bin/env bash
# Downloads, here, the wheels that benchmarks/gpu_suite.sh needs and the lent GPU machine's python3 lacks, into
# .whl/ (ignored by git), for the device tool's `carry`. That machine has Python 3.12 on x86-64 with torch 2.11,
# transformers, tokenizers, safetensors, numpy, pytest, hypothesis, httpx, psutil, jinja2, sentencepiece ... but
# nothing below, and it cannot fetch anything. Only `decode.py --server` needs them (the other steps import
# nothing the machine lacks); each is fetched with --no-deps, so every dependency it needs there is named here.
#
#   benchmarks/gpu_wheels.sh          # then, in the device call: carry [".whl"] and start the command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site || exit; QUICK=1 benchmarks/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=(
    # the OpenAI-compatible server (bessemer.infer.server) and the client side of the benchmark
    fastapi==0.165.0
    starlette==1.10.0
    opentelemetry-api==1.45.2 # fastapi imports it at start-up
    annotated-types==0.8.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    typing-inspection==0.4.5
    typing-extensions==4.16.0 # pydantic 2.14 needs >= 4.16; newer than the machine's is harmless to the rest
    uvicorn==0.54.0
    # the demo tokenizer the server benchmark encodes with (Mistral-7B's sentencepiece model, a data file:
    # only the package's __init__ is imported, so none of its own dependencies is needed)
    mistral-common==1.13.1
)
# 64 MiB travel with a device call: the working tree, .whl and any other carried path together
MAX_BYTES=$((24 * 2 ** 20))

rm -rf .whl
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${WHEELS[@]}"
count=$(find .whl -type f -name '*.whl' | wc -l)
if ((count != ${#WHEELS[@]})); then
    echo "gpu_wheels: expected ${#WHEELS[@]} wheels in .whl, found $count" >&2
    exit 1
fi
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "gpu_wheels: $count wheels, $((bytes / 1024)) KiB in .whl; tracked files $((tree / 1024)) KiB (64 MiB limit in all)"
if ((bytes > MAX_BYTES)); then
    echo "gpu_wheels: .whl is over $((MAX_BYTES / 2 ** 20)) MiB; the device tool carries 64 MiB with the tree" >&2
    exit 1
fi
