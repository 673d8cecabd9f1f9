"""Builders of the training loader and the evaluation dataset from a config, and their collates."""
import functools
import logging
import os

import torch
from torch.utils.data import default_collate

from datasets.annotations import DatasetPaths
from datasets.batch import ITEM_KEYS, PAIR_VIDEO_KEYS, TRAIN_KEYS
from datasets.eval_dataset import EvalDataset
from datasets.families import build_tokenizer, image_stats
from datasets.packed import open_store
from datasets.sampler import DomainBatchSampler, ItemBatchSampler, PairBatchSampler
from datasets.train_dataset import TrainDataset
from datasets.train_index import load_train_index
from datasets.translations import Translations, english_queries_file
from utils.distributed import barrier
from utils.seed import seed_everything

logger = logging.getLogger(__name__)


def _stack(tensors):
    """torch.stack, into shared memory when called in a DataLoader worker (default_collate does that), so the
    batch is not copied again to be sent to the main process."""
    return default_collate(tensors)


def collate_train(samples):
    """Training samples of one domain -> the batch dict of the data contract."""
    domains = {s["domain"] for s in samples}
    if len(domains) != 1:
        raise ValueError(f"a training batch must be domain-pure, got domains {sorted(domains)}")
    batch = {key: _stack([s[key] for s in samples]) for key in TRAIN_KEYS}
    batch["domain"] = domains.pop()
    batch["pids"] = torch.tensor([s["pid"] for s in samples], dtype=torch.long)
    batch["query_index"] = torch.tensor([s["query_index"] for s in samples], dtype=torch.long)
    batch["epoch"] = samples[0]["epoch"]  # one epoch per batch: the sampler plans epoch by epoch
    return batch


def collate_pairs(samples):
    """train.mode=ft: goods samples then the micro-videos of the same queries (datasets.sampler.PairBatchSampler)
    -> the goods item under ITEM_KEYS, the video under PAIR_VIDEO_KEYS, and `pair_valid`: False where an
    unreadable item was replaced by one of another query, so the row is no longer a pair."""
    half = len(samples) // 2
    goods, videos = samples[:half], samples[half:]
    batch = {key: _stack([s[key] for s in goods]) for key in ITEM_KEYS}
    batch.update({pkey: _stack([s[key] for s in videos]) for key, pkey in zip(ITEM_KEYS, PAIR_VIDEO_KEYS)})
    batch["pair_valid"] = torch.tensor([g["query_index"] == v["query_index"] for g, v in zip(goods, videos)])
    batch["query_index"] = torch.tensor([g["query_index"] for g in goods], dtype=torch.long)
    batch["epoch"] = samples[0]["epoch"]
    return batch


def preprocessing(cfg):
    """The dataset arguments that follow the backbone family and data.preprocess: its tokenizer, the pixel
    profile with its statistics and, for an English-text family, its English texts (datasets.translations)."""
    family, pretrained = cfg["model"]["family"], cfg["model"]["backbone"]["pretrained"]
    preprocess = cfg["data"]["preprocess"]
    return {"make_tokenizer": functools.partial(build_tokenizer, family, pretrained), "preprocess": preprocess,
            "image_stats": image_stats(family, pretrained, preprocess),
            "translations": Translations.for_family(family, cfg["data"])}


def data_store(data, paths):
    """The reader of the item files by data.format (datasets.packed): their folders, or data.lmdb_root."""
    return open_store(data["format"], paths, data["lmdb_root"])


def fast_decode(data, training):
    """data.fast_decode, whose null means on for training and off for evaluation."""
    return training if data["fast_decode"] is None else data["fast_decode"]


def collate_eval(items):
    """Evaluation items -> dict of frames [B,T,3,H,W], text_ids/text_mask [B,Lt], pid and index LongTensor[B]."""
    lengths = {item["frames"].shape[0] for item in items}
    if len(lengths) != 1:
        raise ValueError(f"an evaluation batch mixes clips of {sorted(lengths)} frames: keep one domain per list")
    batch = {key: _stack([item[key] for item in items]) for key in ITEM_KEYS}
    batch["pid"] = torch.tensor([item["pid"] for item in items], dtype=torch.long)
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    return batch


class _SeedWorker:
    """worker_init_fn: worker w of rank r seeds python, numpy and torch with seed + r + w."""

    def __init__(self, seed):
        self.seed = seed

    def __call__(self, worker_id):
        seed_everything(self.seed + worker_id)
        torch.set_num_threads(1)  # the workers already share the cores between them


def build_train_loader(cfg, rank, world_size, sampler_class=None):
    """-> (DataLoader of domain-pure batches for this rank, its sampler): one sample per query and
    epoch (retrieval), one goods-video pair per query with both (train.mode=ft), or with ItemBatchSampler
    every item once per epoch (pre-training)."""
    pairs = sampler_class is None and cfg["train"]["mode"] == "ft"
    if sampler_class is None:
        sampler_class = PairBatchSampler if pairs else DomainBatchSampler
    data = cfg["data"]
    paths = DatasetPaths.from_config(data)
    paths.require(paths.train_file)
    # rank 0 builds the index (if its cache is absent) while the others wait, then they map the same files;
    # the cache sits beside the training file (shared by later runs) unless that folder, or its cache folder,
    # is read-only: then in the output folder
    fallback = os.path.join(cfg["output_dir"], "train_index")
    writable = os.access(os.path.dirname(os.path.abspath(paths.train_file)), os.W_OK)
    cache_dir = None if writable else fallback
    english = english_queries_file(data)
    if rank == 0:
        entries = load_train_index(paths.train_file, cache_dir, english, fallback)
    barrier()
    if rank != 0:
        entries = load_train_index(paths.train_file, cache_dir, english, fallback)
    sampler = sampler_class(entries, cfg["train"]["batch_size"], rank, world_size, seed=cfg["seed"])
    if data["preprocess"] == "authors" and rank == 0:
        logger.info("data.preprocess=authors: training frames are squashed whole to %d px (PIL nearest) and flipped, "
                    "as the authors' loader computes them; data.crop_scale is not used", data["image_size"])
    if pairs and rank == 0:
        logger.info("train.mode=ft: %d of %d queries have goods and micro-videos, one pair each per epoch; "
                    "%d with one domain only are skipped", len(entries) - sampler.skipped_queries, len(entries),
                    sampler.skipped_queries)
    dataset = TrainDataset(
        paths, entries, num_frames=data["num_frames"], image_size=data["image_size"],
        query_max_len=data["query_max_len"], text_max_len=data["text_max_len"], crop_scale=data["crop_scale"],
        frame_source=data["frame_source"], seed=cfg["seed"], title_aug_prob=data["title_aug_prob"],
        video_text_keep_prob=data["video_text_keep_prob"], store=data_store(data, paths),
        fast_decode=fast_decode(data, training=True), **preprocessing(cfg))
    workers = data["num_workers"]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_pairs if pairs else collate_train, num_workers=workers,
        worker_init_fn=_SeedWorker(cfg["seed"] + rank),
        # its own generator for the workers' base seed, so starting an epoch leaves the global RNG alone
        generator=torch.Generator().manual_seed(cfg["seed"] + rank),
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    return loader, sampler


def build_pretrain_loader(cfg, rank, world_size):
    """The pre-training loader: the items of the training file, each once per epoch, with their texts."""
    return build_train_loader(cfg, rank, world_size, sampler_class=ItemBatchSampler)


def build_eval_dataset(cfg, list_path, domain=None):
    """The items of one test list (a query or gallery list of data.test_files), in file order;
    `domain` ("goods" or "video"), when given, is required of every item."""
    data = cfg["data"]
    paths = DatasetPaths.from_config(data)
    return EvalDataset(
        paths, list_path, num_frames=data["num_frames"],
        image_size=data["image_size"], text_max_len=data["text_max_len"], frame_source=data["frame_source"],
        skip_unreadable=data["skip_unreadable_eval"], domain=domain, test_frames=data["test_frames"],
        test_text=data["test_text"], store=data_store(data, paths), fast_decode=fast_decode(data, training=False),
        **preprocessing(cfg))
