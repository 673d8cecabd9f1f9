"""Who owns a run's output_dir, and whether a checkpoint there belongs to the run being started.

Rank 0 holds an exclusive `flock` on `<output_dir>/.lock` for the life of the run and writes its
host and pid into the file; a second run on the folder fails at once naming them. The kernel
drops the lock when its holder dies, so a lock left by a crashed run never blocks. A checkpoint
found by `resume` continues the run only if the new config differs from the checkpoint's in
RESUME_FREE_KEYS alone.
"""
import fcntl
import logging
import os
import socket
import time

from utils.config import flatten
from utils.distributed import from_rank0
from utils.logging import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

LOCK_NAME = ".lock"

# Settings that may differ between a run and its continuation: where and how often it writes and
# logs, how long it goes on, how its work is spread over processes (a new world size or batch size
# keeps the share of the epoch done, see Trainer._renumber), where the data folder is mounted, and
# everything of evaluation. init_from and init_strict only act on a run's first start.
RESUME_FREE_KEYS = ("resume", "output_dir", "config_path", "init_from", "init_strict", "dist_backend",
                    "data.root", "data.num_workers", "train.max_steps", "train.log_every", "train.threads",
                    "train.save_every_steps", "train.keep_last", "train.batch_size", "train.find_unused_parameters")
RESUME_FREE_PREFIXES = ("eval.",)


class RunDirError(RuntimeError):
    """output_dir is in use, or holds a run this one cannot continue."""


def _free(key):
    return key in RESUME_FREE_KEYS or key.startswith(RESUME_FREE_PREFIXES)


def config_changes(old, new):
    """'key: old -> new' for each setting outside RESUME_FREE_KEYS that both configs have and that differs."""
    a, b = dict(flatten(old)), dict(flatten(new))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k] and not _free(k)]


def version_changes(old, new):
    """Settings in only one of two configs: the checkpoint was written by another version of the code."""
    a, b = dict(flatten(old)), dict(flatten(new))
    return sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def check_continuation(old_cfg, cfg, path):
    """Raise RunDirError listing the settings in which `cfg` differs from the config of checkpoint `path`."""
    gone, added = version_changes(old_cfg, cfg)
    if gone or added:
        log.warning("%s was written by another version of this code: settings only in the checkpoint: %s; only in "
                    "this version: %s", path, ", ".join(gone) or "none", ", ".join(added) or "none")
    changes = config_changes(old_cfg, cfg)
    if changes:
        raise RunDirError(
            f"{path} was written by a run with other settings:\n  " + "\n  ".join(changes) +
            f"\nPick another output_dir, or pass resume=null to start afresh in {cfg['output_dir']} (its step "
            "checkpoints are then renamed *.superseded). Settings that may change on resume: "
            + ", ".join(RESUME_FREE_KEYS + tuple(p + "*" for p in RESUME_FREE_PREFIXES)))


def finished(state, cfg, world_size):
    """True when checkpoint `state` (a TrainingCheckpoint) is already at the end of `cfg`'s run. With another
    world or batch size the step count is renumbered first (Trainer._renumber), so only epochs decide."""
    t = cfg["train"]
    same_steps = (state.world_size, state.batch_size) == (world_size, t["batch_size"])
    return state.epoch >= t["epochs"] or bool(same_steps and t["max_steps"] and state.global_step >= t["max_steps"])


class RunLock:
    """The exclusive lock on output_dir, taken by rank 0 and agreed on by every rank."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.fd = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "a process that wrote no details"
            os.close(fd)
            raise RunDirError(f"{os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to "
                              "end or pick another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self.fd = fd

    def release(self):
        # the file stays: deleting it could let two later runs lock two different files of one name
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_run_dir(out_dir, rank, world_size):
    """Rank 0 takes the lock; every rank raises the same RunDirError when it is taken. Returns the RunLock."""
    lock, error = RunLock(out_dir), None
    if rank == 0:
        try:
            lock.acquire()
        except RunDirError as e:
            error = str(e)
    error = from_rank0(error, world_size)
    if error:
        raise RunDirError(error)
    return lock
