#!/bin/sh
# Video2goods evaluation: sh video2goods_evaluate.sh CKPT [CONFIG] [key=value ...]
#   CKPT    checkpoint to evaluate (`null`: no checkpoint: the released weights of model.backbone.pretrained,
#           as the -infer rows of Table 2 want, and fresh modules); CONFIG defaults to configs/qcd_real400k.yaml.
# Relative paths are taken from the directory you run this from (a CONFIG not found there is looked up
# in the repository). torchrun extracts the query and the gallery features (sharded over the processes),
# then rank 0 searches with faiss and prints R@10/20/50/100; results.json and page.html go to eval.out_dir
# (default <output_dir>/eval/<direction>/<feature>). Processes: NPROC_PER_NODE (default: every local
# GPU, or 1 on CPU); several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as for torchrun (on one
# node without MASTER_PORT, torchrun picks a free port itself).
# goods2video_evaluate.sh runs this script with EVAL_DIRECTION=goods2video.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
DIRECTION="${EVAL_DIRECTION:-video2goods}"
NAME="${EVAL_SCRIPT:-$(basename "$0")}"
USAGE="usage: sh $NAME CKPT [CONFIG] [key=value ...]   (CKPT: the checkpoint to evaluate, or null)"
if [ $# -lt 1 ]; then
    echo "$USAGE" >&2
    exit 2
fi
CKPT="$1"
shift
case "$CKPT" in
    *.yaml | *.yml | *=*)
        echo "$NAME: the first argument must be the checkpoint to evaluate (or null), got '$CKPT'" >&2
        echo "$USAGE" >&2
        exit 2 ;;
esac
CONFIG="$ROOT/configs/qcd_real400k.yaml"
case "${1:-}" in
    "" | *=*) ;;
    *) CONFIG="$1"; shift ;;
esac
case "$CONFIG" in
    /*) ;;
    *) if [ ! -e "$CONFIG" ] && [ -e "$ROOT/$CONFIG" ]; then CONFIG="$ROOT/$CONFIG"; fi ;;
esac
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
"$PYTHON" "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" --evaluate --check \
    "eval.checkpoint=$CKPT" "eval.direction=$DIRECTION" "$@"
if [ -z "$NPROC_PER_NODE" ]; then
    NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
NNODES="${NNODES:-1}"
if [ "$NNODES" = 1 ] && [ -z "$MASTER_PORT" ]; then
    RDZV="--standalone"
else
    RDZV="--nnodes=$NNODES --node_rank=${NODE_RANK:-0} --master_addr=${MASTER_ADDR:-127.0.0.1} --master_port=${MASTER_PORT:-29511}"
fi
# shellcheck disable=SC2086  # RDZV holds several options
exec "$PYTHON" -m torch.distributed.run $RDZV --nproc_per_node="$NPROC_PER_NODE" \
    "$ROOT/evaluation.py" run --config "$CONFIG" "eval.checkpoint=$CKPT" "eval.direction=$DIRECTION" "$@"
