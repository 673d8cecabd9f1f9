"""The training engine shared by the tasks of `task` (engine.tasks): `train(cfg)` runs or continues one run."""
import torch

from engine.tasks import TASKS, get_task
from engine.trainer import NonFiniteLoss, Trainer
from utils.config import ConfigError
from utils.distributed import amp_error, cleanup, init_distributed


def train(cfg, build_model=None):
    """Run (or continue) training as configured. Returns {"global_step", "checkpoint"}.

    `build_model(cfg)` replaces the task's model builder (tests wrap it to inject faults).
    """
    task = get_task(cfg["task"])
    if build_model is not None:
        task = task._replace(build_model=build_model)
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    rank, _, world_size, device = init_distributed(cfg)
    if device.type == "cuda":
        problem = amp_error(t["amp"], torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))
        if problem:
            cleanup()
            raise ConfigError(problem)
    try:
        return Trainer(cfg, task, rank, world_size, device).run()
    finally:
        cleanup()


__all__ = ["NonFiniteLoss", "TASKS", "Trainer", "train"]
