"""Top-K search by cosine similarity with faiss inner-product indexes.

The same code runs with faiss-cpu and faiss-gpu: GPUs are used only when faiss reports some.
With several GPUs the gallery is sharded across all of them (each holds 1/n of it). The gallery
may be a memory-mapped .npy: `search_blocks` (exact, the default) reads it block by block and
merges the blocks' top-K lists, and `search_ivfpq` (eval.index=ivf_pq) trains an IVF-PQ index on
a sample and adds the gallery block by block, so neither holds a Real20M gallery in memory.
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


def _merge(scores, rows, k):
    """The best k of each query's candidates [Nq, C], ordered by score then gallery row."""
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(rows, order, -1)


def search_blocks(query, gallery, k, block_rows=1_000_000, use_gpu=None, batch_size=8192):
    """Exact top-k as `search`, over `gallery` read `block_rows` rows at a time: memory holds one block
    (as float32) and the running top-k lists, whatever the gallery's size."""
    n = gallery.shape[0]
    k = min(int(k), n)
    best_scores = np.empty((query.shape[0], 0), dtype=np.float32)
    best_rows = np.empty((query.shape[0], 0), dtype=np.int64)
    for start in range(0, n, block_rows):
        scores, rows = search(query, gallery[start:start + block_rows], k, use_gpu, batch_size)
        best_scores, best_rows = _merge(np.concatenate([best_scores, scores], 1),
                                        np.concatenate([best_rows, rows + start], 1), k)
    return best_scores, best_rows


def build_ivfpq(gallery, nlist, m, train_rows, block_rows=1_000_000, seed=0):
    """faiss IndexIVFPQ (inner product, 8-bit codes) trained on `train_rows` gallery rows drawn at random,
    the gallery added block by block (its codes take m bytes a row)."""
    n, dim = gallery.shape
    if dim % m:
        raise ValueError(f"eval.ivf_pq.m={m} must divide the feature dimension {dim}")
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, train_rows), replace=False))
    index.train(normalize(gallery[sample]))
    for start in range(0, n, block_rows):
        index.add(normalize(gallery[start:start + block_rows]))
    return index


def search_index(index, query, k, nprobe, batch_size=8192):
    """Top-k of an IVF index probing `nprobe` lists; a query may get fewer than k neighbours: the rest of its
    row is -1 (score -inf)."""
    index.nprobe = nprobe
    query = normalize(query)
    k = min(int(k), index.ntotal)
    scores = np.empty((query.shape[0], k), dtype=np.float32)
    rows = np.empty((query.shape[0], k), dtype=np.int64)
    for start in range(0, query.shape[0], batch_size):
        scores[start:start + batch_size], rows[start:start + batch_size] = index.search(query[start:start + batch_size], k)
    scores[rows < 0] = -np.inf
    return scores, rows


def search_ivfpq(query, gallery, k, nlist, m, nprobe, train_rows, block_rows=1_000_000, seed=0):
    """Approximate top-k: build_ivfpq, then search_index."""
    return search_index(build_ivfpq(gallery, nlist, m, train_rows, block_rows, seed), query, k, nprobe)


def _flat(query, gallery, k, block_rows, ivf_pq, use_gpu):
    return search_blocks(query, gallery, k, block_rows, use_gpu)


def _ivf_pq(query, gallery, k, block_rows, ivf_pq, use_gpu):
    return search_ivfpq(query, gallery, k, block_rows=block_rows, **ivf_pq)


# eval.index: flat (exact, block by block) or ivf_pq (approximate, with the eval.ivf_pq settings)
INDEXES = {"flat": _flat, "ivf_pq": _ivf_pq}


def search_gallery(query, gallery, k, index="flat", block_rows=1_000_000, ivf_pq=None, use_gpu=None):
    """Top-k by the method of eval.index (a name of INDEXES)."""
    return INDEXES[index](query, gallery, k, block_rows, ivf_pq, use_gpu)
