"""Data of the Real400K / Real20M layout (docs/DATA_FORMAT.md): parsing, datasets, sampler, loaders.

The names below are imported on first use, so `import datasets` (or `datasets.annotations`)
does not pull in torch, torchvision or transformers.
"""
import importlib

_EXPORTS = {
    "build_train_loader": "datasets.loader",
    "build_pretrain_loader": "datasets.loader",
    "build_eval_dataset": "datasets.loader",
    "collate_train": "datasets.loader",
    "collate_eval": "datasets.loader",
    "Tokenizer": "datasets.tokenizer",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
