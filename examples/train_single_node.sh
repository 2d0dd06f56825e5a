#!/usr/bin/env bash
# One node, all its GPUs (or CPU processes with gloo): torchrun starts one process per device.
#   examples/train_single_node.sh configs/tiny-demo.toml --parallel.tp=2
# NPROC defaults to the number of visible GPUs (1 without any); extra arguments go to `bessemer train`.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.toml [--section.key=value ...]}
shift
if command -v nvidia-smi >/dev/null 2>&1; then
  DEFAULT_NPROC=$(nvidia-smi --list-gpus | wc -l)
else
  DEFAULT_NPROC=1
fi
NPROC=${NPROC:-$DEFAULT_NPROC}

exec torchrun --standalone --nproc-per-node="$NPROC" \
  -m bessemer train --config "$CONFIG" "$@"
