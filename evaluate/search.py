"""Exact top-K search by cosine similarity with a faiss inner-product index.

The same code runs with faiss-cpu and faiss-gpu: GPUs are used only when faiss reports some.
With several GPUs the gallery is sharded across all of them (each holds 1/n of it), so a
Real20M-size gallery that does not fit on one card still gets exact search.
"""
import faiss
import numpy as np

GPU_MAX_K = 2048  # faiss GPU indexes answer at most this many neighbours


def normalize(feats):
    """float32 copy with unit rows (features stored as float16 drift slightly off the unit sphere)."""
    feats = np.array(feats, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(feats)
    return feats


def use_gpus(use_gpu=None):
    """None: GPUs when faiss has any."""
    return faiss.get_num_gpus() > 0 if use_gpu is None else bool(use_gpu)


def build_index(gallery, use_gpu=None):
    """IndexFlatIP over unit-norm gallery rows; on all GPUs (sharded) when `use_gpus(use_gpu)`."""
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    index = faiss.IndexFlatIP(gallery.shape[1])
    if use_gpus(use_gpu):
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        index = faiss.index_cpu_to_all_gpus(index, co=options)
    index.add(gallery)
    return index


def search(query, gallery, k, use_gpu=None, batch_size=8192):
    """Top-k gallery rows of each query by cosine similarity -> (scores [Nq, k], rows [Nq, k]).

    Equal scores are ordered by gallery row, so ties rank the same way on every machine
    (except which tied items make it into the list at its very end, which faiss decides)."""
    query, gallery = normalize(query), normalize(gallery)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query features have {query.shape[1]} dimensions, gallery features {gallery.shape[1]}")
    k = min(int(k), gallery.shape[0])
    if use_gpus(use_gpu) and k > GPU_MAX_K:
        raise ValueError(f"top-{k} search: faiss on GPU returns at most {GPU_MAX_K} neighbours")
    index = build_index(gallery, use_gpu)
    scores = np.empty((query.shape[0], k), dtype=np.float32)
    rows = np.empty((query.shape[0], k), dtype=np.int64)
    for start in range(0, query.shape[0], batch_size):
        scores[start:start + batch_size], rows[start:start + batch_size] = index.search(query[start:start + batch_size], k)
    order = np.lexsort((rows, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(rows, order, -1)
