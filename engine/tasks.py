"""The tasks of the training engine (config key `task`). A task brings its model, whose forward
returns the loss terms ("loss" and "loss_<term>") and whose `param_groups()` names the optimizer
groups (engine.trainer.build_optimizer gives each its rate), and its loader with a sampler that
has `set_epoch(epoch, start_batch)`."""
from collections import namedtuple

from datasets import build_pretrain_loader, build_train_loader
from models import build_model, build_pretrain_model

Task = namedtuple("Task", "name build_model build_loader")

TASKS = {
    "retrieval": Task("retrieval", build_model, build_train_loader),
    "pretrain": Task("pretrain", build_pretrain_model, build_pretrain_loader),
}
# train.mode of the retrieval task (Table 2): query (QCD), ft (Siamese goods-video alignment), infer (no training)
TRAIN_MODES = ("query", "ft", "infer")


def get_task(name):
    """The Task of config key `task` (engine.checks validates the name)."""
    return TASKS[name]
