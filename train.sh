#!/bin/sh
# Train with torchrun: sh train.sh [CONFIG] [key=value ...]; `sh train.sh --help` lists the arguments and
# the environment variables.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
for ARG in "$@"; do
    case "$ARG" in
        -h | --help)
            cat <<'USAGE'
usage: sh train.sh [CONFIG] [key=value ...] [--check]
  CONFIG        the run's config (default configs/qcd_real400k.yaml); a relative path is taken from the
                directory you run this from, else from the repository (configs/...)
  key=value     overrides of the config, e.g. output_dir=runs/a data.root=/data/qcd train.max_steps=100
                (relative paths are the caller's, as CONFIG's)
  --check       only check the config and the files it names, then stop
The config and the files it names are checked in seconds before torchrun starts any worker.
environment:
  NPROC_PER_NODE  processes on this node (default: one per local GPU, or 2 CPU processes on gloo)
  NNODES          nodes of the run (default 1); several nodes: set NODE_RANK, MASTER_ADDR, MASTER_PORT on each
  NODE_RANK       this node's rank (default 0)
  MASTER_ADDR     the rendezvous host (default 127.0.0.1)
  MASTER_PORT     the rendezvous port (default 29500 on several nodes; on one node without it, torchrun
                  picks a free port itself)
  PYTHON          the interpreter (default: the activated virtualenv or conda env, else the checkout's .venv,
                  else python on PATH with torch; when none has torch, .venv is set up by scripts/setup_env.sh)
On a SLURM cluster use scripts/slurm_train.sh (sh scripts/slurm_train.sh --help).
USAGE
            exit 0 ;;
    esac
done
CONFIG="${1:-configs/qcd_real400k.yaml}"
[ $# -gt 0 ] && shift
case "$CONFIG" in
    /*) ;;
    *) if [ ! -e "$CONFIG" ] && [ -e "$ROOT/$CONFIG" ]; then CONFIG="$ROOT/$CONFIG"; fi ;;
esac

PYTHON="$(sh "$ROOT/scripts/setup_env.sh" --find-python)"

# the config and the files it names, in a second, before torchrun starts any worker
"$PYTHON" "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" --check "$@"
case " $* " in *" --check "*) exit 0 ;; esac
# the interpreter and its torch build (the wheel's metadata: no torch import)
TORCH_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" \
    || TORCH_VERSION="(version unknown)"
echo "[launch] python $PYTHON, torch $TORCH_VERSION"

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
# torchrun in the background, so that a stop request (SLURM's TERM, USR1, Ctrl-C) reaches it as the TERM it
# forwards to the workers (USR1 would kill torchrun itself): they checkpoint at the next step and exit 75
PREEMPTED=
QCD_LAUNCH_PID=$$  # the workers stop if this script is killed (utils.distributed.watch_launcher)
export QCD_LAUNCH_PID
# scripts/torchrun.py: a failure of the workers ends with their one error line and their exit code
# shellcheck disable=SC2086  # RDZV holds several options
"$PYTHON" "$ROOT/scripts/torchrun.py" -m torch.distributed.run $RDZV --nproc_per_node="$NPROC_PER_NODE" \
    "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" "$@" &
PID=$!
trap 'PREEMPTED=1; kill -TERM "$PID" 2>/dev/null' TERM INT USR1
set +e
wait "$PID"
RC=$?
while kill -0 "$PID" 2>/dev/null; do wait "$PID"; RC=$?; done  # a trapped signal ends the first wait early
set -e
if [ -n "$PREEMPTED" ]; then
    echo "[launch] preempted: the run stopped at a step boundary and wrote its checkpoint; run the same command with resume=auto to continue" >&2
    exit 75
fi
exit "$RC"
