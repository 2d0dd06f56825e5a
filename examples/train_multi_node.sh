#!/usr/bin/env bash
# Several nodes, static rendezvous: run this on every node with the same MASTER_ADDR/MASTER_PORT and that
# node's NODE_RANK (0 .. NNODES-1). Node 0's address must be reachable from all nodes on MASTER_PORT.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 examples/train_multi_node.sh configs/llama2-7b-pretrain.toml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 examples/train_multi_node.sh configs/llama2-7b-pretrain.toml
# No shared storage is needed for data: every rank computes the same sample order from the seed, so each
# node only needs its own copy of the prepared dataset at the same path. Checkpoints are written by every
# rank into train.out_dir: use a shared filesystem there (or the same path on each node, and gather them).
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.toml [--section.key=value ...]}
shift
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC=${NPROC:-$(nvidia-smi --list-gpus | wc -l)}

exec torchrun \
  --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC" \
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
  -m bessemer train --config "$CONFIG" "$@"
