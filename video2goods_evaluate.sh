#!/bin/sh
# Video2goods evaluation: sh video2goods_evaluate.sh CKPT [CONFIG] [key=value ...]
#   CKPT    checkpoint to evaluate (`null`: untrained weights); CONFIG defaults to configs/qcd_real400k.yaml.
# torchrun extracts the query and the gallery features (sharded over the processes), then rank 0
# searches with faiss and prints R@10/20/50/100; results.json and page.html go to eval.out_dir
# (default <output_dir>/eval/<direction>/<feature>). Processes: NPROC_PER_NODE (default: every local
# GPU, or 1 on CPU); several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as for torchrun.
# goods2video_evaluate.sh runs this script with EVAL_DIRECTION=goods2video.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
DIRECTION="${EVAL_DIRECTION:-video2goods}"
if [ $# -lt 1 ]; then
    echo "usage: sh $(basename "$0") CKPT [CONFIG] [key=value ...]" >&2
    exit 2
fi
CKPT="$1"
shift
CONFIG="$ROOT/configs/qcd_real400k.yaml"
case "${1:-}" in
    "" | *=*) ;;
    *) CONFIG="$1"; shift ;;
esac
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
if [ -z "$NPROC_PER_NODE" ]; then
    NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
cd "$ROOT"
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --nproc_per_node="$NPROC_PER_NODE" --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29511}" \
    evaluation.py run --config "$CONFIG" "eval.checkpoint=$CKPT" "eval.direction=$DIRECTION" "$@"
