"""Distributed feature extraction to disk.

Each rank encodes its share of an item list (torch's DistributedSampler without shuffling:
the list is padded by repeating its first items so every rank gets the same number) and
writes `<dir>/shard_<rank>_of_<world>.npy` with `shard_<rank>_of_<world>_ids.txt` (list index
and pid per row). Rank 0 then keeps each list index once, in list order, and writes
`<dir>/feats.npy` + `<dir>/ids.txt`. A `meta.json` records everything the features were made
from (evaluate.pipeline.features_made_by); a rerun with the same record skips what is on disk, any
other record clears the folder and computes again, so stale features are never reused. A
non-finite feature stops extraction naming the list line of its item; a full disk stops it naming the folder
and the space needed, with no partial shard left behind.
"""
import errno
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from evaluate.features import (DTYPES, DiskFull, NonFiniteFeatures, merge_shards, read_shard, save_features,
                               write_shard, write_text)
from utils.distributed import barrier

FEATURES = ("fused", "visual", "text")


def shard_paths(out_dir, rank, world_size):
    stem = os.path.join(out_dir, f"shard_{rank}_of_{world_size}")
    return stem + ".npy", stem + "_ids.txt"


def merged_paths(out_dir):
    return os.path.join(out_dir, "feats.npy"), os.path.join(out_dir, "ids.txt")


def _stale_keys(out_dir, meta):
    """None when out_dir's meta.json equals `meta` (its features may be reused), else the keys that differ."""
    path = os.path.join(out_dir, "meta.json")
    if not os.path.exists(path):
        return ["meta.json missing"]
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    return changed or None


def _clear(out_dir):
    """Remove the feature files of out_dir (merged and shards of any world size)."""
    for name in os.listdir(out_dir):
        if name.startswith("shard_") or name in map(os.path.basename, merged_paths(out_dir)) or name == "meta.json":
            os.remove(os.path.join(out_dir, name))


def _write_meta(out_dir, meta):
    write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=1))


def _size(num_bytes):
    """A byte count for a message: 512 bytes, 3.2 KB, 1.5 GB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


def _write_or_disk_full(paths, needed, write):
    """write(); on ENOSPC remove `paths` (a shard half of whose files fit) and raise DiskFull naming their folder,
    the `needed` bytes and the free space (shutil.disk_usage)."""
    try:
        write()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
        folder = os.path.dirname(os.path.abspath(paths[0]))
        raise DiskFull(f"{folder}: disk full writing {os.path.basename(paths[0])}: it needs {_size(needed)}, "
                       f"{_size(shutil.disk_usage(folder).free)} are free; free space there or point eval.out_dir "
                       "at a larger disk") from None


def _features_bytes(num_rows, dim, dtype):
    """An upper bound of the bytes of a feature file and its ids file (.npy header, up to 40 characters an id line)."""
    return num_rows * dim * np.dtype(dtype).itemsize + 128 + 40 * num_rows


def _first_error(error, world_size):
    """The first rank's error of all ranks' `error` (None: none failed): a rank that stopped tells the others,
    which would otherwise wait for it; any rank may be the one, so this gathers from all
    (utils.distributed.from_rank0 shares rank 0's value only)."""
    if world_size == 1:
        return error
    errors = [None] * world_size
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


@torch.no_grad()
def _encode_shard(model, dataset, features, rank, world_size, device, batch_size, num_workers, collate_fn, desc):
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda")
    model.eval()
    feats = {f: [] for f in features}
    indices, pids = [], []
    start = time.time()
    source = getattr(dataset, "list_path", type(dataset).__name__)
    with tqdm(total=len(sampler), desc=desc, unit="item", disable=rank != 0, dynamic_ncols=True) as bar:
        for batch in loader:
            out = model.encode_item(batch["frames"].to(device, non_blocking=True), batch["text_ids"].to(device),
                                    batch["text_mask"].to(device))
            batch_index = torch.as_tensor(batch["index"]).tolist()
            batch_pid = torch.as_tensor(batch["pid"]).tolist()
            for f in features:
                array = out[f].float().cpu().numpy()
                bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
                if bad.size:
                    raise NonFiniteFeatures(
                        f"{source}: non-finite {f} feature for the item on line {batch_index[bad[0]] + 1} "
                        f"(pid {batch_pid[bad[0]]}; {bad.size} of the batch's {len(array)} items); extraction "
                        "stopped. Check that item's files and the checkpoint")
                feats[f].append(array)
            indices.extend(batch_index)
            pids.extend(batch_pid)
            bar.update(len(batch["frames"]))
    seconds = time.time() - start
    # this rank's data events (black frames, empty or untranslated texts, truncation), summed over its workers
    events = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in (dataset.stats() if hasattr(dataset, "stats") else {}).items())
    print(f"{desc}: rank {rank} of {world_size}: {len(indices)} items in {seconds:.1f} s "
          f"({len(indices) / max(seconds, 1e-9):.1f} items/s, {num_workers} loader workers)"
          + (f"; {events}" if events else ""), flush=True)
    return {f: np.concatenate(v) for f, v in feats.items()}, indices, pids


def extract_features(model, dataset, out_dirs, rank=0, world_size=1, device="cpu", batch_size=128,
                     num_workers=0, dtype="float16", collate_fn=None, meta=None, desc="extract"):
    """Encode every item of `dataset` once and write one merged feature file per feature type.

    out_dirs: {feature name ("fused"|"visual"|"text"): folder}; all features come from one forward
    pass. Call on every rank (a process group must exist when world_size > 1). Returns
    {feature: (feats.npy, ids.txt)}; the files are complete on return on rank 0 only."""
    meta = dict(meta or {}, num_items=len(dataset), dtype=dtype)
    for d in out_dirs.values():
        os.makedirs(d, exist_ok=True)
    stale = {f: _stale_keys(d, meta) for f, d in out_dirs.items()}
    barrier()  # every rank has read meta.json before rank 0 rewrites it
    if rank == 0:
        for f, keys in stale.items():
            if keys:
                if os.path.exists(os.path.join(out_dirs[f], "meta.json")):
                    print(f"{desc}: {out_dirs[f]} holds {f} features made from other inputs ({', '.join(keys)} "
                          "differ): computing them again", flush=True)
                _clear(out_dirs[f])
                _write_meta(out_dirs[f], meta)
    barrier()
    done = {f for f, d in out_dirs.items() if all(map(os.path.exists, merged_paths(d)))}
    todo = [f for f in out_dirs if f not in done
            and not all(map(os.path.exists, shard_paths(out_dirs[f], rank, world_size)))]
    error = None
    if todo:
        try:
            feats, indices, pids = _encode_shard(model, dataset, todo, rank, world_size, device, batch_size,
                                                 num_workers, collate_fn, desc)
        except NonFiniteFeatures as e:
            error = str(e)
    error = _first_error(error, world_size)
    if error:
        raise NonFiniteFeatures(error)
    if todo:
        try:
            for f in todo:
                paths = shard_paths(out_dirs[f], rank, world_size)
                _write_or_disk_full(paths, _features_bytes(*feats[f].shape, DTYPES[dtype]),
                                    lambda: write_shard(*paths, feats[f], indices, pids, dtype))
        except DiskFull as e:
            error = str(e)
    error = _first_error(error, world_size)
    if error:
        raise DiskFull(error)
    if not todo and rank == 0:
        print(f"{desc}: features already on disk in {', '.join(out_dirs[f] for f in out_dirs)}", flush=True)
    barrier()
    if rank == 0:
        for f in out_dirs:
            if f in done:
                continue
            shards = [shard_paths(out_dirs[f], r, world_size) for r in range(world_size)]
            merged, merged_pids = merge_shards([read_shard(*p) for p in shards], len(dataset))
            _write_or_disk_full(merged_paths(out_dirs[f]), _features_bytes(*merged.shape, DTYPES[dtype]),
                                lambda: save_features(*merged_paths(out_dirs[f]), merged, merged_pids, dtype))
            for p in shards:
                for path in p:
                    os.remove(path)
    return {f: merged_paths(d) for f, d in out_dirs.items()}
