"""Search and feature-file costs at the paper's scale (Real400K test: 3,000 queries x 200,000 gallery x 512).

    .venv/bin/python benchmarks/bench_search.py [--queries 3000] [--gallery 200000] [--dim 512] [--k 100]

1. Top-k search of random unit features: faiss IndexFlatIP (evaluate.search) against a blocked
   torch matmul + topk in the same run; both must return the same lists.
2. Size and write (and read) time of the gallery features as .npy float16 / float32 + ids file
   (evaluate.features) against the authors' text format `pid \\t f1,...,f512`.
"""
import argparse
import os
import sys
import tempfile
import time

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from evaluate.features import load_features, read_text_features, save_features, write_text_features
from evaluate.search import search


def random_unit(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def torch_topk(query, gallery, k, block):
    q, g = torch.from_numpy(query), torch.from_numpy(gallery)
    scores, rows = [], []
    for start in range(0, q.shape[0], block):
        s, r = torch.topk(q[start:start + block] @ g.T, k, dim=1)
        scores.append(s)
        rows.append(r)
    return torch.cat(scores).numpy(), torch.cat(rows).numpy()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--gallery", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--block", type=int, default=256, help="queries per torch matmul block")
    parser.add_argument("--dir", default=None, help="where to write the feature files (default: a temp dir)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    query, gallery = random_unit(rng, args.queries, args.dim), random_unit(rng, args.gallery, args.dim)
    print(f"{args.queries} queries x {args.gallery} gallery x {args.dim}, top {args.k}; "
          f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}, "
          f"faiss GPUs {faiss.get_num_gpus()}")

    (f_scores, f_rows), t_faiss = timed(search, query, gallery, args.k)
    (t_scores, t_rows), t_torch = timed(torch_topk, query, gallery, args.k, args.block)
    same = (f_rows == t_rows).mean()
    print(f"search  faiss IndexFlatIP: {t_faiss:7.2f} s | torch matmul+topk (blocks of {args.block}): {t_torch:7.2f} s")
    print(f"        same neighbour at the same rank: {100 * same:.4f} %, max score difference "
          f"{np.abs(f_scores - t_scores).max():.2e}")
    assert same > 0.999 and np.allclose(f_scores, t_scores, atol=1e-4), "faiss and torch disagree"

    ids = list(range(10_000_000, 10_000_000 + args.gallery))
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        rows = []
        for dtype in ("float16", "float32"):
            npy, txt = os.path.join(d, f"{dtype}.npy"), os.path.join(d, f"{dtype}_ids.txt")
            _, t_write = timed(save_features, npy, txt, gallery, ids, dtype)
            _, t_read = timed(load_features, npy, txt)
            rows.append((f".npy {dtype} + ids", os.path.getsize(npy) + os.path.getsize(txt), t_write, t_read))
        text = os.path.join(d, "gallery.feat")
        _, t_write = timed(write_text_features, text, gallery, ids)
        _, t_read = timed(read_text_features, text)
        rows.append(("text pid\\tf1,...", os.path.getsize(text), t_write, t_read))
    print(f"{'gallery features':22} {'size MB':>9} {'write s':>8} {'read s':>8}")
    for name, size, t_write, t_read in rows:
        print(f"{name:22} {size / 1e6:9.1f} {t_write:8.2f} {t_read:8.2f}")


if __name__ == "__main__":
    main()
