#!/bin/sh
# Train on a SLURM cluster: one torchrun per node (srun), rendezvous on the first node of the job;
# `sh scripts/slurm_train.sh --help` lists the arguments, the environment variables and where the logs go.
#   sbatch --nodes=4 --gres=gpu:8 --cpus-per-task=72 scripts/slurm_train.sh [CONFIG] [key=value ...]
# --cpus-per-task: the processes of one node times (data.num_workers + 1): each of the 8 training processes
# loads with data.num_workers (8 in configs/qcd_real400k.yaml) DataLoader workers beside itself, so
# 8 x (8 + 1) = 72; with fewer CPUs lower data.num_workers (e.g. 64 CPUs: data.num_workers=7).
#SBATCH --job-name=qcd
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=72
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -e
for ARG in "$@"; do
    case "$ARG" in
        -h | --help)
            cat <<'USAGE'
usage: sbatch --nodes=N --gres=gpu:G --cpus-per-task=C scripts/slurm_train.sh [CONFIG] [key=value ...]
   or, inside an allocation (salloc): sh scripts/slurm_train.sh [CONFIG] [key=value ...]
  CONFIG        the run's config (default configs/qcd_real400k.yaml); relative paths are taken from the
                submit directory, a CONFIG not found there from the repository
  key=value     overrides of the config (as for train.sh)
  C             G x (data.num_workers + 1): each training process loads with data.num_workers workers
Logs: slurm-<job id>.out in the submit directory (appended to when the job is requeued); the training's own
files go to output_dir. 120 s before the time limit (or on preemption notice) SLURM sends USR1: the training
stops at the next step, rank 0 writes a checkpoint, and the job is requeued; a requeued job resumes with
resume=auto.
environment:
  NPROC_PER_NODE  training processes per node (default: the GPUs SLURM gives the node, else what torch sees)
  NNODES          not read: the job's nodes (SLURM_JOB_NUM_NODES), one torchrun on each
  MASTER_ADDR     not read: the rendezvous host is the first node of the job
  MASTER_PORT     the rendezvous port (default: 10000 + job id % 20000, so that jobs sharing a node differ)
  PYTHON          the interpreter (default: the activated virtualenv or conda env, else the checkout's .venv,
                  else python on PATH with torch; when none has torch, .venv is set up by scripts/setup_env.sh)
  QCD_ROOT        the repository, when not submitted from it
USAGE
            exit 0 ;;
    esac
done
if [ -z "$SLURM_JOB_ID" ]; then
    echo "scripts/slurm_train.sh: not inside a SLURM job (submit it with sbatch, or run it under salloc)" >&2
    exit 1
fi
# sbatch runs a copy of this script from the spool directory: find the repository from the submit directory
ROOT="${QCD_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}"
if [ ! -f "$ROOT/main_cross_domain_emb.py" ]; then
    echo "scripts/slurm_train.sh: $ROOT/main_cross_domain_emb.py not found: submit from the repository root, or" \
         "set QCD_ROOT to the repository (export QCD_ROOT=/path/to/repo before sbatch, or sbatch --export=ALL,QCD_ROOT=/path/to/repo)" >&2
    exit 1
fi
CONFIG="${1:-configs/qcd_real400k.yaml}"
[ $# -gt 0 ] && shift
# as in train.sh: relative paths are taken from the submit directory; a CONFIG not found there from $ROOT
case "$CONFIG" in
    /*) ;;
    *) if [ ! -e "$CONFIG" ] && [ -e "$ROOT/$CONFIG" ]; then CONFIG="$ROOT/$CONFIG"; fi ;;
esac
# a requeued job (SLURM_RESTART_COUNT > 0) continues from the last checkpoint in output_dir
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    set -- "$@" resume=auto
    echo "[slurm] job $SLURM_JOB_ID restarted ${SLURM_RESTART_COUNT} time(s): resume=auto"
fi

PYTHON="$(sh "$ROOT/scripts/setup_env.sh" --find-python)"
# the job decides the nodes and the rendezvous host (an NNODES or MASTER_ADDR exported for train.sh does not)
NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# one port per job: two jobs whose first node is the same do not meet in one rendezvous (below the
# ephemeral range, 32768 and up)
MASTER_PORT="${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}"

"$PYTHON" "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" --check "$@"
# the interpreter and its torch build (the wheel's metadata: no torch import)
TORCH_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" \
    || TORCH_VERSION="(version unknown)"
echo "[launch] python $PYTHON, torch $TORCH_VERSION"
# GPUs per node: SLURM_GPUS_ON_NODE when --gres/--gpus-per-node was given, else what torch sees
NPROC_PER_NODE="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 1)")}}"
echo "[slurm] job $SLURM_JOB_ID: nodes $NNODES x $NPROC_PER_NODE processes," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT, config $CONFIG"

# USR1 (--signal=B:USR1@120) reaches only this shell. It is passed on as SIGTERM to the job's steps (scancel
# signals every process of them, not this shell): torchrun does not handle USR1 and would die of it, while on
# SIGTERM it and the training processes stop at the next step with a checkpoint. Once they have exited, the
# job is requeued (scontrol requeue) and starts again with resume=auto.
PREEMPTED=0
TRAPPED=0
on_usr1() {
    TRAPPED=1
    if [ "$PREEMPTED" = 0 ]; then
        PREEMPTED=1
        echo "[slurm] USR1: the job ends soon; stopping the training at the next step," \
             "then requeueing job $SLURM_JOB_ID"
        scancel --signal=TERM "$SLURM_JOB_ID" || true
    fi
}
trap on_usr1 USR1
# srun does not inherit --cpus-per-task from sbatch (Slurm 22.05 and later): pass it on
CPUS=""
[ -n "$SLURM_CPUS_PER_TASK" ] && CPUS="--cpus-per-task=$SLURM_CPUS_PER_TASK"
# scripts/torchrun.py: a failure of the workers ends with their one error line and their exit code
# one task per node; each task's torchrun starts NPROC_PER_NODE training processes
# shellcheck disable=SC2086  # CPUS is one option or none
srun --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 $CPUS \
    "$PYTHON" "$ROOT/scripts/torchrun.py" -m torch.distributed.run \
    --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" "$@" &
SRUN_PID=$!
# a trapped signal interrupts wait (status > 128) while srun still runs: wait again for its own exit status
while :; do
    STATUS=0
    wait "$SRUN_PID" || STATUS=$?
    if [ "$STATUS" -gt 128 ] && [ "$TRAPPED" = 1 ]; then
        TRAPPED=0
        continue
    fi
    break
done
if [ "$PREEMPTED" = 1 ] && [ "$STATUS" != 0 ]; then
    echo "[slurm] training stopped (exit $STATUS): requeueing job $SLURM_JOB_ID; it resumes with resume=auto"
    scontrol requeue "$SLURM_JOB_ID" \
        || echo "[slurm] could not requeue job $SLURM_JOB_ID: submit it again with resume=auto" >&2
fi
exit "$STATUS"
