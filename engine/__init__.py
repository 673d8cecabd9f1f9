"""The training engine shared by the tasks of `task` (engine.tasks): `train(cfg)` runs or continues one run."""
import logging

import torch

from engine.run_dir import RunDirError, check_continuation, check_start, finished, lock_run_dir
from engine.tasks import get_task
from engine.trainer import NonFiniteLoss, Trainer, resolve_resume
from utils.checkpoint import TrainingCheckpoint
from utils.config import ConfigError
from utils.distributed import amp_error, cleanup, init_distributed
from utils.logging import LOGGER_NAME, setup_logger
from utils.preemption import StopSignals

log = logging.getLogger(LOGGER_NAME)


def train(cfg):
    """Run (or continue) training as configured. Returns {"global_step", "checkpoint", "preempted"}: preempted is
    the stop signal's name when SIGTERM, SIGUSR1 or SIGINT (to any rank) ended the run with a checkpoint.

    Nothing is written to output_dir before this run holds its lock and any checkpoint it would
    continue from is known to belong to it (engine.run_dir).
    """
    task = get_task(cfg["task"])
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    rank, _, world_size, device = init_distributed(cfg["dist_backend"])
    lock = None
    try:
        if device.type == "cuda":
            problem = amp_error(t["amp"], torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))
            if problem:
                raise ConfigError(problem)
        setup_logger(rank)
        lock = lock_run_dir(cfg["output_dir"], rank, world_size)
        path, state = resolve_resume(cfg["resume"], cfg["output_dir"], rank, world_size)
        check_start(cfg, path)
        if state is not None:
            state = TrainingCheckpoint.from_dict(state)
            check_continuation(state.config, cfg, path)
            if finished(state, cfg, world_size):
                log.info("%s is a finished run (global step %d, epoch %d of %d): nothing to do. To train on, "
                         "raise train.max_steps, or start another run in another output_dir", path,
                         state.global_step, state.epoch, t["epochs"])
                return {"global_step": state.global_step, "checkpoint": path, "preempted": None}
        setup_logger(rank, cfg["output_dir"])
        # before the loader's first iterator: its forked workers inherit the handlers and leave stopping to us
        with StopSignals() as stop:
            return Trainer(cfg, task, rank, world_size, device, path, state).run(stop)
    finally:
        if lock is not None:
            lock.release()
        cleanup()


__all__ = ["NonFiniteLoss", "RunDirError", "Trainer", "train"]
