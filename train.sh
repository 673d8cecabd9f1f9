#!/bin/sh
# Train with torchrun: sh train.sh [CONFIG] [key=value ...]
# Relative paths (CONFIG, output_dir=..., data.root=..., init_from=...) are taken from the directory you
# run this from; a CONFIG not found there is looked up in the repository (configs/...).
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node (and NPROC_PER_NODE
# to use fewer GPUs). Defaults: one node, one process per local GPU, or 2 CPU processes (gloo)
# when there is no GPU; on one node without MASTER_PORT, torchrun picks a free port itself.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
CONFIG="${1:-configs/qcd_real400k.yaml}"
[ $# -gt 0 ] && shift
case "$CONFIG" in
    /*) ;;
    *) if [ ! -e "$CONFIG" ] && [ -e "$ROOT/$CONFIG" ]; then CONFIG="$ROOT/$CONFIG"; fi ;;
esac

# $PYTHON (e.g. a conda env's python) wins over the repository's .venv, which wins over python on PATH
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

# the config and the files it names, in a second, before torchrun starts any worker
"$PYTHON" "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" --check "$@"

if [ -z "$NPROC_PER_NODE" ]; then
    NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if [ "$NGPU" -gt 0 ]; then NPROC_PER_NODE=$NGPU; else NPROC_PER_NODE=2; fi
fi
NNODES="${NNODES:-1}"
if [ "$NNODES" = 1 ] && [ -z "$MASTER_PORT" ]; then
    RDZV="--standalone"
else
    RDZV="--nnodes=$NNODES --node_rank=${NODE_RANK:-0} --master_addr=${MASTER_ADDR:-127.0.0.1} --master_port=${MASTER_PORT:-29500}"
fi
# shellcheck disable=SC2086  # RDZV holds several options
exec "$PYTHON" -m torch.distributed.run $RDZV --nproc_per_node="$NPROC_PER_NODE" \
    "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" "$@"
