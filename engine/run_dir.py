"""Who owns a run's output_dir, and whether a checkpoint there belongs to the run being started.

Rank 0 holds an exclusive `flock` on `<output_dir>/.lock` for the life of the run and writes its
host and pid into the file; a second run on the folder fails at once naming them. The kernel
drops the lock when its holder dies, so a lock left by a crashed run never blocks. On a file system
without flock (Lustre mounted without it raises ENOLCK or EOPNOTSUPP) the lock is instead the file
`<output_dir>/.lock.excl`, created with O_EXCL and holding the same details; one whose holder is a dead
process of this host is taken over, one of another host must be deleted by hand. A checkpoint
found by `resume` continues the run only if the new config differs from the checkpoint's in
RESUME_FREE_KEYS alone.
"""
import errno
import fcntl
import logging
import os
import socket
import time

from utils.config import ConfigError, flatten
from utils.distributed import from_rank0, pid_alive
from utils.logging import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

LOCK_NAME = ".lock"
EXCL_LOCK_NAME = ".lock.excl"  # the lock where flock is not supported

# Settings that may differ between a run and its continuation: where and how often it writes and
# logs, how long it goes on, how its work is spread over processes (a new world size or batch size
# keeps the share of the epoch done, see Trainer._renumber), where the data folder is mounted, the base
# lrs (a lower one continues the schedule from the resumed step: the advice for a non-finite loss) and
# everything of evaluation. init_from and init_strict only act on a run's first start.
RESUME_FREE_KEYS = ("resume", "output_dir", "config_path", "init_from", "init_strict", "dist_backend",
                    "data.root", "data.num_workers", "train.max_steps", "train.log_every", "train.threads",
                    "train.save_every_steps", "train.save_every_minutes", "train.keep_last", "train.batch_size",
                    "train.accum_steps", "train.find_unused_parameters", "train.lr", "train.lr_visual",
                    "train.lr_recon", "pretrain.lr_new")
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


def check_start(cfg, path):
    """What only the checkpoint found by resume decides (`path`: the one this run continues, None for a first
    start): pre-training stage 2 needs weights to start from, and init_from is not used on a continuation."""
    if path is None and cfg["task"] == "pretrain" and cfg["pretrain"]["stage"] == "2" and cfg["init_from"] is None:
        raise ConfigError(f"pretrain.stage=2 trains EPL on frozen towers, but no checkpoint to continue was found "
                          f"(resume={cfg['resume']}, output_dir={cfg['output_dir']}) and init_from is not set: set "
                          "init_from to a stage-1 checkpoint")
    if path is not None and cfg["init_from"] is not None:
        log.info("init_from=%s not used: this run continues %s (init_from only initialises a run's first start)",
                 cfg["init_from"], path)


def finished(state, cfg, world_size):
    """True when checkpoint `state` (a TrainingCheckpoint) is already at the end of `cfg`'s run. With another
    world or batch size the step count is renumbered first (Trainer._renumber), so only epochs decide."""
    t = cfg["train"]
    same_steps = (state.world_size, state.batch_size) == (world_size, t["batch_size"])
    return state.epoch >= t["epochs"] or bool(same_steps and t["max_steps"] and state.global_step >= t["max_steps"])


def _holder_is_dead(holder):
    """True when `holder` (the line a RunLock writes) names a process of this host that no longer exists."""
    parts = holder.split()
    if len(parts) < 4 or parts[0] != "host" or parts[1] != socket.gethostname() or not parts[3].isdigit():
        return False
    return not pid_alive(int(parts[3]))


class RunLock:
    """The exclusive lock on output_dir, taken by rank 0 and agreed on by every rank."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.excl_path = os.path.join(out_dir, EXCL_LOCK_NAME)
        self.fd = None
        self.excl_held = False

    @staticmethod
    def _details():
        return f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"

    def _in_use(self, holder, hint=""):
        return RunDirError(f"{os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to "
                           f"end or pick another output_dir{hint}")

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "a process that wrote no details"
            os.close(fd)
            raise self._in_use(holder) from None
        except OSError as e:
            os.close(fd)
            log.info("%s: flock is not supported on this file system (%s): locking with %s instead",
                     self.path, errno.errorcode.get(e.errno, e), self.excl_path)
            self._acquire_exclusive()
            return
        os.ftruncate(fd, 0)
        os.write(fd, self._details().encode())
        self.fd = fd

    def _acquire_exclusive(self):
        """The O_EXCL lock file: created by exactly one process; a stale one (dead local holder) is replaced once."""
        for _ in range(2):
            try:
                fd = os.open(self.excl_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.excl_path, encoding="utf-8", errors="replace") as f:
                        holder = f.read().strip()
                except FileNotFoundError:  # released meanwhile
                    continue
                if not _holder_is_dead(holder):
                    raise self._in_use(holder or "a process that wrote no details",
                                       f" (if that run is gone, delete {self.excl_path})") from None
                log.warning("%s: its holder (%s) is dead; taking the lock over", self.excl_path, holder)
                try:
                    os.remove(self.excl_path)
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, self._details().encode())
            finally:
                os.close(fd)
            self.excl_held = True
            return
        raise self._in_use(f"another process took {self.excl_path} at the same time")

    def release(self):
        # the flock file stays: deleting it could let two later runs lock two different files of one name
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self.excl_held:
            os.remove(self.excl_path)
            self.excl_held = False


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
