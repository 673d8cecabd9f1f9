#!/bin/sh
# Train with torchrun: sh train.sh [CONFIG] [key=value ...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node (and NPROC_PER_NODE
# to use fewer GPUs). Defaults: one node, one process per local GPU, or 2 CPU processes (gloo)
# when there is no GPU.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
CONFIG="${1:-configs/qcd_real400k.yaml}"
[ $# -gt 0 ] && shift
# the script runs from $ROOT: a config path relative to the caller's directory must be made absolute
# (one that does not exist there is taken relative to $ROOT)
case "$CONFIG" in
    /*) ;;
    *) if [ -e "$CONFIG" ]; then CONFIG="$(pwd)/$CONFIG"; fi ;;
esac

# $PYTHON (e.g. a conda env's python) wins over the repository's .venv, which wins over python on PATH
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

if [ -z "$NPROC_PER_NODE" ]; then
    NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if [ "$NGPU" -gt 0 ]; then NPROC_PER_NODE=$NGPU; else NPROC_PER_NODE=2; fi
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

cd "$ROOT"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    main_cross_domain_emb.py --config "$CONFIG" "$@"
