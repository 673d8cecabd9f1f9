"""Process-group set-up for torchrun (env://), SLURM (one srun task per GPU) or a single process.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under plain
`srun python main_cross_domain_emb.py` the ranks come from SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID and MASTER_ADDR / MASTER_PORT must be exported by the batch script
(scripts/slurm_train.sh launches torchrun instead, so it takes the first path).
"""
import datetime
import gc
import json
import logging
import os
import re
import sys
import threading
import time

import torch
import torch.distributed as dist

from utils.preemption import EXIT_PREEMPTED

CLUSTER_ENV_HINT = "conda env create -f environment.yml (pins in requirements-cluster.txt)"


class UnsupportedGPU(RuntimeError):
    """The installed torch has no kernels for this GPU."""


def gpu_arch_error(capability, arch_list, torch_version):
    """Why a torch built for `arch_list` (e.g. ['sm_75', 'sm_80', 'compute_90']) cannot run on a GPU of
    compute capability (major, minor), in one line; None when it can. A cubin for sm_XY runs on GPUs of
    the same major version and a minor >= Y; PTX (compute_XY) is compiled on the fly for any GPU >= XY."""
    major, minor = capability
    sm = 10 * major + minor
    for kind, num in re.findall(r"(sm|compute)_(\d+)", " ".join(arch_list)):
        num = int(num)
        if (kind == "sm" and num // 10 == major and num <= sm) or (kind == "compute" and num <= sm):
            return None
    return (f"this GPU is sm_{sm} but torch {torch_version} has kernels only for {' '.join(arch_list) or 'no GPU'}: "
            f"install the cluster environment: {CLUSTER_ENV_HINT}")


def amp_error(amp, capability, gpu_name):
    """Why `train.amp` cannot be used on a GPU of compute capability (major, minor), or None (bf16 needs sm_80+)."""
    if amp == "bf16" and capability[0] < 8:
        return (f"train.amp=bf16: {gpu_name} (sm_{capability[0]}{capability[1]}) has no bfloat16 support; "
                "use train.amp=fp16 (loss scaling with a GradScaler), as on the paper's V100s")
    return None


def check_gpu(device):
    """Stop with one line when the installed torch has no kernels for `device`."""
    error = gpu_arch_error(torch.cuda.get_device_capability(device), torch.cuda.get_arch_list(), torch.__version__)
    if error:
        raise UnsupportedGPU(error)


def _ranks_from_env(env):
    """(rank, local_rank, world_size, source) found in the environment."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "torchrun"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]), "slurm"
    return 0, 0, 1, "single"


def pid_alive(pid):
    """True while a process of this pid exists on this host (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        return True
    return True


def watch_launcher(interval=2.0):
    """Stop this process when the launcher that started it (torchrun) dies, or the launch script above it
    (its pid in QCD_LAUNCH_PID: train.sh keeps running beside torchrun to turn stop signals into its exit
    code): a `kill -9` of either would otherwise leave the workers training, reparented to init. A daemon
    thread polls the pids (PR_SET_PDEATHSIG is not used: it fires when the parent *thread* that forked us
    ends)."""
    parent = os.getppid()
    script = int(os.environ["QCD_LAUNCH_PID"]) if os.environ.get("QCD_LAUNCH_PID") else None

    def watch():
        while os.getppid() == parent and (script is None or pid_alive(script)):
            time.sleep(interval)
        gone = parent if os.getppid() != parent else script
        sys.stderr.write(f"launcher (pid {gone}) is gone: stopping worker {os.getpid()}\n")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


# dist_backend: auto = nccl with CUDA, else gloo
BACKENDS = ("auto", "nccl", "gloo")

# what marks a job that was given GPUs: SLURM's variables for --gres/--gpus. CUDA_VISIBLE_DEVICES alone is not a
# sign (set to "" it is the usual way to run on the CPU), nor is nvidia-smi on the PATH (a CPU-only torch on a
# workstation with a GPU is a valid CPU run).
GPU_JOB_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


def gpu_job_marker(env):
    """The variable that says this job was given GPUs ('NAME=value'), or None."""
    for name in GPU_JOB_VARS:
        if env.get(name):
            return f"{name}={env[name]}"
    return None


def _no_cuda_reason():
    build = f"torch {torch.__version__} " + (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                                              else "is a CPU-only build")
    return (f"torch sees no CUDA device ({build}): check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or "
            f"install the cluster environment: {CLUSTER_ENV_HINT}")


def pick_backend(requested, cuda_available, gpu_job=None):
    """The process-group backend for dist_backend=`requested`. A GPU job that sees no GPU (`gpu_job`: what marks
    it, gpu_job_marker) raises UnsupportedGPU rather than falling back to CPU processes on gloo."""
    if requested == "nccl" and not cuda_available:
        raise UnsupportedGPU(f"dist_backend=nccl needs CUDA but {_no_cuda_reason()}; use gloo (or auto) on a "
                             "CPU machine")
    if requested == "auto" and not cuda_available and gpu_job:
        raise UnsupportedGPU(f"dist_backend=auto on a GPU job ({gpu_job}) but {_no_cuda_reason()}; "
                             "set dist_backend=gloo to run on CPU")
    if requested == "auto":
        return "nccl" if cuda_available else "gloo"
    return requested


def init_distributed(backend):
    """Join the process group the environment describes (if there is more than one process) with `backend`
    (dist_backend). Returns (rank, local_rank, world_size, device)."""
    env = os.environ
    rank, local_rank, world_size, source = _ranks_from_env(env)
    if source == "torchrun":
        watch_launcher()
    cuda = torch.cuda.is_available()
    backend = pick_backend(backend, cuda, gpu_job_marker(env))
    # plain srun may bind each task to its own GPU(s), so SLURM_LOCALID can exceed the visible devices
    gpu = local_rank % torch.cuda.device_count() if cuda and source == "slurm" else local_rank
    device = torch.device("cuda", gpu) if cuda else torch.device("cpu")
    if cuda:
        check_gpu(device)
        torch.cuda.set_device(device)
    if world_size > 1:
        if source == "slurm" and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
            raise RuntimeError("SLURM launch without torchrun: export MASTER_ADDR and MASTER_PORT before srun "
                               "(the first node of the job and a free port), or launch with scripts/slurm_train.sh, "
                               "which starts torchrun on each node")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=60),
                                device_id=device if backend == "nccl" else None)
    return rank, local_rank, world_size, device


def is_dist():
    return dist.is_available() and dist.is_initialized()


def from_rank0(value, world_size):
    """Rank 0's `value` on every rank (e.g. an error only rank 0 can see, so that all ranks stop together)."""
    if world_size == 1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def barrier():
    if is_dist():
        dist.barrier()


def cleanup():
    """Leave an NCCL process group. A gloo group stays until exit_process: destroying it can deadlock."""
    if is_dist() and dist.get_backend() != "gloo":
        dist.destroy_process_group()


def exit_process(code):
    """sys.exit(code); a process still in a gloo group flushes its output and logs, then skips the interpreter's
    teardown (os._exit). A gloo worker thread may still hold the last reference to a tensor that Python has let go
    of (the inputs of a finished all_gather_object, kept by the barrier queued after it) and takes the GIL to free
    it: destroy_process_group then deadlocks (the main thread holds the GIL while it joins that thread), and the
    teardown aborts ("terminate called without an active exception"). torch 2.7.1, two CPU ranks: destroying hung
    in 3 of 140 runs of tests/test_extract.py's worker; the teardown aborted one CI run of it."""
    if is_dist() and dist.get_backend() == "gloo":
        gc.collect()  # loader iterators caught in reference cycles stop their worker processes now
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def write_error_file(path, line, code):
    """Record a worker's one-line failure and its exit code in torchrun's error file (TORCHELASTIC_ERROR_FILE),
    for `torchrun`: the code too, as torchrun may stop the worker (SIGTERM) before it exits."""
    with open(path, "w", encoding="utf-8") as f:  # "message", "timestamp": what torchrun reads
        json.dump({"message": line, "timestamp": int(time.time()), "line": line, "exitcode": code}, f)


def failure_line(failures):
    """(the line, the exit code) that stand for the failed workers of a torchrun (rank -> ProcessFailure): the
    line of the lowest rank that wrote one (write_error_file); the preemption line when every rank stopped for a
    stop signal; else the exit of the lowest rank that failed (not one that stopped because of it)."""
    written = [r for r in sorted(failures) if "line" in failures[r].error_file_data]
    if not written and all(f.exitcode == EXIT_PREEMPTED for f in failures.values()):
        # a stop signal reached a worker, not the launcher: every rank stopped at one step with a checkpoint
        return ("preempted: a stop signal reached the workers; they stopped at a step boundary and wrote their "
                "checkpoint; run the same command with resume=auto to continue", EXIT_PREEMPTED)
    if written:
        failure = failures[written[0]]
        return failure.error_file_data["line"], failure.error_file_data["exitcode"]
    # the rank that failed, before those that exited or stopped because of it
    exited = ([r for r in sorted(failures) if failures[r].exitcode > 0 and failures[r].exitcode != EXIT_PREEMPTED]
              or [r for r in sorted(failures) if failures[r].exitcode > 0] or sorted(failures))
    rank, failure = exited[0], failures[exited[0]]
    how = (f"exited with code {failure.exitcode}" if failure.exitcode > 0
           else f"was stopped by {failure.signal_name()}")
    return f"error: worker rank {rank} {how}; its output above says why", max(failure.exitcode, 1)


def torchrun(argv):
    """torchrun in this process (argv: `-m torch.distributed.run` and its arguments, as the launch scripts pass
    them) -> the exit code. When workers fail it prints failure_line's line, and exits with their code (2 bad
    input, 1 a failed run), instead of torchrun's traceback of ChildFailedError and exit code 1. A stop signal
    to torchrun itself (which forwards it to the workers) exits 128 + the signal, without its traceback: the
    launch script that sent it ends with its own line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if argv[:2] != ["-m", "torch.distributed.run"]:
        raise SystemExit(f"usage: scripts/torchrun.py -m torch.distributed.run [torchrun arguments], got {argv[:2]}")
    try:
        run(parse_args(argv[2:]))
    except ChildFailedError as e:
        line, code = failure_line(e.failures)
        print(line, file=sys.stderr, flush=True)
        return code
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0
