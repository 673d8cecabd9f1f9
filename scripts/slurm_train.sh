#!/bin/sh
# Train on a SLURM cluster: one torchrun per node (srun), rendezvous on the first node of the job.
#   sbatch --nodes=4 --gres=gpu:8 --ntasks-per-node=1 --cpus-per-task=64 scripts/slurm_train.sh [CONFIG] [key=value ...]
# or inside an allocation (salloc): sh scripts/slurm_train.sh CONFIG ...
#SBATCH --job-name=qcd
#SBATCH --ntasks-per-node=1
#SBATCH --output=slurm-%j.out
set -e
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

# $PYTHON (e.g. a conda env's python) wins over the repository's .venv, which wins over python on PATH
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
# GPUs per node: SLURM_GPUS_ON_NODE when --gres/--gpus-per-node was given, else what torch sees
NPROC_PER_NODE="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 1)")}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="${MASTER_PORT:-29500}"

"$PYTHON" "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" --check "$@"
echo "nodes $NNODES x $NPROC_PER_NODE processes, rendezvous $MASTER_ADDR:$MASTER_PORT, config $CONFIG"
# one task per node; each task's torchrun starts NPROC_PER_NODE training processes
srun --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    "$ROOT/main_cross_domain_emb.py" --config "$CONFIG" "$@"
