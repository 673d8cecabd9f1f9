#!/bin/sh
# Video2goods evaluation: sh video2goods_evaluate.sh CKPT [CONFIG] [key=value ...]; `--help` lists the
# arguments and the environment variables. goods2video_evaluate.sh runs this script with
# EVAL_DIRECTION=goods2video.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
DIRECTION="${EVAL_DIRECTION:-video2goods}"
NAME="${EVAL_SCRIPT:-$(basename "$0")}"
USAGE="usage: sh $NAME CKPT [CONFIG] [key=value ...] [--check]   (CKPT: the checkpoint to evaluate, or null)"
for ARG in "$@"; do
    case "$ARG" in
        -h | --help)
            cat <<HELP
$USAGE
  CKPT        checkpoint to evaluate; null: no checkpoint (the released weights of model.backbone.pretrained,
              as the -infer rows of Table 2 want, and fresh modules)
  CONFIG      the config (default configs/qcd_real400k.yaml); a relative path is taken from the directory you
              run this from, else from the repository (configs/...)
  key=value   overrides of the config, e.g. data.root=/data/qcd eval.feature=all (relative paths are the caller's)
  --check     only check the config and the files it names, then stop
torchrun extracts the query and the gallery features ($DIRECTION, sharded over the processes), then rank 0
searches with faiss and prints R@1/5/10/20/50/100 (eval.topk); results.json and page.html go to eval.out_dir (default
<output_dir>/eval/$DIRECTION/<feature>). The config and the files it names are checked before torchrun starts.
environment:
  NPROC_PER_NODE  processes on this node (default: one per local GPU, or 1 on CPU)
  NNODES          nodes (default 1); several nodes: set NODE_RANK, MASTER_ADDR, MASTER_PORT on each
  NODE_RANK       this node's rank (default 0)
  MASTER_ADDR     the rendezvous host (default 127.0.0.1)
  MASTER_PORT     the rendezvous port (default 29511 on several nodes; on one node without it, torchrun picks
                  a free port itself)
  PYTHON          the interpreter (default: the activated virtualenv or conda env, else the checkout's .venv,
                  else python on PATH with torch; when none has torch, .venv is set up by scripts/setup_env.sh)
HELP
            exit 0 ;;
    esac
done
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
PYTHON="$(sh "$ROOT/scripts/setup_env.sh" --find-python)"
"$PYTHON" "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" --evaluate --check \
    "eval.checkpoint=$CKPT" "eval.direction=$DIRECTION" "$@"
case " $* " in *" --check "*) exit 0 ;; esac
# the interpreter and its torch build (the wheel's metadata: no torch import)
TORCH_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" \
    || TORCH_VERSION="(version unknown)"
echo "[launch] python $PYTHON, torch $TORCH_VERSION"
if [ -z "$NPROC_PER_NODE" ]; then
    NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
NNODES="${NNODES:-1}"
if [ "$NNODES" = 1 ] && [ -z "$MASTER_PORT" ]; then
    RDZV="--standalone"
else
    RDZV="--nnodes=$NNODES --node_rank=${NODE_RANK:-0} --master_addr=${MASTER_ADDR:-127.0.0.1} --master_port=${MASTER_PORT:-29511}"
fi
# scripts/torchrun.py: a failure of the workers ends with their one error line and their exit code
# shellcheck disable=SC2086  # RDZV holds several options
exec "$PYTHON" "$ROOT/scripts/torchrun.py" -m torch.distributed.run $RDZV --nproc_per_node="$NPROC_PER_NODE" \
    "$ROOT/evaluation.py" run --config "$CONFIG" "eval.checkpoint=$CKPT" "eval.direction=$DIRECTION" "$@"
