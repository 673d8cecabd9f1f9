"""The tasks of the training engine (config key `task`). A task brings its model, whose forward
returns the loss terms ("loss" and "loss_<term>") and whose `param_groups(cfg)` gives the
optimizer groups, and its loader with a sampler that has `set_epoch(epoch, start_batch)`."""
from collections import namedtuple

Task = namedtuple("Task", "name build_model build_loader")

TASKS = ("retrieval", "pretrain")
# train.mode of the retrieval task (Table 2): query (QCD), ft (Siamese goods-video alignment), infer (no training)
TRAIN_MODES = ("query", "ft", "infer")


def get_task(name):
    if name == "retrieval":
        from datasets import build_train_loader
        from models import build_model

        return Task(name, build_model, build_train_loader)
    if name == "pretrain":
        from datasets import build_pretrain_loader
        from models import build_pretrain_model

        return Task(name, build_pretrain_model, build_pretrain_loader)
    raise ValueError(f"task={name!r}: expected one of {list(TASKS)}")
